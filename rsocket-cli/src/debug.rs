//! A transport wrapper that counts the frames written (so that the client
//! can wait until a fire-and-forget or a CANCEL is on the wire before it
//! closes) and, with `--debug`, prints every frame that passes through it,
//! decoded and in hex, to standard error.

use std::fmt::Write as _;
use std::io::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures::{Sink, Stream};
use rsocket::frame::{FrameType, MimeType};
use rsocket::metadata::{Authentication, CompositeMetadata, RoutingMetadata, WellKnownMimeType};
use rsocket::{Frame, Payload, PeerInfo, Transport, TransportError, WireRead, WireWrite};

/// Hex is printed for at most this many bytes of a frame.
const HEX_LIMIT: usize = 1024;
/// Text previews are cut after this many characters.
const PREVIEW_CHARS: usize = 64;

/// What the log knows about the connection: whether metadata is composite
/// (learnt from the SETUP frame, in either direction).
#[derive(Debug, Default)]
pub(crate) struct FrameLog {
    composite: AtomicBool,
    side: &'static str,
}

impl FrameLog {
    pub(crate) fn new(side: &'static str) -> Arc<Self> {
        Arc::new(Self {
            composite: AtomicBool::new(false),
            side,
        })
    }

    fn log(&self, outbound: bool, frame: &Frame) {
        if let Frame::Setup(s) = frame {
            let composite = s.metadata_mime_type == MimeType::COMPOSITE_METADATA;
            self.composite.store(composite, Ordering::Relaxed);
        }
        let arrow = if outbound { "-->" } else { "<--" };
        let text = render(
            &format!("{} {arrow}", self.side),
            frame,
            self.composite.load(Ordering::Relaxed),
        );
        // One write per frame so that lines of concurrent frames do not
        // interleave; a closed stderr is not worth failing over.
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

/// How many frames of each type have been written and flushed.
#[derive(Debug, Default)]
pub(crate) struct SentFrames {
    flushed: Mutex<Vec<u64>>,
    changed: tokio::sync::Notify,
}

impl SentFrames {
    fn count(&self, t: FrameType) -> u64 {
        let flushed = self.flushed.lock().unwrap_or_else(|e| e.into_inner());
        flushed.get(usize::from(t.code())).copied().unwrap_or(0)
    }

    fn add(&self, types: &[u8]) {
        let mut flushed = self.flushed.lock().unwrap_or_else(|e| e.into_inner());
        for &code in types {
            let i = usize::from(code);
            if flushed.len() <= i {
                flushed.resize(i + 1, 0);
            }
            flushed[i] += 1;
        }
        drop(flushed);
        self.changed.notify_waiters();
    }

    /// Waits until at least `n` frames of type `t` have been flushed.
    pub(crate) async fn wait_for(&self, t: FrameType, n: u64) {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if self.count(t) >= n {
                return;
            }
            changed.await;
        }
    }
}

/// A transport whose written frames are counted and, optionally, logged.
pub(crate) struct Tap<T> {
    inner: T,
    log: Option<Arc<FrameLog>>,
    sent: Arc<SentFrames>,
}

impl<T> std::fmt::Debug for Tap<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap").finish_non_exhaustive()
    }
}

impl<T: Transport> Tap<T> {
    pub(crate) fn new(inner: T, log: Option<Arc<FrameLog>>, sent: Arc<SentFrames>) -> Self {
        Self { inner, log, sent }
    }
}

impl<T: Transport> Transport for Tap<T> {
    type Reader = TapReader<T::Reader>;
    type Writer = TapWriter<T>;

    fn split(self) -> (Self::Reader, Self::Writer) {
        let (r, w) = self.inner.split();
        (
            TapReader {
                inner: r,
                log: self.log.clone(),
            },
            TapWriter {
                inner: w,
                log: self.log,
                sent: self.sent,
                pending: Vec::new(),
            },
        )
    }

    fn peer_info(&self) -> PeerInfo {
        self.inner.peer_info()
    }

    fn limit_frame_len(&mut self, max: usize) {
        self.inner.limit_frame_len(max);
    }

