//! Resumption state of one connection: positions and the store of sent
//! frames the peer has not acknowledged (rsocket-protocol.md §9).
//!
//! ```text
//!   sent frames:  [ released | store: first_available .. sent )
//!   received:     implied (bytes of resumable frames received)
//!   reported:     acked   (the implied position we last told the peer)
//! ```
//!
//! Positions count the encoded length (header and body, no transport
//! prefix) of resumable frames: the four requests, REQUEST_N, CANCEL,
//! PAYLOAD and ERROR on a stream. Everything on stream 0 (SETUP, LEASE,
//! KEEPALIVE, METADATA_PUSH, RESUME, RESUME_OK, connection ERROR) and EXT
//! has no position. Frames are kept as they were sent (their `Bytes` are
//! shared with what was written, not copied).

use std::collections::VecDeque;

use crate::frame::{Frame, Keepalive, Resume, ResumeOk};

/// The received position is reported at least every this many bytes,
/// whatever the store size, so that a peer with a smaller store than ours
/// is not kept waiting for the keepalive interval. (Each report costs a
/// write here and a wake-up at the peer: reporting every 64 KiB rather
/// than every 1 MiB cost about 9% of `stream_64`'s throughput on a
/// two-thread runtime; 256 KiB is the middle ground.)
const ACK_EVERY_MAX: u64 = 256 << 10;

