//! One sans-IO `Connection`, driven through `rsocket_core::harness`, by
//! hostile network input interleaved with local actions.
//!
//! Byte 0 picks the configuration: client or server, leasing on or off,
//! resumable or not, small or default caps. The rest is decoded into
//! steps, each one byte of opcode followed by its arguments: raw inbound
//! frame bytes (in place behind a length prefix, or as a decoded frame),
//! well-formed frames of every type built from a few input bytes (any
//! stream id and flags, so the fuzzer gets past decoding quickly), local
//! commands (open, recv with credit, send, send_error, release either
//! half, metadata push, lease grants, drain, close, time passing, the
//! writer taking frames, the transport being lost and resumed).
//!
//! After every step nothing may have panicked and
//! `Harness::check_consistency` must hold.
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use rsocket_core::harness::{Harness, Ready, Recv};
use rsocket_core::{
    Config, ConnectionError, ErrorCode, Frame, Interaction, Lease, LeaseConfig, Payload,
    StreamError, StreamId,
};

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn empty(&self) -> bool {
        self.0.is_empty()
    }
    /// A small length: mostly short, now and then long.
    fn len(&mut self) -> usize {
        let b = self.u8();
        if b < 0xF0 {
            usize::from(b & 0x1F)
        } else {
            usize::from(self.u16() & 0x3FF)
        }
    }
    /// A stream id: mostly small (so streams meet), sometimes anything.
    fn stream_id(&mut self) -> u32 {
        let b = self.u8();
        match b {
            0..=199 => u32::from(b % 10),
            200..=249 => u32::from(self.u8()),
            _ => self.u32(),
        }
    }
    fn payload(&mut self) -> Payload {
        let flags = self.u8();
        let n = self.len();
        let data = Bytes::copy_from_slice(self.bytes(n));
        let p = Payload::new(data);
        if flags & 1 != 0 {
            let m = self.len();
            p.with_metadata(Bytes::copy_from_slice(self.bytes(m)))
        } else {
            p
        }
    }
}

/// Frame types (RSocket 1.0).
const TYPES: [u8; 15] = [
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x3F,
];