    /// The inner transport's raw-bytes reader, unless frames are logged
    /// (the log shows them one by one, decoded).
    fn wire_reader(reader: &mut Self::Reader) -> Option<&mut dyn WireRead> {
        if reader.log.is_some() {
            return None;
        }
        T::wire_reader(&mut reader.inner)
    }

    /// The writer itself, counting the frames of each run it passes on to
    /// the inner transport's raw-bytes writer, unless frames are logged.
    fn wire_writer(writer: &mut Self::Writer) -> Option<&mut dyn WireWrite> {
        if writer.log.is_some() || T::wire_writer(&mut writer.inner).is_none() {
            return None;
        }
        Some(writer)
    }
}

/// The inbound half of a [`Tap`].
pub(crate) struct TapReader<R> {
    inner: R,
    log: Option<Arc<FrameLog>>,
}

impl<R: Stream<Item = Result<Frame, TransportError>> + Unpin> Stream for TapReader<R> {
    type Item = Result<Frame, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = Pin::new(&mut self.inner).poll_next(cx);
        if let Some(log) = &self.log {
            match &item {
                Poll::Ready(Some(Ok(frame))) => log.log(false, frame),
                Poll::Ready(Some(Err(e))) => {
                    let _ = writeln!(std::io::stderr(), "{} <-- undecodable: {e}", log.side);
                }
                _ => {}
            }
        }
        item
    }
}

/// The outbound half of a [`Tap`].
pub(crate) struct TapWriter<T: Transport> {
    inner: T::Writer,
    log: Option<Arc<FrameLog>>,
    sent: Arc<SentFrames>,
    /// Types of the frames written since the last flush.
    pending: Vec<u8>,
}

impl<T: Transport> WireWrite for TapWriter<T> {
    fn start_send_wire(&mut self, frames: &mut BytesMut) -> Result<(), TransportError> {
        // Each frame: a 24-bit length, the stream id, then the type in the
        // top six bits of the next two bytes.
        let mut at = 0;
        while let Some(head) = frames.get(at..at + 9) {
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            self.pending.push(head[7] >> 2);
            at += 3 + len;
        }
        match T::wire_writer(&mut self.inner) {
            Some(wire) => wire.start_send_wire(frames),
            None => Err(TransportError::Framing(
                "the tapped transport stopped writing raw frames".into(),
            )),
        }
    }
}

