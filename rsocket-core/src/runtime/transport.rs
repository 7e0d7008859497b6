//! The transport abstraction and the length-prefixed byte-stream transport
//! shared by TCP, Unix sockets and the in-memory pair.
//!
//! A transport moves [`Frame`] values. A transport whose wire format is
//! the length-prefixed byte stream can also expose its halves as
//! [`WireRead`] and [`WireWrite`] ([`Transport::wire_reader`],
//! [`Transport::wire_writer`]): the engine then takes the bytes read as
//! runs of whole frames and reads PAYLOADs in place, and hands the writer
//! the runs of frames the state machine encoded as it queued them, so that
//! a streamed item is neither decoded into nor encoded from a `Frame`
//! value. [`StreamTransport`] does both; wrappers that inspect frames keep
//! the defaults and see every frame.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::thread::LocalKey;

use bytes::{Buf, Bytes, BytesMut};
use futures::{Sink, SinkExt, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::io::poll_read_buf;

use crate::codec::{CodecError, FrameCodec, LENGTH_PREFIX_LEN};
use crate::config::PeerInfo;
use crate::frame::{get_u24, HEADER_LEN};
use crate::frame::{DecodeError, Frame, PayloadFrame};

/// Errors a transport reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// I/O failed; the transport is unusable.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// One frame did not decode. The transport itself is still usable; the
    /// connection decides what the frame error means.
    #[error("invalid frame: {0}")]
    Decode(#[from] DecodeError),
    /// A frame exceeds the maximum frame length.
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Frame length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The peer broke the transport's own framing (for example a WebSocket
    /// text message, or a length prefix below the header size).
    #[error("transport framing violated: {0}")]
    Framing(String),
}

impl From<CodecError> for TransportError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Io(e) => Self::Io(e),
            CodecError::FrameTooLarge { len, max } => Self::FrameTooLarge { len, max },
            CodecError::FrameTooShort(n) => {
                Self::Framing(format!("frame length {n} is shorter than a header"))
            }
        }
    }
}

/// A duplex of frames that a connection runs on.
///
/// Decoding happens once, in the transport's reader; the connection sees
/// typed frames. Reader and writer are separate so that reading never waits
/// for writing.
pub trait Transport: Send + 'static {
    /// The inbound half.
    type Reader: Stream<Item = Result<Frame, TransportError>> + Send + Unpin + 'static;
    /// The outbound half. It may buffer frames until `poll_flush`.
    type Writer: Sink<Frame, Error = TransportError> + Send + Unpin + 'static;

    /// Splits into reader and writer.
    fn split(self) -> (Self::Reader, Self::Writer);

    /// What the transport knows about the peer (shown to a server's
    /// acceptor).
    fn peer_info(&self) -> PeerInfo {
        PeerInfo::default()
    }

    /// Lowers the largest inbound frame this transport accepts to `max`
    /// bytes; a limit the transport was built with that is already lower
    /// stays. The engine calls it with `Config::max_frame_len` before
    /// splitting the transport, so that a transport with a length prefix
    /// refuses an oversized frame from its length, before buffering it.
    /// The default does nothing: the engine then refuses such a frame once
    /// it is decoded.
    fn limit_frame_len(&mut self, max: usize) {
        let _ = max;
    }

    /// The reader as a [`WireRead`], when it reads the length-prefixed byte
    /// format: the engine then takes the frames read as runs of raw bytes
    /// and parses the common ones (PAYLOAD) in place, without building a
    /// [`Frame`] for each. The default, `None`, makes the engine read
    /// frames through the reader's `Stream` (wrappers that inspect frames
    /// keep the default).
    fn wire_reader(reader: &mut Self::Reader) -> Option<&mut dyn WireRead> {
        let _ = reader;
        None
    }

    /// The writer as a [`WireWrite`], when it writes the length-prefixed
    /// byte format: the engine then hands it runs of frames it encoded
    /// itself. On a connection without resumption, every frame the
    /// connection queues whose encoding (without the length prefix) is
    /// under 4 KiB goes in such a run, whatever its type (SETUP, requests,
    /// PAYLOAD, REQUEST_N, CANCEL, ERROR, KEEPALIVE, ...). Larger frames,
    /// and every frame of a resumable connection, come through the
    /// writer's `Sink` as [`Frame`] values: a `WireWrite` gets both. The
    /// default, `None`, makes the engine decode runs and send their frames
    /// through the `Sink`.
    fn wire_writer(writer: &mut Self::Writer) -> Option<&mut dyn WireWrite> {
        let _ = writer;
        None
    }
}

/// A writer of the length-prefixed byte format (see
/// [`Transport::wire_writer`]).
pub trait WireWrite: Send {
    /// Queues the bytes of `frames`, whole frames each behind its 24-bit
    /// length prefix, as `Sink::start_send` queues one frame: call it once
    /// `poll_ready` has returned `Ready(Ok(()))`, and flush as for frames.
    /// It leaves `frames` empty: the same buffer, one the writer gave up,
    /// whose room the caller may use again, or none (the writer kept the
    /// run to write it as it is).
    fn start_send_wire(&mut self, frames: &mut BytesMut) -> Result<(), TransportError>;
}

