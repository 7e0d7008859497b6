//! Two connections driven against each other over an in-memory link, with a
//! fake clock: the end-to-end counterpart of [`super::harness`].
//!
//! A [`Pair`] holds a client [`Harness`] and a server [`Harness`]. Between
//! them is a link with one wire per direction. A *step* of the link does
//! what the two tokio drivers would do in one round:
//!
//! 1. each side's writer takes queued frames ([`Harness::transmit`]) onto its
//!    wire, up to the step's byte budget and the room left on the wire
//!    ([`Link::in_flight_bytes`], the socket buffers);
//! 2. a side that has closed and has nothing left to write closes its end
//!    of the wire;
//! 3. each side's reader hands the frames on its inbound wire to its
//!    connection, in order (every other one as bytes read in place,
//!    [`Harness::wire_in`], the others as values, [`Harness::frame_in`]),
//!    up to the byte budget,
//!    and only while the connection reads ([`Harness::can_read`]); once the
//!    wire is empty and the other end has closed it, the connection sees
//!    the transport close ([`Harness::transport_closed`]).
//!
//! The client's SETUP is taken off the wire by the link (an acceptor's job:
//! the server [`Harness`] starts established) and kept in [`Pair::setup`].
//!
//! Nothing moves by itself: the test calls [`Pair::step`] (or
//! [`Pair::settle`], which steps until no frame moves) and moves the clock
//! with [`Pair::advance`] (time passes over a live link: every deadline on
//! the way fires in order, and the link settles after each),
//! [`Pair::jump`] (the clock leaps, one tick on each side, nothing moves)
//! or [`Pair::fire_deadline`]. The link can stall ([`Pair::stall`]: nothing
//! moves until [`Pair::unstall`], which is how keepalive timeouts are
//! provoked) or drop ([`Pair::drop_link`]: both sides see the transport
//! close).
//!
//! Requests for the responders are not dispatched: the test takes them with
//! [`Pair::events`] and plays the responder through the side's
//! [`Harness`] ([`Pair::client`], [`Pair::server`]).
//!
//! The pair uses only the harness's API, so it runs whatever the core
//! inside it is. Not part of the supported API.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::harness::{Event, Harness};
use crate::config::{Config, SetupParams};
use crate::error::ConnectionError;
use crate::frame::{Frame, Setup};

/// Steps [`Pair::settle`] allows before it decides the link never quiets.
pub const SETTLE_STEPS: usize = 10_000;

/// Deadlines [`Pair::advance`] fires before it decides a timer is stuck.
const MAX_TIMER_FIRES: usize = 1_000_000;

/// One end of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// The side that sent SETUP.
    Client,
    /// The side that accepted it.
    Server,
}

impl Peer {
    /// Both ends, client first.
    pub const BOTH: [Self; 2] = [Self::Client, Self::Server];

    /// The other end.
    pub fn other(self) -> Self {
        match self {
            Self::Client => Self::Server,
            Self::Server => Self::Client,
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Client => 0,
            Self::Server => 1,
        }
    }
}

/// How much the link carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// Bytes each writer takes and each reader hands over per step, in each
    /// direction. At least one frame moves when any waits (as with
    /// [`Harness::transmit`]), so a frame larger than the budget still
    /// passes, alone.
    pub step_bytes: usize,
    /// Bytes that may be on a wire at once (the socket buffers of both
    /// ends). A writer takes nothing while this much is in flight, so what
    /// the reader does not read backs up into the writer's outbound queue.
    /// The last frame taken may overshoot it.
    pub in_flight_bytes: usize,
}

impl Link {
    /// A link that moves everything at once.
    pub const UNLIMITED: Self = Self {
        step_bytes: usize::MAX,
        in_flight_bytes: usize::MAX,
    };
}

impl Default for Link {
    fn default() -> Self {
        Self::UNLIMITED
    }
}