impl<T: Transport> Sink<Frame> for TapWriter<T> {
    type Error = TransportError;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Frame) -> Result<(), Self::Error> {
        if let Some(log) = &self.log {
            log.log(true, &item);
        }
        self.pending.push(item.frame_type().code());
        Pin::new(&mut self.inner).start_send(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = &mut *self;
        let out = Pin::new(&mut this.inner).poll_flush(cx);
        if matches!(out, Poll::Ready(Ok(()))) && !this.pending.is_empty() {
            this.sent.add(&this.pending);
            this.pending.clear();
        }
        out
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// The frame type as the spec writes it.
pub(crate) fn type_name(t: FrameType) -> String {
    let name = match t {
        FrameType::Setup => "SETUP",
        FrameType::Lease => "LEASE",
        FrameType::Keepalive => "KEEPALIVE",
        FrameType::RequestResponse => "REQUEST_RESPONSE",
        FrameType::RequestFnf => "REQUEST_FNF",
        FrameType::RequestStream => "REQUEST_STREAM",
        FrameType::RequestChannel => "REQUEST_CHANNEL",
        FrameType::RequestN => "REQUEST_N",
        FrameType::Cancel => "CANCEL",
        FrameType::Payload => "PAYLOAD",
        FrameType::Error => "ERROR",
        FrameType::MetadataPush => "METADATA_PUSH",
        FrameType::Resume => "RESUME",
        FrameType::ResumeOk => "RESUME_OK",
        FrameType::Ext => "EXT",
        other => return format!("TYPE_{:#04x}", other.code()),
    };
    name.to_owned()
}

/// Flag letters for the raw flag bits of a frame of type `t`.
fn flag_names(t: FrameType, bits: u16) -> String {
    let mut names = Vec::new();
    if bits & 0x200 != 0 {
        names.push("I");
    }
    if bits & 0x100 != 0 {
        names.push("M");
    }
    let (b80, b40, b20) = match t {
        FrameType::Setup => (Some("R"), Some("L"), None),
        FrameType::Keepalive => (Some("R"), None, None),
        FrameType::RequestChannel => (Some("F"), Some("C"), None),
        FrameType::Payload => (Some("F"), Some("C"), Some("N")),
        FrameType::RequestResponse | FrameType::RequestFnf | FrameType::RequestStream => {
            (Some("F"), None, None)
        }
        _ => (None, None, None),
    };
    for (bit, name) in [(0x80, b80), (0x40, b40), (0x20, b20)] {
        if bits & bit != 0 {
            names.push(name.unwrap_or("?"));
        }
    }
    names.join(" ")
}

/// A short, quoted preview of bytes: the text if UTF-8, else a length.
pub(crate) fn preview(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if s.chars().count() > PREVIEW_CHARS => {
            let cut: String = s.chars().take(PREVIEW_CHARS).collect();
            format!("{cut:?}…")
        }
        Ok(s) => format!("{s:?}"),
        Err(_) => format!("<{} bytes, binary>", b.len()),
    }
}

/// The decoded metadata entries of composite metadata, one per line.
fn describe_composite(md: &Bytes, out: &mut String) {
    for entry in CompositeMetadata::new(md.clone()).iter() {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let _ = writeln!(out, "      (malformed composite metadata: {e})");
                return;
            }
        };
        let mime = entry
            .mime
            .as_str()
            .map_or_else(|| format!("{:?}", entry.mime), str::to_owned);
        let detail = match entry.mime.well_known() {
            Some(WellKnownMimeType::MessageRSocketRouting) => {
                match RoutingMetadata::new(entry.content.clone()).to_vec() {
                    Ok(tags) => {
                        let tags: Vec<_> =
                            tags.iter().map(|t| format!("{:?}", t.as_str())).collect();
                        format!("routing [{}]", tags.join(", "))
                    }
                    Err(e) => format!("malformed routing: {e}"),
                }
            }
            Some(WellKnownMimeType::MessageRSocketAuthentication) => {
                match Authentication::decode(entry.content.clone()) {
                    Ok(Authentication::Simple { username, .. }) => {
                        format!("simple user={:?} password=<hidden>", username.as_str())
                    }
                    Ok(Authentication::Bearer { token }) => {
                        format!("bearer token=<{} bytes>", token.len())
                    }
                    Ok(other) => format!("{other:?}"),
                    Err(e) => format!("malformed authentication: {e}"),
                }
            }
            _ => preview(&entry.content),
        };
        let _ = writeln!(
            out,
            "      entry {mime} ({} bytes): {detail}",
            entry.content.len()
        );
    }
}

fn describe_payload(p: &Payload, composite: bool, out: &mut String) {
    if let Some(md) = &p.metadata {
        if composite && !md.is_empty() {
            let _ = writeln!(out, "    metadata: {} bytes, composite", md.len());
            describe_composite(md, out);
        } else {
            let _ = writeln!(out, "    metadata: {} bytes {}", md.len(), preview(md));
        }
    }
    if !p.data.is_empty() {
        let _ = writeln!(out, "    data: {} bytes {}", p.data.len(), preview(&p.data));
    }
}