/// A reader of the length-prefixed byte format (see
/// [`Transport::wire_reader`]) that hands out the frames it has read as
/// raw bytes, many at once.
pub trait WireRead: Send {
    /// The complete frames read so far, each behind its 24-bit length
    /// prefix, as one chunk of at most about `max` bytes (a single frame
    /// may be larger); reads when none is buffered, and may read more
    /// before answering. Every prefix in the
    /// chunk has been checked against the maximum frame length and the
    /// header size. `Ready(None)` at the end of the stream; an error ends
    /// the reader, as it does for the `Stream`.
    fn poll_wire(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Option<Result<Bytes, TransportError>>>;

    /// The last `poll_wire` that gave frames also found the transport with
    /// nothing more to read (so the task will be woken when more comes):
    /// the engine need not poll again before then. `false` is always
    /// correct.
    fn waiting(&self) -> bool {
        false
    }
}

/// Bytes read at once into a buffer on the stack while the reader holds no
/// buffer of its own: a poll that finds nothing allocates nothing.
const PROBE_LEN: usize = 8 << 10;
/// Capacity of a new read buffer when the probe was filled (more is likely
/// waiting): reads of up to this much at once while data flows.
const READ_CAPACITY: usize = 64 << 10;
/// Room made in the read buffer before each read, at least, so that a
/// buffer nearly full never makes for tiny reads.
const READ_MIN_ROOM: usize = 4 << 10;

thread_local! {
    /// The last read buffer a connection on this thread released, for the
    /// next one that needs a buffer. A connection paced by the network
    /// releases and needs a buffer all the time; handing the same one back
    /// spares the allocator a large allocation and free each time, which
    /// can give the memory back to the system and fault it in again.
    static SPARE_READ: Cell<Option<BytesMut>> = const { Cell::new(None) };
    /// The same for write buffers.
    static SPARE_WRITE: Cell<Option<BytesMut>> = const { Cell::new(None) };
}

/// Largest buffer kept as a spare: one that grew for a large frame is
/// freed instead.
const SPARE_MAX: usize = 2 * (64 << 10);

/// Keeps `buf` as this thread's spare (replacing the one before).
fn put_spare(spare: &'static LocalKey<Cell<Option<BytesMut>>>, buf: BytesMut) {
    // Outside of `with`: dropping the spare replaced may free it.
    let _replaced = spare.try_with(|s| s.replace(Some(buf)));
}

/// A buffer with room for `capacity` bytes: this thread's spare if it has
/// the room and nothing else uses it any more, or a new one.
fn take_spare(spare: &'static LocalKey<Cell<Option<BytesMut>>>, capacity: usize) -> BytesMut {
    if let Some(mut buf) = spare.try_with(Cell::take).ok().flatten() {
        buf.clear();
        if buf.try_reclaim(capacity) {
            return buf;
        }
    }
    BytesMut::with_capacity(capacity)
}

/// Reads length-prefixed frames from any [`AsyncRead`].
///
/// The read buffer exists only while data flows: a read that finds nothing
/// with no partial frame buffered releases it, and the next read goes to a
/// stack buffer first, so that an idle connection holds no read buffer
/// (frames read are slices of the buffer they were read into, which lives
/// until they are dropped).
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    codec: FrameCodec,
    /// Bytes read and not yet framed; no allocation while idle.
    buf: BytesMut,
    /// `buf` grew past [`SPARE_MAX`] (for a large frame): it is not kept as
    /// a spare.
    large: bool,
    /// The stream ended or the framing failed: nothing more is read.
    done: bool,
    /// A read error that came after whole frames, for the next
    /// `poll_wire`.
    deferred: Option<io::Error>,
    /// The last `poll_wire` read until the transport had nothing more.
    waiting: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn fail<T>(&mut self, e: TransportError) -> Poll<Option<Result<T, TransportError>>> {
        self.done = true;
        self.buf = BytesMut::new();
        Poll::Ready(Some(Err(e)))
    }

    /// Lets go of the buffer (frames still using it keep it alive until
    /// they are dropped); it becomes the thread's spare unless it grew
    /// large.
    fn release(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if !std::mem::take(&mut self.large) {
            put_spare(&SPARE_READ, buf);
        }
    }

    /// Notes a buffer that has grown too large to be kept as a spare (it
    /// can only have grown in a `reserve`, after which its capacity is
    /// that of its allocation).
    fn note_capacity(&mut self) {
        if self.buf.capacity() > SPARE_MAX {
            self.large = true;
        }
    }

    /// Reads once; the number of bytes read (0 at end of stream).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() > 0 {
            self.buf.reserve(READ_MIN_ROOM);
            self.note_capacity();
            let r = poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf);
            if r.is_pending() && self.buf.is_empty() {
                // Idle.
                self.release();
            }
            return r;
        }
        let mut probe = [MaybeUninit::<u8>::uninit(); PROBE_LEN];
        let mut read = ReadBuf::uninit(&mut probe);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
        let got = read.filled();
        if !got.is_empty() {
            self.keep_probe(got);
        }
        Poll::Ready(Ok(got.len()))
    }

    /// Moves what a probe read into a read buffer: a large one after a
    /// full probe (more is probably waiting, read it in large chunks), a
    /// small one otherwise (the socket is likely drained).
    fn keep_probe(&mut self, got: &[u8]) {
        let cap = if got.len() == PROBE_LEN {
            READ_CAPACITY
        } else {
            PROBE_LEN
        };
        self.buf = take_spare(&SPARE_READ, cap);
        self.buf.extend_from_slice(got);
    }
}