/// A frame (without length prefix) built from a few input bytes: a real
/// type and a body laid out for it, with any stream id and flags.
fn build_frame(inp: &mut Input<'_>) -> Bytes {
    let ty = TYPES[usize::from(inp.u8()) % TYPES.len()];
    let stream = inp.stream_id();
    let flags = inp.u16() & 0x3FF;
    let mut b = BytesMut::new();
    b.put_u32(stream);
    b.put_u16((u16::from(ty) << 10) | flags);
    let metadata_flag = flags & 0x100 != 0;
    let md = |inp: &mut Input<'_>, b: &mut BytesMut| {
        if metadata_flag {
            let n = inp.len();
            let m = inp.bytes(n).to_vec();
            // Mostly the right length, sometimes a lie.
            let claimed = if inp.u8() < 240 {
                m.len()
            } else {
                usize::from(inp.u16())
            };
            b.put_u8((claimed >> 16) as u8);
            b.put_u16(claimed as u16);
            b.put_slice(&m);
        }
    };
    let data = |inp: &mut Input<'_>, b: &mut BytesMut| {
        let n = inp.len();
        b.put_slice(inp.bytes(n));
    };
    match ty {
        // SETUP
        0x01 => {
            b.put_u16(1);
            b.put_u16(u16::from(inp.u8() & 1));
            b.put_u32(inp.u32() & 0x7FFF_FFFF);
            b.put_u32(inp.u32() & 0x7FFF_FFFF);
            if flags & 0x80 != 0 {
                let n = inp.len();
                b.put_u16(n as u16);
                b.put_slice(&vec![7; n]);
            }
            for mime in [&b"application/binary"[..], b"text/plain"] {
                b.put_u8(mime.len() as u8);
                b.put_slice(mime);
            }
            md(inp, &mut b);
            data(inp, &mut b);
        }
        // LEASE
        0x02 => {
            b.put_u32(u32::from(inp.u16()));
            b.put_u32(u32::from(inp.u8()));
            if metadata_flag {
                data(inp, &mut b);
            }
        }
        // KEEPALIVE
        0x03 => {
            b.put_u64(u64::from(inp.u32()));
            data(inp, &mut b);
        }
        // REQUEST_RESPONSE, REQUEST_FNF
        0x04 | 0x05 => {
            md(inp, &mut b);
            data(inp, &mut b);
        }
        // REQUEST_STREAM, REQUEST_CHANNEL
        0x06 | 0x07 => {
            let n = inp.u8();
            b.put_u32(if n == 255 { inp.u32() } else { u32::from(n) });
            md(inp, &mut b);
            data(inp, &mut b);
        }
        // REQUEST_N
        0x08 => {
            let n = inp.u8();
            b.put_u32(if n == 255 { inp.u32() } else { u32::from(n) });
        }
        // CANCEL
        0x09 => {}
        // PAYLOAD, EXT
        0x0A | 0x3F => {
            if ty == 0x3F {
                b.put_u32(inp.u32());
            }
            md(inp, &mut b);
            data(inp, &mut b);
        }
        // ERROR
        0x0B => {
            let codes = [
                0x001,
                0x002,
                0x003,
                0x004,
                0x101,
                0x102,
                0x201,
                0x202,
                0x203,
                0x204,
                0x301,
                0xFFFF_FFFF,
                0,
            ];
            let c = inp.u8();
            b.put_u32(match codes.get(usize::from(c)) {
                Some(c) => *c,
                None => u32::from(c) << 8,
            });
            data(inp, &mut b);
        }
        // METADATA_PUSH
        0x0C => data(inp, &mut b),
        // RESUME
        0x0D => {
            b.put_u16(1);
            b.put_u16(0);
            let n = inp.len();
            b.put_u16(n as u16);
            b.put_slice(&vec![7; n]);
            b.put_u64(u64::from(inp.u32()));
            b.put_u64(u64::from(inp.u32()));
        }
        // RESUME_OK
        0x0E => b.put_u64(u64::from(inp.u32())),
        _ => unreachable!(),
    }
    b.freeze()
}