/// How a [`Pair`] is built.
#[derive(Debug, Clone)]
pub struct PairConfig {
    /// The client's configuration (its `lease` makes the client lease).
    pub client: Config,
    /// The server's configuration (its `lease` makes the server lease;
    /// it must agree with the client's).
    pub server: Config,
    /// The client's KEEPALIVE interval, announced in SETUP.
    pub keepalive: Duration,
    /// The max lifetime both sides use, announced in SETUP.
    pub max_lifetime: Duration,
    /// What the link carries per step.
    pub link: Link,
}

impl PairConfig {
    /// Both sides with `config`, the default keepalive timing of
    /// [`SetupParams`] and an unlimited link.
    pub fn both(config: Config) -> Self {
        let setup = SetupParams::default();
        Self {
            client: config.clone(),
            server: config,
            keepalive: setup.keepalive_interval,
            max_lifetime: setup.max_lifetime,
            link: Link::UNLIMITED,
        }
    }

    /// With this keepalive interval and max lifetime.
    pub fn keepalive(mut self, interval: Duration, max_lifetime: Duration) -> Self {
        self.keepalive = interval;
        self.max_lifetime = max_lifetime;
        self
    }

    /// With this link.
    pub fn link(mut self, link: Link) -> Self {
        self.link = link;
        self
    }
}

impl Default for PairConfig {
    fn default() -> Self {
        Self::both(Config::default())
    }
}

/// A frame a connection read from the link.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The side that sent it.
    pub from: Peer,
    /// The fake clock when it was read.
    pub at: Instant,
    /// The frame.
    pub frame: Frame,
}

/// Whether the link moves frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    Up,
    Stalled,
    Down,
}

/// One direction of the link.
#[derive(Debug, Default)]
struct Wire {
    frames: VecDeque<Frame>,
    bytes: usize,
    /// The writer closed its end (closed, with nothing left to write).
    closed: bool,
    /// The reader has seen the close.
    close_seen: bool,
}

/// Two connections and the link between them. See the module docs.
#[derive(Debug)]
pub struct Pair {
    client: Harness,
    server: Harness,
    start: Instant,
    now: Instant,
    link: Link,
    state: LinkState,
    /// Indexed by the sending side.
    wires: [Wire; 2],
    setup: Option<Setup>,
    log: Vec<Delivery>,
}

impl Pair {
    /// A client that has queued its SETUP and a server that has accepted
    /// it, at a fake time zero; nothing has moved yet.
    ///
    /// # Panics
    ///
    /// When one side leases and the other does not (a real server refuses
    /// such a SETUP).
    pub fn new(config: PairConfig) -> Self {
        assert_eq!(
            config.client.lease.is_some(),
            config.server.lease.is_some(),
            "both sides must agree on leasing"
        );
        let start = Instant::now();
        let client = Harness::client(config.client, config.keepalive, config.max_lifetime, start);
        let server = Harness::server(config.server, config.max_lifetime, start);
        Self {
            client,
            server,
            start,
            now: start,
            link: config.link,
            state: LinkState::Up,
            wires: [Wire::default(), Wire::default()],
            setup: None,
            log: Vec::new(),
        }
    }

    // ----- the two sides ------------------------------------------------

    /// The client's connection, to command and inspect.
    pub fn client(&mut self) -> &mut Harness {
        &mut self.client
    }

    /// The server's connection, to command and inspect.
    pub fn server(&mut self) -> &mut Harness {
        &mut self.server
    }

    /// One side's connection.
    pub fn peer(&mut self, peer: Peer) -> &mut Harness {
        match peer {
            Peer::Client => &mut self.client,
            Peer::Server => &mut self.server,
        }
    }

    fn peer_ref(&self, peer: Peer) -> &Harness {
        match peer {
            Peer::Client => &self.client,
            Peer::Server => &self.server,
        }
    }

    /// Requests for `peer`'s responder, in the order they were read.
    pub fn events(&mut self, peer: Peer) -> Vec<Event> {
        self.peer(peer).events()
    }

    /// Why `peer`'s connection ended, once it has.
    pub fn closed(&self, peer: Peer) -> Option<ConnectionError> {
        self.peer_ref(peer).closed()
    }

