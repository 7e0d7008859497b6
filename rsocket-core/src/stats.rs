//! Engine counters: what a connection holds right now and what it has
//! moved so far.
//!
//! A snapshot is cheap (one lock of the connection state and a walk over its
//! open streams, no allocation), so tests and operators can poll it:
//!
//! * per connection: [`Requester::stats`](crate::Requester::stats), on
//!   either side of the connection;
//! * per server: [`Server::stats_handle`](crate::Server::stats_handle)
//!   gives a [`ServerStatsHandle`](crate::runtime::ServerStatsHandle) whose
//!   `snapshot()` sums every connection the server is serving.
//!
//! The engine also logs a connection's counters with `tracing` at debug
//! level when it closes, when its reading pauses or resumes, and (for a
//! server) when shutdown begins.
//!
//! Gauges (`open_streams` … `read_paused`) describe the present; the
//! `frames_*` and `bytes_*` counters only grow. Byte counts are encoded
//! frame bytes without the transport's framing (no TCP length prefix, no
//! WebSocket header).

/// A snapshot of one connection's engine counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Streams open in either direction.
    pub open_streams: usize,
    /// Streams the peer opened that are still open, plus its fragmented
    /// requests still being reassembled: what
    /// `Config::max_concurrent_inbound_streams` limits.
    pub inbound_streams: usize,
    /// Of `inbound_streams`, requests whose fragments are still arriving.
    pub partial_requests: usize,
    /// Encoded bytes queued for the writer (`Config::max_outbound_queue_bytes`
    /// applies to it).
    pub queued_out_bytes: usize,
    /// Payload bytes received and waiting for their consumers (each
    /// stream's share is bounded by the credit it granted).
    pub queued_in_bytes: usize,
    /// Bytes held by inbound reassembly (`Config::max_reassembly_bytes`).
    pub reassembly_bytes: usize,
    /// Responder work running: fire-and-forget and metadata-push handlers,
    /// plus request handlers and stream producers that have not finished.
    pub handlers_running: usize,
    /// Outbound stream halves that used all their credit and wait for
    /// REQUEST_N (their producers are not polled meanwhile).
    pub producers_awaiting_credit: usize,
    /// The driver reads no frames at the moment (see the README's "Limits
    /// and defaults").
    pub read_paused: bool,
    /// The connection has ended.
    pub closed: bool,
    /// Frames received.
    pub frames_in: u64,
    /// Bytes of frames received.
    pub bytes_in: u64,
    /// Frames handed to the transport.
    pub frames_out: u64,
    /// Bytes of frames handed to the transport.
    pub bytes_out: u64,
    /// Requests from the peer answered `ERROR[REJECTED]` because they
    /// exceeded the lease this side granted (see [`crate::lease`]).
    pub lease_rejected: u64,
    /// Fire-and-forget requests from the peer dropped, unanswered, because
    /// they exceeded the lease this side granted.
    pub lease_dropped_fnf: u64,
    /// Resumable connections: bytes of sent frames kept until the peer
    /// acknowledges them (`Config::resume_store_bytes` caps it).
    pub resume_store_bytes: usize,
}

/// A snapshot of a server's counters: its connections, and the sum of their
/// [`ConnectionStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Connections accepted whose SETUP has not been handled yet.
    pub pending_setup: usize,
    /// Established connections still being served.
    pub connections: usize,
    /// Connections accepted since the server started.
    pub connections_accepted: u64,
    /// Of `connections`, those whose reading is paused.
    pub paused_connections: usize,
    /// Sum of `open_streams` over the connections.
    pub open_streams: usize,
    /// Sum of `inbound_streams`.
    pub inbound_streams: usize,
    /// Sum of `partial_requests`.
    pub partial_requests: usize,
    /// Sum of `queued_out_bytes`.
    pub queued_out_bytes: usize,
    /// Sum of `queued_in_bytes`.
    pub queued_in_bytes: usize,
    /// Sum of `reassembly_bytes`.
    pub reassembly_bytes: usize,
    /// Sum of `handlers_running`.
    pub handlers_running: usize,
    /// Sum of `producers_awaiting_credit`.
    pub producers_awaiting_credit: usize,
    /// Frames received, over all connections (closed ones included).
    pub frames_in: u64,
    /// Bytes received, over all connections.
    pub bytes_in: u64,
    /// Frames sent, over all connections.
    pub frames_out: u64,
    /// Bytes sent, over all connections.
    pub bytes_out: u64,
    /// Requests rejected for exceeding the lease, over all connections.
    pub lease_rejected: u64,
    /// Fire-and-forget requests dropped for exceeding the lease, over all
    /// connections.
    pub lease_dropped_fnf: u64,
}

impl ServerStats {
    /// Adds one open connection's gauges and counters.
    pub(crate) fn add_open(&mut self, c: &ConnectionStats) {
        self.connections += 1;
        self.paused_connections += usize::from(c.read_paused);
        self.open_streams += c.open_streams;
        self.inbound_streams += c.inbound_streams;
        self.partial_requests += c.partial_requests;
        self.queued_out_bytes += c.queued_out_bytes;
        self.queued_in_bytes += c.queued_in_bytes;
        self.reassembly_bytes += c.reassembly_bytes;
        self.handlers_running += c.handlers_running;
        self.producers_awaiting_credit += c.producers_awaiting_credit;
        self.add_traffic(c);
    }

    /// Adds a connection's frame and byte counters only.
    pub(crate) fn add_traffic(&mut self, c: &ConnectionStats) {
        self.frames_in += c.frames_in;
        self.bytes_in += c.bytes_in;
        self.frames_out += c.frames_out;
        self.bytes_out += c.bytes_out;
        self.lease_rejected += c.lease_rejected;
        self.lease_dropped_fnf += c.lease_dropped_fnf;
    }
}