const INTERACTIONS: [Interaction; 4] = [
    Interaction::RequestResponse,
    Interaction::FireAndForget,
    Interaction::RequestStream,
    Interaction::RequestChannel,
];

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let mode = inp.u8();
    let client = mode & 1 != 0;
    let leasing = mode & 2 != 0;
    let resumable = mode & 4 != 0;
    let small = mode & 8 != 0;

    let mut config = Config::default();
    if small {
        config.max_frame_len = 64 + usize::from(inp.u8());
        config.mtu = Some(64 + usize::from(inp.u8()));
        config.max_reassembly_bytes = 256 + usize::from(inp.u16());
        config.max_concurrent_inbound_streams = 1 + usize::from(inp.u8() % 8);
        config.max_outbound_queue_bytes = 128 + usize::from(inp.u16());
        config.default_prefetch = 1 + u32::from(inp.u8() % 16);
        config.max_prefetch = config.default_prefetch + u32::from(inp.u8());
        config.prefetch_bytes = 64 + usize::from(inp.u16());
        config.resume_store_bytes = 64 + usize::from(inp.u16());
    }
    if leasing {
        config.lease = Some(LeaseConfig::new().wait(Duration::from_millis(u64::from(inp.u8()))));
    }
    let start = Instant::now();
    let keepalive = Duration::from_millis(100 + u64::from(inp.u8()) * 10);
    let lifetime = Duration::from_millis(200 + u64::from(inp.u8()) * 20);
    let mut h = if client {
        Harness::client(config, keepalive, lifetime, start)
    } else {
        Harness::server(config, lifetime, start)
    };
    if resumable {
        h = h.resumable();
    }
    let mut now = start;
    // Streams this side opened or was asked to serve.
    let mut streams: Vec<StreamId> = Vec::new();
    let mut steps = 0;
    // Items each consumer took and has not reported consumed yet.
    let mut held: HashMap<u32, u32> = HashMap::new();

    while !inp.empty() && steps < 512 {
        steps += 1;
        let op = inp.u8();
        // Inbound steps: a connection they close for a protocol violation
        // or a broken limit must tell the peer with an ERROR on stream 0.
        let inbound = op % 24 <= 7;
        let was_open = h.closed().is_none();
        if inbound {
            let _ = h.new_frames();
        }
        match op % 24 {
            // Raw bytes, in place behind a length prefix.
            0 => {
                let n = inp.len();
                let b = Bytes::copy_from_slice(inp.bytes(n));
                h.wire_bytes_in(b);
            }
            // Raw bytes, decoded to a frame.
            1 => {
                let n = inp.len();
                let b = Bytes::copy_from_slice(inp.bytes(n));
                h.bytes_in(b);
            }
            // A well-formed frame, in place.
            2..=5 => {
                let f = build_frame(&mut inp);
                h.wire_bytes_in(f);
            }
            // A well-formed frame, decoded first.
            6 => {
                let f = build_frame(&mut inp);
                h.bytes_in(f);
            }
            // Several well-formed frames in one read.
            7 => {
                let k = 1 + inp.u8() % 8;
                let mut frames = Vec::new();
                for _ in 0..k {
                    if let Ok(f) = rsocket_core::Frame::decode(build_frame(&mut inp)) {
                        if f.encoded_len() <= 0xFF_FFFF {
                            frames.push(f);
                        }
                    }
                }
                h.wire_frames_in(&frames);
            }
            // Open a request.
            8 => {
                let i = INTERACTIONS[usize::from(inp.u8() % 4)];
                let window = u32::from(inp.u8());
                let manual = inp.u8() & 1 != 0;
                let p = inp.payload();
                if h.can_open() && h.lease_ready(false).is_none_or(|r| r.is_ok()) {
                    if let Ok(id) = h.open(i, p, window, manual) {
                        streams.push(id);
                    }
                }
            }
            // Take items from an inbound half.
            9 => {
                if let Some(&id) = pick(&mut inp, &streams) {
                    // Only items handed out before may be reported as
                    // consumed, as the runtime's handles do.
                    let held = held.entry(id.get()).or_insert(0);
                    let consumed = u32::from(inp.u8()).min(*held);
                    *held -= consumed;
                    let max = usize::from(inp.u8());
                    match h.recv(id, consumed, max) {
                        Recv::Items(items) => {
                            *held += u32::try_from(items.len()).unwrap_or(u32::MAX);
                        }
                        Recv::End | Recv::Failed(_) | Recv::Pending => {}
                    }
                }
            }
            // Manual credit.
            10 => {
                if let Some(&id) = pick(&mut inp, &streams) {
                    let n = u32::from(inp.u8());
                    h.request_credit(id, n);
                }
            }
            // Produce items within the credit the peer gave.
            11 => {
                if let Some(&id) = pick(&mut inp, &streams) {
                    let want = u64::from(inp.u8() % 4);
                    let complete = inp.u8() & 1 != 0;
                    match h.send_ready(id, false) {
                        Ready::Credit(c) => {
                            let n = want.min(c);
                            let items = (0..n).map(|_| inp.payload()).collect();
                            h.send(id, items, complete && n > 0);
                        }
                        Ready::Stopped => h.release_send(id),
                        Ready::Pending => {}
                    }
                }
            }
            12 => {
                if let Some(&id) = pick(&mut inp, &streams) {
                    let code = match inp.u8() % 4 {
                        0 => ErrorCode::APPLICATION_ERROR,
                        1 => ErrorCode::REJECTED,
                        2 => ErrorCode::CANCELED,
                        _ => ErrorCode::INVALID,
                    };
                    let n = inp.len();
                    let msg = String::from_utf8_lossy(inp.bytes(n)).into_owned();
                    h.send_error(id, &StreamError::new(code, msg));
                }
            }
            13 => {
                if let Some(&id) = pick(&mut inp, &streams) {
                    h.release_recv(id);
                }
            }
            14 => {
                if let Some(&id) = pick(&mut inp, &streams) {
                    h.release_send(id);
                }
            }
            15 => {
                let n = inp.len();
                let m = Bytes::copy_from_slice(inp.bytes(n));
                let _ = h.metadata_push(m);
            }
            16 => {
                let ttl = Duration::from_millis(u64::from(inp.u16()));
                let n = u32::from(inp.u8());
                h.grant_lease(&Lease::new(ttl, n));
            }
            17 => {
                let t = Duration::from_millis(u64::from(inp.u16()));
                h.start_drain(t);
            }
            18 => {
                if inp.u8() % 8 == 0 {
                    h.close();
                }
            }
            // Time passes.
            19 => {
                let ms = match inp.u8() {
                    255 => u64::from(inp.u16()) * 10,
                    b => u64::from(b),
                };
                now += Duration::from_millis(ms);
                h.advance(now);
            }
            // To the next deadline.
            20 => {
                if let Some(d) = h.deadline() {
                    now = now.max(d);
                    h.advance(now);
                }
            }
            // The writer takes frames.
            21 => {
                let max = 1 + usize::from(inp.u16());
                let _ = h.transmit(max);
                let _ = h.new_frames();
            }
            // Responder work and one-way handlers.
            22 => {
                for ev in h.events() {
                    match ev {
                        rsocket_core::harness::Event::Request { stream, .. } => {
                            streams.push(stream)
                        }
                        _ => h.handler_done(),
                    }
                }
            }
            // Transport trouble.
            _ => match inp.u8() % 8 {
                0 => h.transport_closed(),
                1 | 2 if resumable => h.detach(),
                3 | 4 if resumable => {
                    let a = u64::from(inp.u32());
                    let b = u64::from(inp.u32());
                    let _ = if client {
                        h.client_resumed(a)
                    } else {
                        h.server_resume(a, b)
                    };
                }
                _ => {
                    let _ = h.lease();
                    let _ = h.stats();
                    let _ = h.closed();
                }
            },
        }
        if let Err(e) = h.check_consistency() {
            panic!("inconsistent after step {steps} (op {op}): {e}");
        }
        if inbound && was_open {
            check_error_sent(&mut h, steps);
        }
        if streams.len() > 64 {
            streams.drain(..32);
        }
    }
    // The end: close and release everything the way the runtime does.
    h.close();
    for ev in h.events() {
        if let rsocket_core::harness::Event::Request { stream, .. } = ev {
            streams.push(stream);
        }
    }
    for id in streams {
        h.release_recv(id);
        h.release_send(id);
    }
    let _ = h.transmit(usize::MAX);
    if let Err(e) = h.check_consistency() {
        panic!("inconsistent after close: {e}");
    }
});

/// The connection just closed on inbound input: for a protocol violation
/// or a local limit, an ERROR on stream 0 (with the code of the violation)
/// must have been queued.
fn check_error_sent(h: &mut Harness, steps: usize) {
    let want = match h.closed() {
        Some(ConnectionError::Protocol { code, .. }) => Some(code),
        Some(ConnectionError::LimitExceeded(_)) => None,
        _ => return,
    };
    let sent = h.new_frames().into_iter().any(|f| match f {
        Frame::Error(e) => e.stream_id.is_none() && want.is_none_or(|c| c == e.code),
        _ => false,
    });
    assert!(
        sent,
        "step {steps} closed the connection ({:?}) without its ERROR",
        h.closed()
    );
}

fn pick<'a>(inp: &mut Input<'_>, streams: &'a [StreamId]) -> Option<&'a StreamId> {
    if streams.is_empty() {
        return None;
    }
    let i = usize::from(inp.u8()) % streams.len();
    streams.get(i)
}