/// Renders one frame: a header line, the decoded fields, the hex.
pub(crate) fn render(prefix: &str, frame: &Frame, composite: bool) -> String {
    let bytes = frame.to_bytes();
    let bits = bytes
        .get(4..6)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]) & 0x3FF);
    let t = frame.frame_type();
    let stream = frame.stream_id().map_or(0, |s| s.get());
    let mut out = format!(
        "{prefix} {} stream={stream} flags={bits:#05x} [{}] length={}",
        type_name(t),
        flag_names(t, bits),
        bytes.len()
    );
    let mut body = String::new();
    match frame {
        Frame::Setup(s) => {
            let _ = write!(
                out,
                " version={}.{} keepalive={}ms lifetime={}ms",
                s.version.major, s.version.minor, s.keepalive_interval_ms, s.max_lifetime_ms
            );
            if let Some(token) = &s.resume_token {
                let _ = write!(out, " resume-token=<{} bytes>", token.len());
            }
            let _ = writeln!(
                body,
                "    metadata-mime: {}\n    data-mime: {}",
                String::from_utf8_lossy(s.metadata_mime_type.as_bytes()),
                String::from_utf8_lossy(s.data_mime_type.as_bytes())
            );
            let composite = s.metadata_mime_type == MimeType::COMPOSITE_METADATA;
            describe_payload(&s.payload, composite, &mut body);
        }
        Frame::Keepalive(k) => {
            let _ = write!(out, " position={}", k.last_received_position);
        }
        Frame::Lease(l) => {
            let _ = write!(out, " ttl={}ms requests={}", l.ttl_ms, l.number_of_requests);
        }
        Frame::RequestResponse(f) => describe_payload(&f.payload, composite, &mut body),
        Frame::RequestFnf(f) => describe_payload(&f.payload, composite, &mut body),
        Frame::RequestStream(f) => {
            let _ = write!(out, " initial-request-n={}", f.initial_request_n.get());
            describe_payload(&f.payload, composite, &mut body);
        }
        Frame::RequestChannel(f) => {
            let _ = write!(out, " initial-request-n={}", f.initial_request_n.get());
            describe_payload(&f.payload, composite, &mut body);
        }
        Frame::RequestN(f) => {
            let _ = write!(out, " request-n={}", f.request_n.get());
        }
        Frame::Payload(f) => describe_payload(&f.payload, composite, &mut body),
        Frame::Error(e) => {
            let _ = write!(out, " code={} ({:#010x})", e.code, e.code.0);
            let _ = writeln!(body, "    message: {}", preview(&e.data));
        }
        Frame::MetadataPush(m) => {
            let p = Payload {
                metadata: Some(m.metadata.clone()),
                data: Bytes::new(),
            };
            describe_payload(&p, composite, &mut body);
        }
        Frame::Ext(e) => {
            let _ = write!(out, " extended-type={:#x}", e.extended_type);
            describe_payload(&e.payload, composite, &mut body);
        }
        _ => {}
    }
    out.push('\n');
    out.push_str(&body);
    hex_dump(&bytes, &mut out);
    out
}

