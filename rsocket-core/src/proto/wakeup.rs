//! Which waiting tasks the runtime must wake after a call into the
//! connection.
//!
//! The state machine holds no [`std::task::Waker`]. A call that cannot make
//! progress returns `Poll::Pending` and marks the waiter (a stream half's
//! `waiting` flag, or one of the connection-wide ones); when the condition
//! it waits for changes, the connection records a [`Wakeup`] and clears the
//! mark. The runtime keeps the wakers, keyed the same way, and drains the
//! wake-ups after each call, waking the tasks once it has released its
//! lock. A stream's wake-up is recorded at most once per wait, so the list
//! is bounded by the number of open stream halves. A half released while
//! marked gets its wake-up too, so that no waker outlives its stream in the
//! runtime.

/// A task (or set of tasks) to wake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wakeup {
    /// The consumer of the stream's inbound half: items or its end arrived.
    Recv(u32),
    /// The producer of the stream's outbound half: credit arrived, or it
    /// must stop.
    Send(u32),
    /// The connection's own task: frames to write, reading may resume, a
    /// drain finished, a transport attached.
    Driver,
    /// Tasks that waited for room in the outbound queue.
    Space,
    /// Tasks that waited for a lease.
    Lease,
    /// Every waiting task: the connection ended.
    All,
}

/// Wake-ups recorded since the runtime last drained them.
#[derive(Debug, Default)]
pub(crate) struct Wakeups {
    streams: Vec<Wakeup>,
    /// `DRIVER | SPACE | LEASE | ALL`.
    flags: u8,
}

const DRIVER: u8 = 1;
const SPACE: u8 = 2;
const LEASE: u8 = 4;
const ALL: u8 = 8;

impl Wakeups {
    /// Something is recorded.
    #[inline]
    pub(crate) fn any(&self) -> bool {
        self.flags != 0 || !self.streams.is_empty()
    }

    /// The driver's wake-up is the only one recorded.
    #[inline]
    pub(crate) fn driver_only(&self) -> bool {
        self.flags == DRIVER && self.streams.is_empty()
    }

    #[inline]
    pub(crate) fn stream(&mut self, w: Wakeup) {
        self.streams.push(w);
    }

    #[inline]
    pub(crate) fn driver(&mut self) {
        self.flags |= DRIVER;
    }

    pub(crate) fn space(&mut self) {
        self.flags |= SPACE;
    }

    pub(crate) fn lease(&mut self) {
        self.flags |= LEASE;
    }

    /// Every task: stream wake-ups recorded so far are covered.
    pub(crate) fn all(&mut self) {
        self.flags |= ALL;
        self.streams.clear();
    }

    /// Forgets a recorded driver wake-up (the driver itself is running
    /// and checks the state before it waits).
    #[inline]
    pub(crate) fn clear_driver(&mut self) {
        self.flags &= !DRIVER;
    }

    /// Hands every recorded wake-up to `f` and clears them.
    #[inline]
    pub(crate) fn drain(&mut self, mut f: impl FnMut(Wakeup)) {
        if !self.streams.is_empty() {
            for w in self.streams.drain(..) {
                f(w);
            }
        }
        let flags = std::mem::take(&mut self.flags);
        if flags & ALL != 0 {
            return f(Wakeup::All);
        }
        if flags & DRIVER != 0 {
            f(Wakeup::Driver);
        }
        if flags & SPACE != 0 {
            f(Wakeup::Space);
        }
        if flags & LEASE != 0 {
            f(Wakeup::Lease);
        }
    }
}