    /// Both connections' own bookkeeping agrees with their contents; `Err`
    /// names the side and the first mismatch.
    pub fn check_consistency(&self) -> Result<(), String> {
        for peer in Peer::BOTH {
            self.peer_ref(peer)
                .check_consistency()
                .map_err(|e| format!("{peer:?}: {e}"))?;
        }
        Ok(())
    }

    // ----- the link -------------------------------------------------------

    /// The SETUP the client sent, once the link has carried it.
    pub fn setup(&self) -> Option<&Setup> {
        self.setup.as_ref()
    }

    /// Every frame a connection has read so far, in order (the SETUP
    /// excepted).
    pub fn log(&self) -> &[Delivery] {
        &self.log
    }

    /// Takes the frames read since the last call (see [`Pair::log`]).
    pub fn take_log(&mut self) -> Vec<Delivery> {
        std::mem::take(&mut self.log)
    }

    /// What the link carries per step.
    pub fn link(&self) -> Link {
        self.link
    }

    /// Changes what the link carries per step.
    pub fn set_link(&mut self, link: Link) {
        self.link = link;
    }

    /// Frames stop moving in both directions (what is on the wires stays
    /// there) until [`Pair::unstall`].
    pub fn stall(&mut self) {
        if self.state == LinkState::Up {
            self.state = LinkState::Stalled;
        }
    }

    /// A stalled link moves frames again.
    pub fn unstall(&mut self) {
        if self.state == LinkState::Stalled {
            self.state = LinkState::Up;
        }
    }

    /// The link is stalled.
    pub fn is_stalled(&self) -> bool {
        self.state == LinkState::Stalled
    }

    /// The transport breaks: what is on the wires is lost and both sides
    /// see the transport close. Nothing moves afterwards.
    pub fn drop_link(&mut self) {
        if self.state == LinkState::Down {
            return;
        }
        self.state = LinkState::Down;
        for wire in &mut self.wires {
            *wire = Wire {
                closed: true,
                close_seen: true,
                ..Wire::default()
            };
        }
        self.client.transport_closed();
        self.server.transport_closed();
    }

    /// The link has been dropped.
    pub fn is_down(&self) -> bool {
        self.state == LinkState::Down
    }

    /// Frames and bytes on the wire from `from`, not yet read.
    pub fn in_flight(&self, from: Peer) -> (usize, usize) {
        let wire = &self.wires[from.index()];
        (wire.frames.len(), wire.bytes)
    }

    /// One step of the link with its configured budget (see the module
    /// docs); returns how many frames (and transport closes) moved.
    pub fn step(&mut self) -> usize {
        self.step_with(self.link.step_bytes)
    }

    /// One step with a byte budget of `bytes` for each writer and each
    /// reader (0 moves nothing).
    pub fn step_with(&mut self, bytes: usize) -> usize {
        if self.state != LinkState::Up {
            return 0;
        }
        let mut moved = 0;
        for from in Peer::BOTH {
            moved += self.write(from, bytes);
        }
        for from in Peer::BOTH {
            let h = self.peer_ref(from);
            if h.closed().is_some() && h.stats().queued_out_bytes == 0 {
                self.wires[from.index()].closed = true;
            }
        }
        for from in Peer::BOTH {
            moved += self.read(from.other(), bytes);
        }
        moved
    }

    /// Steps until a step moves nothing, at most `max_steps` times: `Some`
    /// with the number of steps that moved something, `None` if the link
    /// was still moving after `max_steps`.
    pub fn run(&mut self, max_steps: usize) -> Option<usize> {
        (0..max_steps).find(|_| self.step() == 0)
    }

    /// Steps until nothing moves (a stalled or dropped link moves nothing);
    /// returns the number of steps that moved something.
    ///
    /// # Panics
    ///
    /// When the link still moves after [`SETTLE_STEPS`] steps.
    pub fn settle(&mut self) -> usize {
        match self.run(SETTLE_STEPS) {
            Some(steps) => steps,
            None => panic!("the link still moves after {SETTLE_STEPS} steps"),
        }
    }