/// Whether a frame takes part in position accounting.
pub(crate) fn is_resumable(frame: &Frame) -> bool {
    match frame {
        Frame::RequestResponse(_)
        | Frame::RequestFnf(_)
        | Frame::RequestStream(_)
        | Frame::RequestChannel(_)
        | Frame::RequestN(_)
        | Frame::Cancel(_)
        | Frame::Payload(_) => true,
        Frame::Error(e) => e.stream_id.is_some(),
        _ => false,
    }
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct ResumeState {
    cap: usize,
    /// Sent resumable frames not yet acknowledged: (start position, length,
    /// frame).
    store: VecDeque<(u64, usize, Frame)>,
    bytes: usize,
    /// Position just past the last frame sent.
    sent: u64,
    /// Bytes of resumable frames received.
    implied: u64,
    /// The implied position last reported to the peer.
    acked: u64,
    /// Report the implied position once it is this far past `acked`.
    ack_every: u64,
    /// An acknowledgement is due (see `ack_every`).
    ack_due: bool,
    /// A KEEPALIVE(R) asked the peer for its position because the store
    /// was full (see [`ResumeState::solicit`]); cleared by a KEEPALIVE of
    /// the peer that releases frames, and when the transport changes.
    solicited: bool,
}

impl ResumeState {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            store: VecDeque::new(),
            bytes: 0,
            sent: 0,
            implied: 0,
            acked: 0,
            ack_every: (cap as u64 / 4).clamp(1, ACK_EVERY_MAX),
            ack_due: false,
            solicited: false,
        }
    }

    /// An acknowledgement is due.
    pub(crate) fn ack_due(&self) -> bool {
        self.ack_due
    }

    /// Bytes held by the store.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Oldest position still available for retransmission.
    pub(crate) fn first_available(&self) -> u64 {
        self.store.front().map_or(self.sent, |(pos, _, _)| *pos)
    }

    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    /// A frame of `len` bytes may be stored now (one frame may pass the
    /// cap when the store is empty).
    pub(crate) fn has_room(&self, len: usize) -> bool {
        self.store.is_empty() || self.bytes + len <= self.cap
    }

    /// Records a frame handed to the writer.
    pub(crate) fn record_sent(&mut self, frame: &Frame, len: usize) {
        self.store.push_back((self.sent, len, frame.clone()));
        self.bytes += len;
        self.sent += len as u64;
    }

    /// Records a received resumable frame; returns true when an
    /// acknowledgement became due.
    pub(crate) fn record_received(&mut self, len: usize) -> bool {
        self.implied += len as u64;
        if !self.ack_due && self.implied - self.acked >= self.ack_every {
            self.ack_due = true;
            return true;
        }
        false
    }

    /// The peer acknowledged everything before `position`: frames that end
    /// at or before it are released. A position beyond what was sent is
    /// ignored (returns false).
    pub(crate) fn release(&mut self, position: u64) -> bool {
        if position > self.sent {
            return false;
        }
        while let Some((pos, len, _)) = self.store.front() {
            if pos + *len as u64 > position {
                break;
            }
            self.bytes -= *len;
            self.store.pop_front();
        }
        true
    }

    /// A KEEPALIVE from the peer reported its received position: frames
    /// before it are released (see [`ResumeState::release`]). When that
    /// freed some, the store may ask again once it fills: the answer to a
    /// question always does, since the question went out after every
    /// stored frame; a peer that answers with a stale position is not asked
    /// again and again.
    pub(crate) fn peer_reported(&mut self, position: u64) -> bool {
        let before = self.first_available();
        let valid = self.release(position);
        if self.first_available() != before {
            self.solicited = false;
        }
        valid
    }

    /// The transport changed: a question asked on the old one has no
    /// answer coming.
    pub(crate) fn new_transport(&mut self) {
        self.solicited = false;
    }

    /// The store is full and holds back a frame: a KEEPALIVE(R) asking the
    /// peer for its received position, unless one is unanswered. The peer
    /// reports it on its own only after a quarter of *its* store (at most
    /// 256 KiB), or at its keepalive interval: a store smaller than that
    /// would otherwise stall the connection until then.
    pub(crate) fn solicit(&mut self) -> Option<Frame> {
        if self.solicited {
            return None;
        }
        self.solicited = true;
        self.ack_due = false;
        self.acked = self.implied;
        Some(Frame::Keepalive(Keepalive {
            respond: true,
            last_received_position: self.implied,
            data: bytes::Bytes::new(),
        }))
    }

    /// Takes the due acknowledgement, if any, as a KEEPALIVE (R = 0).
    pub(crate) fn take_ack(&mut self) -> Option<Frame> {
        if !self.ack_due {
            return None;
        }
        self.ack_due = false;
        self.acked = self.implied;
        Some(Frame::Keepalive(Keepalive {
            respond: false,
            last_received_position: self.implied,
            data: bytes::Bytes::new(),
        }))
    }

    /// Stamps an outgoing KEEPALIVE with the implied position.
    pub(crate) fn stamp(&mut self, k: &mut Keepalive) {
        k.last_received_position = self.implied;
        self.acked = self.implied;
        self.ack_due = false;
    }

    /// Drops frames before `position` and returns the rest for
    /// retransmission, if `position` is one this side can resume from: a
    /// frame boundary not before the oldest frame still stored and not
    /// past the last frame sent.
    fn replay_from(&mut self, position: u64) -> Result<Vec<Frame>, String> {
        let first = self.first_available();
        if position < first || position > self.sent {
            return Err(format!(
                "the peer needs frames from position {position}; this side has {first}..{}",
                self.sent
            ));
        }
        self.release(position);
        if self.first_available() != position {
            return Err(format!("position {position} is not on a frame boundary"));
        }
        Ok(self.store.iter().map(|(_, _, f)| f.clone()).collect())
    }

    /// The client's RESUME for this state.
    pub(crate) fn resume_frame(&self, token: bytes::Bytes) -> Resume {
        Resume {
            version: crate::frame::Version::V1_0,
            resume_token: token,
            last_received_server_position: self.implied,
            first_available_client_position: self.first_available(),
        }
    }

    /// Server: checks a client's RESUME against this session
    /// (rsocket-protocol.md §9.3). On success the frames to send, in
    /// order: RESUME_OK, then every stored frame the client has not
    /// received.
    pub(crate) fn server_resume(&mut self, resume: &Resume) -> Result<Vec<Frame>, String> {
        if resume.first_available_client_position > self.implied {
            return Err(format!(
                "this side received up to position {} but the client can resend only from {}",
                self.implied, resume.first_available_client_position
            ));
        }
        let replay = self.replay_from(resume.last_received_server_position)?;
        let mut out = Vec::with_capacity(replay.len() + 1);
        out.push(Frame::ResumeOk(ResumeOk {
            last_received_client_position: self.implied,
        }));
        out.extend(replay);
        self.acked = self.implied;
        self.ack_due = false;
        Ok(out)
    }

    /// Client: applies the server's RESUME_OK; returns the stored frames to
    /// send again.
    pub(crate) fn client_resumed(
        &mut self,
        last_received_client: u64,
    ) -> Result<Vec<Frame>, String> {
        let replay = self.replay_from(last_received_client)?;
        self.acked = self.implied;
        self.ack_due = false;
        Ok(replay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{ErrorCode, ErrorFrame, PayloadFrame, StreamId};
    use crate::Payload;

    fn item(data: &'static str) -> Frame {
        let id = StreamId::new(1).expect("id");
        Frame::Payload(PayloadFrame::next(id, Payload::from(data)))
    }

    fn send(s: &mut ResumeState, f: &Frame) -> u64 {
        let len = f.encoded_len();
        s.record_sent(f, len);
        len as u64
    }

    #[test]
    fn only_stream_frames_have_positions() {
        assert!(is_resumable(&item("x")));
        let id = StreamId::new(3).expect("id");
        assert!(is_resumable(&Frame::Error(ErrorFrame::new(
            Some(id),
            ErrorCode::APPLICATION_ERROR,
            "e"
        ))));
        assert!(!is_resumable(&Frame::Error(ErrorFrame::new(
            None,
            ErrorCode::CONNECTION_ERROR,
            "e"
        ))));
        assert!(!is_resumable(&Frame::Keepalive(Keepalive {
            respond: true,
            last_received_position: 0,
            data: bytes::Bytes::new(),
        })));
    }

    #[test]
    fn release_drops_whole_frames_only() {
        let mut s = ResumeState::new(1 << 20);
        let a = send(&mut s, &item("a"));
        let b = send(&mut s, &item("bb"));
        assert_eq!(s.sent(), a + b);
        // Inside the second frame: only the first goes.
        assert!(s.release(a + 1));
        assert_eq!(s.first_available(), a);
        assert_eq!(s.bytes(), b as usize);
        // Beyond what was sent: ignored.
        assert!(!s.release(a + b + 1));
        assert!(s.release(a + b));
        assert_eq!(s.bytes(), 0);
        assert_eq!(s.first_available(), a + b);
    }

    #[test]
    fn the_store_has_room_for_one_frame_past_the_cap_when_empty() {
        let mut s = ResumeState::new(10);
        assert!(s.has_room(100));
        send(&mut s, &item("0123456789"));
        assert!(!s.has_room(1));
    }

    #[test]
    fn resume_replays_from_a_frame_boundary_and_refuses_others() {
        let mut s = ResumeState::new(1 << 20);
        let a = send(&mut s, &item("a"));
        let _b = send(&mut s, &item("bb"));
        s.record_received(40);
        let ok = |pos| Resume {
            version: crate::frame::Version::V1_0,
            resume_token: bytes::Bytes::from_static(b"t"),
            last_received_server_position: pos,
            first_available_client_position: 0,
        };
        assert!(s.server_resume(&ok(a + 1)).is_err(), "inside a frame");
        let frames = s.server_resume(&ok(a)).expect("boundary");
        assert_eq!(
            frames[0],
            Frame::ResumeOk(ResumeOk {
                last_received_client_position: 40
            })
        );
        assert_eq!(frames[1..], [item("bb")]);
        // `a` was released by that resume: it can no longer be replayed.
        assert!(s.client_resumed(0).is_err());
        let mut gap = ok(a);
        gap.first_available_client_position = 41;
        assert!(
            s.server_resume(&gap).is_err(),
            "client cannot resend 40..41"
        );
    }

    #[test]
    fn a_full_store_asks_once_until_the_peer_reports_progress() {
        let mut s = ResumeState::new(10);
        let a = send(&mut s, &item("0123456789"));
        s.record_received(7);
        match s.solicit() {
            Some(Frame::Keepalive(k)) => {
                assert!(k.respond, "a question");
                assert_eq!(k.last_received_position, 7);
            }
            other => panic!("expected KEEPALIVE, got {other:?}"),
        }
        assert!(s.solicit().is_none(), "one question at a time");
        assert!(s.peer_reported(0));
        assert!(s.solicit().is_none(), "a stale answer: not asked again");
        assert!(s.peer_reported(a));
        let b = send(&mut s, &item("0123456789"));
        assert!(s.solicit().is_some(), "answered: may ask again");
        s.new_transport();
        assert!(s.solicit().is_some(), "asked on a transport now gone");
        assert!(s.peer_reported(a + b));
    }

    #[test]
    fn acknowledgement_is_due_every_quarter_of_the_cap() {
        let mut s = ResumeState::new(400);
        assert!(!s.record_received(99));
        assert!(s.take_ack().is_none());
        assert!(s.record_received(1));
        match s.take_ack() {
            Some(Frame::Keepalive(k)) => {
                assert!(!k.respond);
                assert_eq!(k.last_received_position, 100);
            }
            other => panic!("expected KEEPALIVE, got {other:?}"),
        }
        assert!(!s.record_received(99));
        // A large cap still acknowledges every 256 KiB.
        let mut big = ResumeState::new(1 << 30);
        assert!(big.record_received(ACK_EVERY_MAX as usize));
    }
}