/// Hex and ASCII, 16 bytes a line, at most [`HEX_LIMIT`] bytes.
pub(crate) fn hex_dump(bytes: &[u8], out: &mut String) {
    for (i, chunk) in bytes.chunks(16).take(HEX_LIMIT / 16).enumerate() {
        let _ = write!(out, "    {:04x}  ", i * 16);
        for j in 0..16 {
            match chunk.get(j) {
                Some(b) => {
                    let _ = write!(out, "{b:02x} ");
                }
                None => out.push_str("   "),
            }
        }
        out.push(' ');
        out.extend(chunk.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        }));
        out.push('\n');
    }
    if bytes.len() > HEX_LIMIT {
        let _ = writeln!(out, "    … {} more bytes", bytes.len() - HEX_LIMIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsocket::frame::{ErrorFrame, RequestStream};
    use rsocket::{ErrorCode, RequestCount, StreamId};

    #[test]
    fn request_stream_shows_n_route_and_hex() {
        let mut b = CompositeMetadata::builder();
        b.push_well_known(
            WellKnownMimeType::MessageRSocketRouting,
            RoutingMetadata::encode(["numbers"]).unwrap(),
        )
        .unwrap();
        let frame = Frame::RequestStream(RequestStream {
            stream_id: StreamId::new(1).unwrap(),
            follows: false,
            initial_request_n: RequestCount::new(5).unwrap(),
            payload: Payload::new("5").with_metadata(b.build()),
        });
        let text = render("client -->", &frame, true);
        assert!(
            text.starts_with("client --> REQUEST_STREAM stream=1 flags=0x100 [M]"),
            "{text}"
        );
        assert!(text.contains("initial-request-n=5"), "{text}");
        assert!(text.contains("routing [\"numbers\"]"), "{text}");
        assert!(text.contains("data: 1 bytes \"5\""), "{text}");
        assert!(text.contains("    0000  00 00 00 01 19 00"), "{text}");
    }

    #[test]
    fn error_frame_and_binary_preview() {
        let frame = Frame::Error(ErrorFrame::new(
            StreamId::new(3),
            ErrorCode::APPLICATION_ERROR,
            "boom",
        ));
        let text = render("<--", &frame, false);
        assert!(text.contains("ERROR stream=3"), "{text}");
        assert!(
            text.contains("code=APPLICATION_ERROR (0x00000201)"),
            "{text}"
        );
        assert!(text.contains("message: \"boom\""), "{text}");
        assert_eq!(preview(&[0xff, 0xfe]), "<2 bytes, binary>");
        let mut hex = String::new();
        hex_dump(&vec![0u8; HEX_LIMIT + 5], &mut hex);
        assert!(hex.ends_with("… 5 more bytes\n"));
    }

    #[test]
    fn malformed_composite_does_not_panic() {
        let p = Payload::new("").with_metadata(vec![0xfe, 0, 0, 9, 1]);
        let mut out = String::new();
        describe_payload(&p, true, &mut out);
        assert!(out.contains("malformed"), "{out}");
    }

    /// Runs of raw frames pass a tap that does not log, counted by type;
    /// a tap that logs keeps the frame-by-frame path.
    #[tokio::test]
    async fn a_quiet_tap_passes_raw_runs_and_counts_their_frames() {
        use bytes::BufMut;
        use futures::{SinkExt, StreamExt};
        use rsocket::frame::{Cancel, RequestFnf};

        type Pipe = rsocket::StreamTransport<
            tokio::io::ReadHalf<tokio::io::DuplexStream>,
            tokio::io::WriteHalf<tokio::io::DuplexStream>,
        >;
        fn tap(log: Option<Arc<FrameLog>>, sent: Arc<SentFrames>) -> (Tap<Pipe>, Pipe) {
            let (a, b) = tokio::io::duplex(1 << 16);
            let (ar, aw) = tokio::io::split(a);
            let (br, bw) = tokio::io::split(b);
            (
                Tap::new(rsocket::StreamTransport::new(ar, aw), log, sent),
                rsocket::StreamTransport::new(br, bw),
            )
        }

        let sent = Arc::new(SentFrames::default());
        let (quiet, far) = tap(None, sent.clone());
        let (mut reader, mut writer) = quiet.split();
        assert!(Tap::<Pipe>::wire_reader(&mut reader).is_some());
        let frames = [
            Frame::RequestFnf(RequestFnf {
                stream_id: StreamId::new(1).unwrap(),
                follows: false,
                payload: Payload::from("fire"),
            }),
            Frame::Cancel(Cancel {
                stream_id: StreamId::new(3).unwrap(),
            }),
        ];
        let mut run = BytesMut::new();
        for f in &frames {
            run.put_uint(f.encoded_len() as u64, 3);
            f.encode(&mut run);
        }
        let wire = Tap::<Pipe>::wire_writer(&mut writer).expect("the raw path");
        wire.start_send_wire(&mut run).expect("queued");
        writer.flush().await.expect("flushed");
        assert_eq!(sent.count(FrameType::RequestFnf), 1);
        assert_eq!(sent.count(FrameType::Cancel), 1);
        let (mut far_reader, _far_writer) = far.split();
        for f in frames {
            assert_eq!(far_reader.next().await.expect("a frame").expect("whole"), f);
        }

        let (logged, _far) = tap(Some(FrameLog::new("test")), Arc::default());
        let (mut reader, mut writer) = logged.split();
        assert!(Tap::<Pipe>::wire_reader(&mut reader).is_none());
        assert!(Tap::<Pipe>::wire_writer(&mut writer).is_none());
    }
}