    fn write(&mut self, from: Peer, budget: usize) -> usize {
        let wire = &self.wires[from.index()];
        if wire.closed {
            return 0;
        }
        let room = self
            .link
            .in_flight_bytes
            .saturating_sub(wire.bytes)
            .min(budget);
        if room == 0 {
            return 0;
        }
        let frames = self.peer(from).transmit(room);
        let wire = &mut self.wires[from.index()];
        let n = frames.len();
        for frame in frames {
            wire.bytes += frame.encoded_len();
            wire.frames.push_back(frame);
        }
        n
    }

    fn read(&mut self, to: Peer, budget: usize) -> usize {
        let from = to.other();
        let mut moved = 0;
        let mut taken = 0usize;
        while taken < budget {
            let wire = &self.wires[from.index()];
            let Some(front) = wire.frames.front() else {
                break;
            };
            let len = front.encoded_len();
            let acceptor =
                from == Peer::Client && self.setup.is_none() && matches!(front, Frame::Setup(_));
            let closed = self.peer_ref(to).closed().is_some();
            if !acceptor && !closed && !self.peer_ref(to).can_read() {
                break;
            }
            let wire = &mut self.wires[from.index()];
            let Some(frame) = wire.frames.pop_front() else {
                break;
            };
            wire.bytes -= len;
            taken = taken.saturating_add(len);
            moved += 1;
            if acceptor {
                if let Frame::Setup(setup) = frame {
                    self.setup = Some(*setup);
                }
                continue;
            }
            if closed {
                // A closed connection reads and ignores what still comes.
                continue;
            }
            self.log.push(Delivery {
                from,
                at: self.now,
                frame: frame.clone(),
            });
            // Every other frame is read in place from its bytes, as from a
            // byte-stream transport; the others as frame values.
            let read = if self.log.len().is_multiple_of(2) {
                self.peer(to).wire_in(frame)
            } else {
                self.peer(to).frame_in(frame)
            };
            debug_assert!(read, "a frame refused after can_read");
        }
        let wire = &self.wires[from.index()];
        if wire.frames.is_empty() && wire.closed && !wire.close_seen {
            let h = self.peer_ref(to);
            if h.closed().is_some() || h.can_read() {
                self.wires[from.index()].close_seen = true;
                self.peer(to).transport_closed();
                moved += 1;
            }
        }
        moved
    }

    // ----- the clock ------------------------------------------------------

    /// The fake clock.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Time since the pair was built.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The earlier of the two sides' deadlines.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.client.deadline(), self.server.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Moves the clock to `now` (never backwards) on both sides; each runs
    /// what is due.
    fn set_clock(&mut self, now: Instant) {
        self.now = self.now.max(now);
        self.client.advance(self.now);
        self.server.advance(self.now);
    }

    /// The clock leaps by `d`: each side runs once what is due then
    /// (deadlines on the way are not visited one by one) and nothing moves
    /// on the link.
    pub fn jump(&mut self, d: Duration) {
        self.set_clock(self.now + d);
    }

    /// Moves the clock to the earlier deadline of the two sides (not
    /// backwards) and runs what is due; nothing moves on the link. Returns
    /// the deadline, `None` when neither side has one.
    pub fn fire_deadline(&mut self) -> Option<Instant> {
        let t = self.deadline()?;
        self.set_clock(t);
        Some(t)
    }

    /// Time passes by `d` over the link as it is: the link settles, then
    /// every deadline up to `now + d` fires in order with the link settling
    /// after each one, and the clock ends at `now + d` (a live link keeps
    /// up, a stalled one moves nothing).
    ///
    /// # Panics
    ///
    /// When the link never settles (see [`Pair::settle`]) or a deadline
    /// keeps firing without moving on.
    pub fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        self.settle();
        let mut fired = 0usize;
        while let Some(t) = self.deadline().filter(|t| *t <= target) {
            fired += 1;
            assert!(
                fired <= MAX_TIMER_FIRES,
                "a deadline keeps firing at {:?} without moving on",
                t - self.start
            );
            self.set_clock(t);
            self.settle();
        }
        self.set_clock(target);
        self.settle();
    }
}