impl<R: AsyncRead + Unpin> Stream for FrameReader<R> {
    type Item = Result<Frame, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match this.codec.decode(&mut this.buf) {
                Ok(Some(bytes)) => {
                    if this.buf.capacity() == 0 {
                        // Used up exactly: the next read needs another.
                        this.release();
                    }
                    return Poll::Ready(Some(Frame::decode(bytes).map_err(TransportError::Decode)));
                }
                // `decode` may have made room for the rest of a frame.
                Ok(None) => this.note_capacity(),
                Err(e) => return this.fail(e.into()),
            }
            match this.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    if this.buf.is_empty() {
                        this.done = true;
                        return Poll::Ready(None);
                    }
                    return this.fail(ended_inside_frame());
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail(e.into()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<R: AsyncRead + Unpin + Send> WireRead for FrameReader<R> {
    fn poll_wire(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Option<Result<Bytes, TransportError>>> {
        self.waiting = false;
        if let Some(e) = self.deferred.take() {
            return self.fail(e.into());
        }
        if self.done {
            return Poll::Ready(None);
        }
        if self.buf.capacity() == 0 {
            if let Some(done) = self.poll_wire_probe(cx, max) {
                return done;
            }
        }
        // Whole frames at the front of the buffer, up to `max` bytes; more
        // is read until the transport has nothing more, `max` is reached
        // or the buffer is full, so that one chunk carries what a wake-up
        // brought.
        let mut end = 0;
        loop {
            let mut failed = None;
            while let Some(len) = self.buf.get(end..).and_then(get_u24) {
                if len > self.codec.max_frame_len() {
                    failed = Some(TransportError::FrameTooLarge {
                        len,
                        max: self.codec.max_frame_len(),
                    });
                    break;
                }
                if len < HEADER_LEN {
                    failed = Some(CodecError::FrameTooShort(len).into());
                    break;
                }
                let total = end + LENGTH_PREFIX_LEN + len;
                if total > self.buf.len() {
                    if end == 0 {
                        // Room for the rest of this frame only: `len` was
                        // checked against the maximum above.
                        self.buf.reserve(total - self.buf.len());
                        self.note_capacity();
                    }
                    break;
                }
                end = total;
                if end >= max {
                    break;
                }
            }
            // More is read only into the room the buffer has: growing it
            // would copy what it holds.
            let full = self.buf.capacity() - self.buf.len() < READ_MIN_ROOM;
            if end > 0 && (end >= max || full || failed.is_some()) {
                // Frames before a bad prefix go first; the error comes
                // with the next call.
                return Poll::Ready(Some(Ok(self.take_frames(end))));
            }
            if let Some(e) = failed {
                return self.fail(e);
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    if end > 0 {
                        // The end is seen again by the next call.
                        return Poll::Ready(Some(Ok(self.take_frames(end))));
                    }
                    if self.buf.is_empty() {
                        self.done = true;
                        return Poll::Ready(None);
                    }
                    return self.fail(ended_inside_frame());
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    if end > 0 {
                        self.deferred = Some(e);
                        return Poll::Ready(Some(Ok(self.take_frames(end))));
                    }
                    return self.fail(e.into());
                }
                Poll::Pending => {
                    self.waiting = true;
                    if end > 0 {
                        let chunk = self.take_frames(end);
                        if self.buf.is_empty() {
                            // Idle: as `poll_fill` does when it finds the
                            // buffer empty.
                            self.release();
                        }
                        return Poll::Ready(Some(Ok(chunk)));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn waiting(&self) -> bool {
        self.waiting
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// `poll_wire` while the reader holds no buffer: reads into a buffer on
    /// the stack, as `poll_fill` does, and when that brings whole frames
    /// only (a lone request or answer, typically) and a second read into
    /// the rest of it finds nothing more, hands them out in a slice of the
    /// thread's spare read buffer, which stays the spare (the reader holds
    /// no buffer after, and none is grown or read into).
    /// `None` when what was read is now in `buf` for the general path (a
    /// partial frame, a bad prefix, more data).
    fn poll_wire_probe(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Option<Poll<Option<Result<Bytes, TransportError>>>> {
        let mut probe = [MaybeUninit::<u8>::uninit(); PROBE_LEN];
        let mut read = ReadBuf::uninit(&mut probe);
        match Pin::new(&mut self.io).poll_read(cx, &mut read) {
            Poll::Pending => {
                self.waiting = true;
                return Some(Poll::Pending);
            }
            Poll::Ready(Err(e)) => return Some(self.fail(e.into())),
            Poll::Ready(Ok(())) => {}
        }
        let n = read.filled().len();
        if n == 0 {
            self.done = true;
            return Some(Poll::Ready(None));
        }
        if n < PROBE_LEN && n <= max && whole_frames(read.filled(), self.codec.max_frame_len()) {
            match Pin::new(&mut self.io).poll_read(cx, &mut read) {
                Poll::Pending => {
                    self.waiting = true;
                    let chunk = spare_chunk(&read.filled()[..n]);
                    return Some(Poll::Ready(Some(Ok(chunk))));
                }
                // The end (seen again by the next call).
                Poll::Ready(Ok(())) if read.filled().len() == n => {
                    let chunk = spare_chunk(&read.filled()[..n]);
                    return Some(Poll::Ready(Some(Ok(chunk))));
                }
                Poll::Ready(Err(e)) => {
                    self.deferred = Some(e);
                    let chunk = spare_chunk(&read.filled()[..n]);
                    return Some(Poll::Ready(Some(Ok(chunk))));
                }
                // More: on to a buffer.
                Poll::Ready(Ok(())) => {}
            }
        }
        self.keep_probe(read.filled());
        None
    }

    /// The first `end` bytes of the buffer, whole frames.
    fn take_frames(&mut self, end: usize) -> Bytes {
        let chunk = self.buf.split_to(end).freeze();
        if self.buf.capacity() == 0 {
            // Used up exactly: the next read needs another.
            self.release();
        }
        chunk
    }
}

/// A copy of `bytes` (at most [`PROBE_LEN`]) in the thread's spare read
/// buffer, which stays the spare: shared, so that slicing the copy costs no
/// allocation.
fn spare_chunk(bytes: &[u8]) -> Bytes {
    let mut buf = take_spare(&SPARE_READ, PROBE_LEN);
    buf.extend_from_slice(bytes);
    let chunk = buf.split().freeze();
    put_spare(&SPARE_READ, buf);
    chunk
}

/// `bytes` holds whole frames only, each behind a length prefix that is
/// no more than `max_frame_len` nor less than the frame header.
fn whole_frames(mut bytes: &[u8], max_frame_len: usize) -> bool {
    while let Some(len) = get_u24(bytes) {
        if len > max_frame_len || len < HEADER_LEN {
            return false;
        }
        match bytes.get(LENGTH_PREFIX_LEN + len..) {
            Some(rest) => bytes = rest,
            None => return false,
        }
    }
    bytes.is_empty()
}

/// The byte stream ended with part of a frame read.
fn ended_inside_frame() -> TransportError {
    TransportError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the stream ended inside a frame",
    ))
}

/// Capacity of a new write buffer, at least.
const WRITE_CAPACITY: usize = 8 << 10;
/// Write buffer size at which the writer flushes early.
const WRITE_HIGH_WATER: usize = 64 << 10;
/// A run of encoded frames at least this large is queued as it is (written
/// with a vectored write) rather than copied into the buffer.
const QUEUE_RUN_MIN: usize = 512;
/// Buffers written with one vectored write, at most.
const WRITE_SLICES: usize = 16;
/// A PAYLOAD frame whose data are at least this large, and whose head
/// (length prefix, header, metadata) fits in [`HEAD_MAX`] bytes, is sent
/// with its data written from their own buffer by a vectored write rather
/// than copied into the write buffer.
const SHARED_DATA_MIN: usize = 4 << 10;
/// Longest head of a frame sent that way (12 bytes and up to 20 of
/// metadata).
const HEAD_MAX: usize = 32;

/// What waits behind a [`FrameWriter`]'s buffer.
#[derive(Debug)]
enum Queued {
    /// Encoded frames.
    Run(BytesMut),
    /// The head of one frame (`head[at..end]`), then its data.
    Data {
        head: [u8; HEAD_MAX],
        at: u8,
        end: u8,
        data: Bytes,
    },
}

impl Queued {
    fn len(&self) -> usize {
        match self {
            Self::Run(run) => run.len(),
            Self::Data { at, end, data, .. } => usize::from(end - at) + data.len(),
        }
    }

    /// Drops the first `n` bytes, fewer than [`len`](Self::len).
    fn advance(&mut self, mut n: usize) {
        match self {
            Self::Run(run) => run.advance(n),
            Self::Data { at, end, data, .. } => {
                let from_head = n.min(usize::from(*end - *at));
                // At most HEAD_MAX: fits in a u8.
                *at += from_head as u8;
                n -= from_head;
                data.advance(n);
            }
        }
    }

    /// Adds this chunk's slices after the first `k` of `slices`, if they
    /// fit; returns the new count.
    fn add_slices<'a>(&'a self, slices: &mut [IoSlice<'a>; WRITE_SLICES], k: usize) -> usize {
        match self {
            Self::Run(run) if k < WRITE_SLICES => {
                slices[k] = IoSlice::new(run);
                k + 1
            }
            Self::Data {
                head,
                at,
                end,
                data,
            } if k + 1 < WRITE_SLICES => {
                let mut k = k;
                if at < end {
                    slices[k] = IoSlice::new(&head[usize::from(*at)..usize::from(*end)]);
                    k += 1;
                }
                slices[k] = IoSlice::new(data);
                k + 1
            }
            _ => k,
        }
    }
}

/// Writes length-prefixed frames to any [`AsyncWrite`], batching them: what
/// is queued is written out on flush, or by `poll_ready` once 64 KiB or
/// more wait (all of it is written before the next frame is taken).
///
/// Frames are encoded into a buffer. The buffer is released once a flush
/// has written it all, so that an idle connection holds none; the next one
/// is allocated with the size the last batch needed, so that a batch does
/// not grow its buffer step by step.
///
/// Some bytes are queued behind the buffer instead, and written with it by
/// vectored writes: the data of a PAYLOAD with 4 KiB of data or more, from
/// the data's own buffer (behind its encoded head), and runs of frames the
/// engine encoded itself (see [`WireWrite`]) of 512 bytes or more, as they
/// are. A run goes into the buffer when it is smaller than that, or
/// becomes the buffer (no copy) when the buffer is empty and the run has
/// the room a batch needs. Once something is queued, what comes after it
/// is added at the end of the queue: a frame is encoded into the last
/// queued run (or a new one, after data), and a run of any length is
/// copied into the last queued run when that has the spare room for it,
/// and queued as it is otherwise.
#[derive(Debug)]
pub struct FrameWriter<W> {
    io: W,
    codec: FrameCodec,
    buf: BytesMut,
    /// Runs, and frames' heads and data, written after `buf`, in order;
    /// what comes after them is added to the last run, or queued as a new
    /// one after data.
    runs: VecDeque<Queued>,
    /// Bytes in `runs`.
    queued: usize,
    /// Bytes encoded into the current buffer since it was allocated.
    batch: usize,
    /// Capacity of the next buffer: what the last one took.
    next_capacity: usize,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    fn poll_write_all(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        while !self.buf.is_empty() || !self.runs.is_empty() {
            let n = if self.runs.is_empty() {
                // One contiguous buffer: a plain write (`poll_write_buf`
                // would set up an array of 64 slices each time).
                let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf))?;
                self.buf.advance(n.min(self.buf.len()));
                n
            } else {
                let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
                let mut k = 0;
                if !self.buf.is_empty() {
                    slices[0] = IoSlice::new(&self.buf);
                    k = 1;
                }
                for run in &self.runs {
                    let added = run.add_slices(&mut slices, k);
                    if added == k {
                        break;
                    }
                    k = added;
                }
                let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..k]))?;
                self.consume(n);
                n
            };
            if n == 0 {
                return Poll::Ready(Err(TransportError::Io(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "failed to write frame to transport",
                ))));
            }
        }
        if self.batch > 0 {
            // All written: release the buffer. It holds at most twice the
            // batch (it grows by doubling from at least `next_capacity`).
            let buf = std::mem::take(&mut self.buf);
            if buf.capacity() > 0 && self.batch.max(self.next_capacity) <= SPARE_MAX / 2 {
                put_spare(&SPARE_WRITE, buf);
            }
            if self.runs.capacity() > 0 {
                // Nor does an idle connection keep the queue of runs.
                self.runs = VecDeque::new();
            }
            self.next_capacity = self
                .batch
                .clamp(WRITE_CAPACITY, WRITE_HIGH_WATER + WRITE_CAPACITY);
            self.batch = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<W> FrameWriter<W> {
    /// Queues a PAYLOAD frame with large data as its head and its data,
    /// written from the data's own buffer; gives the frame back when its
    /// head is too long for that.
    fn queue_data(&mut self, p: PayloadFrame) -> Result<Option<PayloadFrame>, TransportError> {
        let len = p.encoded_len();
        if len + LENGTH_PREFIX_LEN - p.payload.data.len() > HEAD_MAX {
            return Ok(Some(p));
        }
        self.codec.check(len)?;
        let mut head = [0u8; HEAD_MAX];
        let mut dst = &mut head[..];
        p.encode_head(len, &mut dst);
        let end = HEAD_MAX - dst.len();
        let chunk = Queued::Data {
            head,
            at: 0,
            // At most HEAD_MAX: fits in a u8.
            end: end as u8,
            data: p.payload.data,
        };
        self.queued += chunk.len();
        // The next buffer is sized for what is copied into buffers.
        self.batch += end;
        self.runs.push_back(chunk);
        Ok(None)
    }

    /// Drops the first `n` bytes written, from `buf` and then the runs
    /// (a run written whole is freed).
    fn consume(&mut self, mut n: usize) {
        let from_buf = n.min(self.buf.len());
        self.buf.advance(from_buf);
        n -= from_buf;
        while n > 0 {
            let Some(run) = self.runs.front_mut() else {
                break;
            };
            if n < run.len() {
                run.advance(n);
                self.queued -= n;
                break;
            }
            n -= run.len();
            self.queued -= run.len();
            self.runs.pop_front();
        }
    }
}

impl<W: AsyncWrite + Unpin> Sink<Frame> for FrameWriter<W> {
    type Error = TransportError;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.buf.len() + self.queued >= WRITE_HIGH_WATER {
            self.poll_flush(cx)
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn start_send(mut self: Pin<&mut Self>, item: Frame) -> Result<(), Self::Error> {
        let this = &mut *self;
        let item = match item {
            Frame::Payload(p) if p.payload.data.len() >= SHARED_DATA_MIN => {
                match this.queue_data(p)? {
                    None => return Ok(()),
                    Some(p) => Frame::Payload(p),
                }
            }
            other => other,
        };
        if let Some(Queued::Run(last)) = this.runs.back_mut() {
            // After the runs queued.
            let before = last.len();
            this.codec.encode(&item, last)?;
            let n = last.len() - before;
            this.queued += n;
            this.batch += n;
            return Ok(());
        }
        if !this.runs.is_empty() {
            // After data queued: a run of its own.
            let mut run = BytesMut::new();
            this.codec.encode(&item, &mut run)?;
            this.queued += run.len();
            this.batch += run.len();
            this.runs.push_back(Queued::Run(run));
            return Ok(());
        }
        if this.buf.capacity() == 0 {
            this.buf = take_spare(&SPARE_WRITE, this.next_capacity);
        }
        let before = this.buf.len();
        this.codec.encode(&item, &mut this.buf)?;
        this.batch += this.buf.len() - before;
        Ok(())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = &mut *self;
        ready!(this.poll_write_all(cx))?;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        ready!(self.as_mut().poll_flush(cx))?;
        ready!(Pin::new(&mut self.io).poll_shutdown(cx))?;
        Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin + Send> WireWrite for FrameWriter<W> {
    fn start_send_wire(&mut self, frames: &mut BytesMut) -> Result<(), TransportError> {
        self.batch += frames.len();
        if !self.runs.is_empty() {
            // After what is queued: copied into the last run when it has
            // the room, queued as well otherwise.
            self.queued += frames.len();
            match self.runs.back_mut() {
                Some(Queued::Run(last)) if last.capacity() - last.len() >= frames.len() => {
                    last.extend_from_slice(frames);
                    frames.clear();
                }
                _ => self.runs.push_back(Queued::Run(std::mem::take(frames))),
            }
            return Ok(());
        }
        if frames.len() >= QUEUE_RUN_MIN
            && !(self.buf.is_empty() && frames.capacity() >= self.next_capacity)
        {
            // Not small: queued behind the buffer without a copy.
            self.queued += frames.len();
            self.runs.push_back(Queued::Run(std::mem::take(frames)));
            return Ok(());
        }
        if self.buf.is_empty() && frames.capacity() >= self.next_capacity {
            // Nothing waits and the run has the room a batch needs: it
            // becomes the buffer, without a copy; the caller gets the one
            // it replaces.
            std::mem::swap(&mut self.buf, frames);
        } else {
            if self.buf.capacity() == 0 {
                self.buf = take_spare(&SPARE_WRITE, self.next_capacity);
            }
            self.buf.extend_from_slice(frames);
        }
        frames.clear();
        Ok(())
    }
}

/// A transport over a byte stream split into read and write halves, framed
/// with the 24-bit length prefix.
#[derive(Debug)]
pub struct StreamTransport<R, W> {
    reader: R,
    writer: W,
    codec: FrameCodec,
    peer: PeerInfo,
}

impl<R, W> StreamTransport<R, W>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    /// Frames `reader` and `writer` with the default maximum frame length.
    pub fn new(reader: R, writer: W) -> Self {
        Self {
            reader,
            writer,
            codec: FrameCodec::new(),
            peer: PeerInfo::default(),
        }
    }

    /// Sets the maximum frame length (capped at 16,777,215).
    pub fn with_max_frame_len(mut self, max: usize) -> Self {
        self.codec = FrameCodec::with_max_frame_len(max);
        self
    }

    /// Sets what the acceptor sees about the peer.
    pub fn with_peer_info(mut self, peer: PeerInfo) -> Self {
        self.peer = peer;
        self
    }
}

impl<R, W> Transport for StreamTransport<R, W>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    type Reader = FrameReader<R>;
    type Writer = FrameWriter<W>;

    fn split(self) -> (Self::Reader, Self::Writer) {
        let reader = FrameReader {
            io: self.reader,
            codec: self.codec.clone(),
            buf: BytesMut::new(),
            large: false,
            done: false,
            deferred: None,
            waiting: false,
        };
        let writer = FrameWriter {
            io: self.writer,
            codec: self.codec,
            buf: BytesMut::new(),
            runs: VecDeque::new(),
            queued: 0,
            batch: 0,
            next_capacity: WRITE_CAPACITY,
        };
        (reader, writer)
    }

    fn peer_info(&self) -> PeerInfo {
        self.peer.clone()
    }

    fn limit_frame_len(&mut self, max: usize) {
        if max < self.codec.max_frame_len() {
            self.codec = FrameCodec::with_max_frame_len(max);
        }
    }

    fn wire_reader(reader: &mut Self::Reader) -> Option<&mut dyn WireRead> {
        Some(reader)
    }

    fn wire_writer(writer: &mut Self::Writer) -> Option<&mut dyn WireWrite> {
        Some(writer)
    }
}

/// The in-memory transport: a `tokio::io::duplex` pipe.
pub type MemoryTransport = StreamTransport<
    tokio::io::ReadHalf<tokio::io::DuplexStream>,
    tokio::io::WriteHalf<tokio::io::DuplexStream>,
>;

/// Two connected in-memory transports (client end, server end), each with a
/// bounded pipe buffer of `buffer` bytes per direction. Frames go through the
/// same length-prefix codec as TCP.
pub fn memory_pair(buffer: usize) -> (MemoryTransport, MemoryTransport) {
    let (a, b) = tokio::io::duplex(buffer);
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    (StreamTransport::new(ar, aw), StreamTransport::new(br, bw))
}

/// Closes the writer half after the final flush (used on setup rejection).
pub(crate) async fn flush_and_close<W>(writer: &mut W, frame: Frame) -> Result<(), TransportError>
where
    W: Sink<Frame, Error = TransportError> + Unpin,
{
    writer.send(frame).await?;
    writer.close().await
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use bytes::Bytes;
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::frame::{PayloadFrame, StreamId};
    use crate::Payload;

    fn frame(data_len: usize) -> Frame {
        let id = StreamId::new(1).expect("stream id");
        Frame::Payload(PayloadFrame::next(
            id,
            Payload::new(Bytes::from(vec![7u8; data_len])),
        ))
    }

    fn encoded(frames: &[Frame]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        for f in frames {
            FrameCodec::new().encode(f, &mut buf).unwrap();
        }
        buf.to_vec()
    }

    fn poll_next<R: AsyncRead + Unpin>(
        r: &mut FrameReader<R>,
    ) -> Poll<Option<Result<Frame, TransportError>>> {
        Pin::new(r).poll_next(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test]
    async fn reader_holds_no_buffer_while_idle() {
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let (mut reader, _writer) = StreamTransport::new(ours, tokio::io::sink()).split();
        assert!(poll_next(&mut reader).is_pending());
        assert_eq!(reader.buf.capacity(), 0, "no buffer before any data");

        // Small frames: read and framed, then the buffer goes once empty.
        let frames = [frame(10), frame(100)];
        peer.write_all(&encoded(&frames)).await.unwrap();
        for f in &frames {
            match poll_next(&mut reader) {
                Poll::Ready(Some(Ok(got))) => assert_eq!(&got, f),
                other => panic!("expected a frame, got {other:?}"),
            }
        }
        assert!(poll_next(&mut reader).is_pending());
        assert_eq!(reader.buf.capacity(), 0, "released when idle");

        // A frame larger than the probe, in two parts: the partial frame is
        // kept across the wait.
        let big = frame(3 * PROBE_LEN);
        let bytes = encoded(std::slice::from_ref(&big));
        peer.write_all(&bytes[..PROBE_LEN + 5]).await.unwrap();
        assert!(poll_next(&mut reader).is_pending());
        assert_eq!(reader.buf.len(), PROBE_LEN + 5);
        peer.write_all(&bytes[PROBE_LEN + 5..]).await.unwrap();
        match poll_next(&mut reader) {
            Poll::Ready(Some(Ok(got))) => assert_eq!(got, big),
            other => panic!("expected the large frame, got {other:?}"),
        }
        assert!(poll_next(&mut reader).is_pending());
        assert_eq!(reader.buf.capacity(), 0);
    }

    /// Records the room each read is offered.
    struct Recording<R> {
        inner: R,
        rooms: Vec<usize>,
    }

    impl<R: AsyncRead + Unpin> AsyncRead for Recording<R> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.rooms.push(buf.remaining());
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    #[tokio::test]
    async fn reader_reads_in_large_chunks_while_data_flows() {
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let ours = Recording {
            inner: ours,
            rooms: Vec::new(),
        };
        let (mut reader, _writer) = StreamTransport::new(ours, tokio::io::sink()).split();
        let many: Vec<Frame> = (0..5000).map(|i| frame(i % 300)).collect();
        let bytes = encoded(&many);
        peer.write_all(&bytes).await.unwrap();
        for f in &many {
            match poll_next(&mut reader) {
                Poll::Ready(Some(Ok(got))) => assert_eq!(&got, f),
                other => panic!("expected a frame, got {other:?}"),
            }
        }
        assert!(poll_next(&mut reader).is_pending());
        assert_eq!(reader.buf.capacity(), 0);
        let rooms = &reader.io.rooms;
        assert_eq!(rooms[0], PROBE_LEN, "the first read goes to the probe");
        assert!(rooms.iter().all(|&r| r >= READ_MIN_ROOM), "{rooms:?}");
        // 5000 frames of 150 bytes on average: a few dozen reads, not
        // thousands.
        assert!(
            rooms.len() < 4 * bytes.len() / READ_CAPACITY + 8,
            "{rooms:?}"
        );
    }

    #[tokio::test]
    async fn a_buffer_grown_for_a_large_frame_is_not_kept() {
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let (mut reader, _writer) = StreamTransport::new(ours, tokio::io::sink()).split();
        drop(SPARE_READ.with(Cell::take));
        let big = frame(4 * SPARE_MAX);
        peer.write_all(&encoded(std::slice::from_ref(&big)))
            .await
            .unwrap();
        loop {
            match poll_next(&mut reader) {
                Poll::Ready(Some(Ok(got))) => {
                    assert_eq!(got, big);
                    break;
                }
                Poll::Pending => tokio::task::yield_now().await,
                other => panic!("expected the large frame, got {other:?}"),
            }
        }
        assert!(poll_next(&mut reader).is_pending());
        assert_eq!(reader.buf.capacity(), 0);
        assert!(SPARE_READ.with(Cell::take).is_none(), "not kept");

        peer.write_all(&encoded(&[frame(10)])).await.unwrap();
        assert!(matches!(poll_next(&mut reader), Poll::Ready(Some(Ok(_)))));
        assert!(poll_next(&mut reader).is_pending());
        assert!(SPARE_READ.with(Cell::take).is_some(), "an ordinary one is");
    }

    fn poll_wire<R: AsyncRead + Unpin + Send>(
        r: &mut FrameReader<R>,
        max: usize,
    ) -> Poll<Option<Result<Bytes, TransportError>>> {
        r.poll_wire(&mut Context::from_waker(Waker::noop()), max)
    }

    #[tokio::test]
    async fn wire_reader_hands_out_whole_frames_then_the_error() {
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let (mut reader, _writer) = StreamTransport::new(ours, tokio::io::sink())
            .with_max_frame_len(1000)
            .split();
        assert!(poll_wire(&mut reader, 1 << 20).is_pending());
        let frames: Vec<Frame> = (0..10).map(|i| frame(i * 10)).collect();
        let bytes = encoded(&frames);
        // All but the last byte: the last frame is incomplete.
        peer.write_all(&bytes[..bytes.len() - 1]).await.unwrap();
        let first = encoded(&frames[..9]);
        match poll_wire(&mut reader, 1 << 20) {
            Poll::Ready(Some(Ok(chunk))) => assert_eq!(&chunk[..], &first[..]),
            other => panic!("expected nine frames, got {other:?}"),
        }
        assert!(poll_wire(&mut reader, 1 << 20).is_pending());
        assert_eq!(reader.buf.len(), bytes.len() - 1 - first.len());
        // The rest, then a prefix beyond the maximum: the frame first.
        peer.write_all(&bytes[bytes.len() - 1..]).await.unwrap();
        peer.write_all(&[0x0f, 0x42, 0x40, 0, 0]).await.unwrap();
        let last = encoded(&frames[9..]);
        match poll_wire(&mut reader, 1 << 20) {
            Poll::Ready(Some(Ok(chunk))) => assert_eq!(&chunk[..], &last[..]),
            other => panic!("expected the last frame, got {other:?}"),
        }
        match poll_wire(&mut reader, 1 << 20) {
            Poll::Ready(Some(Err(TransportError::FrameTooLarge { len, max }))) => {
                assert_eq!((len, max), (1_000_000, 1000));
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert!(matches!(poll_wire(&mut reader, 1 << 20), Poll::Ready(None)));

        // `max` splits a run at a frame boundary; a short prefix fails.
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let (mut reader, _writer) = StreamTransport::new(ours, tokio::io::sink()).split();
        peer.write_all(&encoded(&frames[..3])).await.unwrap();
        peer.write_all(&[0, 0, 2, 0, 0]).await.unwrap();
        for f in &frames[..3] {
            match poll_wire(&mut reader, 1) {
                Poll::Ready(Some(Ok(chunk))) => {
                    assert_eq!(&chunk[..], &encoded(std::slice::from_ref(f))[..]);
                }
                other => panic!("expected one frame, got {other:?}"),
            }
        }
        assert!(matches!(
            poll_wire(&mut reader, 1),
            Poll::Ready(Some(Err(TransportError::Framing(_))))
        ));
    }

    #[tokio::test]
    async fn wire_reader_hands_out_a_lone_read_without_a_buffer() {
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let (mut reader, _writer) = StreamTransport::new(ours, tokio::io::sink()).split();
        // Whole frames in one read: handed out from the stack read, the
        // reader keeps no buffer.
        let frames: Vec<Frame> = (0..2).map(|i| frame(i * 10)).collect();
        peer.write_all(&encoded(&frames)).await.unwrap();
        match poll_wire(&mut reader, 1 << 20) {
            Poll::Ready(Some(Ok(chunk))) => assert_eq!(&chunk[..], &encoded(&frames)[..]),
            other => panic!("expected the frames, got {other:?}"),
        }
        assert!(reader.waiting());
        assert_eq!(reader.buf.capacity(), 0);
        // Whole frames, then a bad prefix in the same read: the frames
        // first, then the error.
        let mut bytes = encoded(&frames[..1]);
        bytes.extend_from_slice(&[0, 0, 2, 0, 0]);
        peer.write_all(&bytes).await.unwrap();
        match poll_wire(&mut reader, 1 << 20) {
            Poll::Ready(Some(Ok(chunk))) => assert_eq!(&chunk[..], &encoded(&frames[..1])[..]),
            other => panic!("expected the frame, got {other:?}"),
        }
        assert!(matches!(
            poll_wire(&mut reader, 1 << 20),
            Poll::Ready(Some(Err(TransportError::Framing(_))))
        ));
        // Whole frames, then the end: the frames, then `None`.
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let (mut reader, _writer) = StreamTransport::new(ours, tokio::io::sink()).split();
        peer.write_all(&encoded(&frames)).await.unwrap();
        drop(peer);
        match poll_wire(&mut reader, 1 << 20) {
            Poll::Ready(Some(Ok(chunk))) => assert_eq!(&chunk[..], &encoded(&frames)[..]),
            other => panic!("expected the frames, got {other:?}"),
        }
        assert!(matches!(poll_wire(&mut reader, 1 << 20), Poll::Ready(None)));
    }

    #[tokio::test]
    async fn wire_reader_holds_no_buffer_while_idle() {
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let (mut reader, _writer) = StreamTransport::new(ours, tokio::io::sink()).split();
        for round in 0..3 {
            let frames: Vec<Frame> = (0..5).map(|i| frame(i * 30 + round)).collect();
            peer.write_all(&encoded(&frames)).await.unwrap();
            match poll_wire(&mut reader, 1 << 20) {
                Poll::Ready(Some(Ok(chunk))) => assert_eq!(&chunk[..], &encoded(&frames)[..]),
                other => panic!("expected the frames, got {other:?}"),
            }
            assert!(reader.waiting(), "read until nothing was left");
            assert_eq!(reader.buf.capacity(), 0, "released once idle");
            assert!(poll_wire(&mut reader, 1 << 20).is_pending());
        }
    }

    #[tokio::test]
    async fn reader_refuses_an_oversized_frame_from_its_prefix() {
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let (mut reader, _writer) = StreamTransport::new(ours, tokio::io::sink())
            .with_max_frame_len(1000)
            .split();
        // Announces 1,000,000 bytes; none of them is buffered.
        peer.write_all(&[0x0f, 0x42, 0x40, 0, 0]).await.unwrap();
        match poll_next(&mut reader) {
            Poll::Ready(Some(Err(TransportError::FrameTooLarge { len, max }))) => {
                assert_eq!((len, max), (1_000_000, 1000));
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert_eq!(reader.buf.capacity(), 0);
        assert!(matches!(poll_next(&mut reader), Poll::Ready(None)));
    }

    #[tokio::test]
    async fn reader_reports_a_stream_ending_inside_a_frame() {
        let (mut peer, ours) = tokio::io::duplex(1 << 20);
        let (mut reader, _writer) = StreamTransport::new(ours, tokio::io::sink()).split();
        let bytes = encoded(&[frame(50)]);
        peer.write_all(&bytes[..20]).await.unwrap();
        drop(peer);
        match poll_next(&mut reader) {
            Poll::Ready(Some(Err(TransportError::Io(e)))) => {
                assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
            }
            other => panic!("expected an I/O error, got {other:?}"),
        }
        assert!(matches!(poll_next(&mut reader), Poll::Ready(None)));

        // A clean end between frames is the end of the stream.
        let (peer, ours) = tokio::io::duplex(64);
        let (mut reader, _writer) = StreamTransport::new(ours, tokio::io::sink()).split();
        drop(peer);
        assert!(matches!(poll_next(&mut reader), Poll::Ready(None)));
    }

    #[tokio::test]
    async fn writer_queues_large_runs_and_writes_everything_in_order() {
        // A small pipe: the vectored writes are partial.
        let (ours, mut peer) = tokio::io::duplex(1000);
        let (_reader, mut writer) = StreamTransport::new(tokio::io::empty(), ours).split();
        let run = |frames: &[Frame]| BytesMut::from(&encoded(frames)[..]);
        let mut want = Vec::new();
        let mut sent = 0;
        for round in 0..3 {
            let small: Vec<Frame> = (0..2).map(|i| frame(i + round)).collect();
            let large: Vec<Frame> = (0..20).map(|i| frame(40 + i)).collect();
            let single = frame(7 + round);
            // A small run (copied), a large one (queued), a frame and a
            // small run after it (added to the last run), a large one.
            for (i, part) in [&small[..], &large[..]].into_iter().enumerate() {
                let mut r = run(part);
                want.extend_from_slice(&r);
                writer.start_send_wire(&mut r).unwrap();
                if i == 1 {
                    assert!(!writer.runs.is_empty(), "a large run is queued");
                }
            }
            futures::future::poll_fn(|cx| Pin::new(&mut writer).poll_ready(cx))
                .await
                .unwrap();
            Pin::new(&mut writer).start_send(single.clone()).unwrap();
            want.extend_from_slice(&encoded(std::slice::from_ref(&single)));
            for part in [&small[..], &large[..]] {
                let mut r = run(part);
                want.extend_from_slice(&r);
                writer.start_send_wire(&mut r).unwrap();
            }
            let expect = want.len() - sent;
            let flush = tokio::spawn(async move {
                writer.flush().await.unwrap();
                writer
            });
            let mut got = vec![0u8; expect];
            tokio::io::AsyncReadExt::read_exact(&mut peer, &mut got)
                .await
                .unwrap();
            writer = flush.await.unwrap();
            assert_eq!(&got[..], &want[sent..]);
            sent = want.len();
            assert!(writer.runs.is_empty() && writer.runs.capacity() == 0);
            assert_eq!((writer.queued, writer.buf.capacity()), (0, 0));
        }
    }

    #[tokio::test]
    async fn writer_sends_large_data_from_their_own_buffer_in_order() {
        let id = StreamId::new(3).expect("stream id");
        let with_metadata = |m: usize, d: usize| {
            Frame::Payload(PayloadFrame::next(
                id,
                Payload::new(Bytes::from(vec![9u8; d])).with_metadata(Bytes::from(vec![5u8; m])),
            ))
        };
        let frames = vec![
            frame(10),
            frame(SHARED_DATA_MIN),             // data queued, no metadata
            frame(20),                          // a frame after data: a run of its own
            with_metadata(20, SHARED_DATA_MIN), // the longest head queued
            with_metadata(21, SHARED_DATA_MIN), // a head too long: copied
            frame(SHARED_DATA_MIN - 1),         // too small: copied
            frame(40_000),
            frame(40_000),
        ];
        // A small pipe: the vectored writes are partial, some end inside a
        // head.
        let (ours, mut peer) = tokio::io::duplex(997);
        let (_reader, mut writer) = StreamTransport::new(tokio::io::empty(), ours).split();
        let want = encoded(&frames);
        let expect = want.len();
        let sending = tokio::spawn(async move {
            for (i, f) in frames.into_iter().enumerate() {
                writer.feed(f).await.unwrap();
                if i == 1 {
                    assert!(
                        matches!(writer.runs.back(), Some(Queued::Data { .. })),
                        "large data are queued, not copied"
                    );
                }
            }
            // A run of frames after data is queued after it.
            let mut run = BytesMut::from(&encoded(&[frame(30)])[..]);
            writer.start_send_wire(&mut run).unwrap();
            writer.flush().await.unwrap();
            writer
        });
        let mut got = vec![0u8; expect + encoded(&[frame(30)]).len()];
        tokio::io::AsyncReadExt::read_exact(&mut peer, &mut got)
            .await
            .unwrap();
        let writer = sending.await.unwrap();
        assert_eq!(&got[..expect], &want[..]);
        assert_eq!(&got[expect..], &encoded(&[frame(30)])[..]);
        assert!(writer.runs.is_empty() && writer.queued == 0);
    }

    #[tokio::test]
    async fn writer_refuses_large_data_over_the_frame_limit() {
        let (ours, _peer) = tokio::io::duplex(1 << 16);
        let (_reader, mut writer) = StreamTransport::new(tokio::io::empty(), ours)
            .with_max_frame_len(SHARED_DATA_MIN + 8)
            .split();
        let err = Pin::new(&mut writer)
            .start_send(frame(SHARED_DATA_MIN + 8))
            .unwrap_err();
        assert!(
            matches!(err, TransportError::FrameTooLarge { .. }),
            "{err:?}"
        );
        assert!(writer.runs.is_empty() && writer.queued == 0);
    }

    #[tokio::test]
    async fn writer_releases_its_buffer_once_written() {
        let (ours, mut peer) = tokio::io::duplex(1 << 20);
        let (_reader, mut writer) = StreamTransport::new(tokio::io::empty(), ours).split();
        assert_eq!(writer.buf.capacity(), 0);
        // Less than the high-water mark: one batch.
        let frames: Vec<Frame> = (0..500).map(|_| frame(100)).collect();
        for f in &frames {
            writer.feed(f.clone()).await.unwrap();
        }
        assert!(writer.buf.capacity() > 0);
        writer.flush().await.unwrap();
        assert_eq!(writer.buf.capacity(), 0, "released after the flush");
        // The next buffer is sized for a batch like the last one.
        let want = encoded(&frames);
        assert_eq!(writer.next_capacity, want.len());
        writer.send(frame(1)).await.unwrap();
        assert_eq!(writer.buf.capacity(), 0);
        assert_eq!(writer.next_capacity, WRITE_CAPACITY);

        let mut got = vec![0u8; want.len()];
        tokio::io::AsyncReadExt::read_exact(&mut peer, &mut got)
            .await
            .unwrap();
        assert_eq!(got, want);
    }

    /// Reads what `peer` holds now, without waiting.
    async fn read_ready(peer: &mut tokio::io::DuplexStream) -> Vec<u8> {
        use futures::FutureExt;
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        while let Some(n) = tokio::io::AsyncReadExt::read(peer, &mut chunk).now_or_never() {
            let n = n.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        got
    }

    #[tokio::test]
    async fn writer_writes_out_past_the_high_water_mark_before_any_flush() {
        // Frames through the `Sink`, then runs through `WireWrite`, each
        // after `poll_ready` as the engine does; never a flush.
        for wire in [false, true] {
            let (ours, mut peer) = tokio::io::duplex(1 << 20);
            let (_reader, mut writer) = StreamTransport::new(tokio::io::empty(), ours).split();
            let frames: Vec<Frame> = (0..100).map(|_| frame(1000)).collect();
            let want = encoded(&frames);
            let mut fed = 0;
            for part in frames.chunks(4) {
                futures::future::poll_fn(|cx| Pin::new(&mut writer).poll_ready(cx))
                    .await
                    .unwrap();
                if wire {
                    let mut run = BytesMut::from(&encoded(part)[..]);
                    writer.start_send_wire(&mut run).unwrap();
                } else {
                    for f in part {
                        Pin::new(&mut writer).start_send(f.clone()).unwrap();
                    }
                }
                fed += encoded(part).len();
                if fed < WRITE_HIGH_WATER {
                    assert!(read_ready(&mut peer).await.is_empty(), "batched until then");
                }
            }
            assert!(want.len() > 3 * WRITE_HIGH_WATER / 2);
            let early = read_ready(&mut peer).await;
            assert!(
                early.len() >= WRITE_HIGH_WATER,
                "wire {wire}: {}",
                early.len()
            );
            assert_eq!(&early[..], &want[..early.len()]);
            assert!(writer.buf.len() + writer.queued < WRITE_HIGH_WATER);
            // The flush writes the rest.
            writer.flush().await.unwrap();
            let rest = read_ready(&mut peer).await;
            assert_eq!([early, rest].concat(), want);
        }
    }

    #[tokio::test]
    async fn writer_copies_queues_or_keeps_runs_by_their_size_and_room() {
        let (ours, mut peer) = tokio::io::duplex(1 << 20);
        let (_reader, mut writer) = StreamTransport::new(tokio::io::empty(), ours).split();
        let run = |frames: &[Frame], capacity: usize| {
            let mut r = BytesMut::with_capacity(capacity);
            r.extend_from_slice(&encoded(frames));
            r
        };
        // Room for a batch while the buffer is empty: it becomes the
        // buffer, and the caller gets the one it replaces (none).
        let mut roomy = run(&[frame(600)], WRITE_CAPACITY);
        let ptr = roomy.as_ptr();
        writer.start_send_wire(&mut roomy).unwrap();
        assert!(writer.runs.is_empty() && writer.buf.as_ptr() == ptr);
        assert_eq!(roomy.capacity(), 0);
        // Small: copied into the buffer.
        let mut small = run(&[frame(100)], WRITE_CAPACITY);
        assert!(small.len() < QUEUE_RUN_MIN);
        writer.start_send_wire(&mut small).unwrap();
        assert!(writer.runs.is_empty() && small.is_empty() && small.capacity() > 0);
        writer.flush().await.unwrap();
        assert_eq!(
            read_ready(&mut peer).await,
            encoded(&[frame(600), frame(100)])
        );
        let parts = [vec![frame(600)], vec![frame(700)], vec![frame(3000)]];
        // Not small, with less room than a batch: queued as it is.
        let mut first = run(&parts[0], 2048);
        assert!(first.len() >= QUEUE_RUN_MIN && first.capacity() < WRITE_CAPACITY);
        writer.start_send_wire(&mut first).unwrap();
        assert_eq!((writer.runs.len(), first.capacity()), (1, 0), "taken");
        // Fits in the room the first one has left: copied there, and the
        // caller keeps its buffer.
        let mut second = run(&parts[1], 1024);
        writer.start_send_wire(&mut second).unwrap();
        assert_eq!(writer.runs.len(), 1, "copied into the queued run");
        assert!(second.is_empty() && second.capacity() >= 1024);
        // Does not fit: queued after it.
        let mut third = run(&parts[2], 4096);
        writer.start_send_wire(&mut third).unwrap();
        assert_eq!((writer.runs.len(), third.capacity()), (2, 0));
        writer.flush().await.unwrap();
        assert_eq!(read_ready(&mut peer).await, encoded(&parts.concat()));
    }
}
