//! A fault-injection TCP relay on loopback, for resumption tests.
//!
//! The proxy listens on `127.0.0.1:0` and relays every accepted connection
//! to an upstream address. The test controls it:
//!
//! * [`FaultProxy::cut_after`]: each connection relayed from now on is
//!   dropped (both sockets closed) once it has relayed that many bytes in
//!   total, in both directions together. The cut falls wherever the byte
//!   count says, usually in the middle of a frame;
//! * [`FaultProxy::cut`]: drops every connection relayed now;
//! * [`FaultProxy::stall`] / [`FaultProxy::stall_upstream`]: the
//!   connections open now stop forwarding (both directions, or only client
//!   to server); bytes are held and nothing is closed: a dead link that
//!   only a keepalive timeout notices. Later connections are not stalled;
//!   [`FaultProxy::unstall`] restarts the stalled ones;
//! * [`FaultProxy::refuse`]: new connections are accepted and closed at
//!   once (a server that cannot be reached);
//! * [`FaultProxy::split_writes`]: forwards in chunks of at most `n` bytes,
//!   yielding between them, so that frames arrive in pieces.
//!
//! Nothing here sleeps; the relays run on tasks that stop with the proxy.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Default)]
struct Control {
    /// Bytes after which a new connection is dropped (0: never).
    cut_after: AtomicU64,
    /// Connections still to be given the `cut_after` budget.
    cuts_left: AtomicUsize,
    refuse: AtomicBool,
    split: AtomicUsize,
    accepted: AtomicUsize,
    cuts: AtomicUsize,
}

/// See the module docs.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    control: Arc<Control>,
    /// Incremented to cut every live connection.
    generation: watch::Sender<u64>,
    stalled: watch::Sender<Stall>,
    task: JoinHandle<()>,
}

/// Which connections are stalled: those numbered up to `upto`, in the
/// directions flagged.
#[derive(Debug, Clone, Copy, Default)]
struct Stall {
    upto: usize,
    up: bool,
    down: bool,
}

impl FaultProxy {
    /// Starts relaying to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let control = Arc::new(Control::default());
        let (generation, _) = watch::channel(0u64);
        let (stalled, _) = watch::channel(Stall::default());
        let task = tokio::spawn(accept_loop(
            listener,
            upstream,
            control.clone(),
            generation.clone(),
            stalled.clone(),
        ));
        Ok(Self {
            addr,
            control,
            generation,
            stalled,
            task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops each connection relayed from now on after `bytes` bytes (both
    /// directions together); 0 turns it off.
    pub fn cut_after(&self, bytes: u64) {
        self.cut_each(bytes, usize::MAX);
    }

    /// Like [`FaultProxy::cut_after`] for the next `times` connections only.
    pub fn cut_each(&self, bytes: u64, times: usize) {
        self.control.cut_after.store(bytes, Ordering::SeqCst);
        self.control.cuts_left.store(times, Ordering::SeqCst);
    }

    /// Drops every connection relayed now.
    pub fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Stops forwarding, both directions, on the connections open now.
    pub fn stall(&self) {
        let upto = self.accepted();
        self.stalled.send_replace(Stall {
            upto,
            up: true,
            down: true,
        });
    }

    /// Stops forwarding client-to-server bytes on the connections open now.
    pub fn stall_upstream(&self) {
        let upto = self.accepted();
        self.stalled.send_replace(Stall {
            upto,
            up: true,
            down: false,
        });
    }

    /// Restarts forwarding on stalled connections.
    pub fn unstall(&self) {
        self.stalled.send_replace(Stall::default());
    }

    /// Closes new connections at once (true) or relays them (false).
    pub fn refuse(&self, refuse: bool) {
        self.control.refuse.store(refuse, Ordering::SeqCst);
    }

    /// Forwards in chunks of at most `n` bytes (0: as read).
    pub fn split_writes(&self, n: usize) {
        self.control.split.store(n, Ordering::SeqCst);
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> usize {
        self.control.accepted.load(Ordering::SeqCst)
    }

    /// Connections dropped by `cut_after` so far.
    pub fn cuts(&self) -> usize {
        self.control.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    control: Arc<Control>,
    generation: watch::Sender<u64>,
    stalled: watch::Sender<Stall>,
) {
    while let Ok((client, _)) = listener.accept().await {
        let id = control.accepted.fetch_add(1, Ordering::SeqCst) + 1;
        if control.refuse.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        // Subscribed before connecting upstream: a cut from now on
        // covers this connection.
        let mut gen_rx = generation.subscribe();
        let Ok(server) = TcpStream::connect(upstream).await else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let planned = control
            .cuts_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let budget = match control.cut_after.load(Ordering::SeqCst) {
            n if n > 0 && planned => Some(Arc::new(AtomicU64::new(n))),
            _ => None,
        };
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        let control = control.clone();
        let stall_rx = stalled.subscribe();
        tokio::spawn(async move {
            let up = pump(
                cr,
                sw,
                budget.clone(),
                control.clone(),
                (id, true, stall_rx.clone()),
            );
            let down = pump(sr, cw, budget, control.clone(), (id, false, stall_rx));
            // Whichever ends first (EOF, error, budget, cut) ends both.
            tokio::select! {
                () = up => {}
                () = down => {}
                _ = gen_rx.changed() => {}
            }
            // Dropping the halves closes both sockets.
        });
    }
}

/// Copies one direction until EOF, an error, or the shared budget runs
/// out (then the whole connection is dropped by returning from both).
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    budget: Option<Arc<AtomicU64>>,
    control: Arc<Control>,
    (id, upstream, mut stalled): (usize, bool, watch::Receiver<Stall>),
) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut chunk = &buf[..n];
        let mut last = false;
        if let Some(b) = &budget {
            // Take this chunk's share of the budget atomically, so that
            // exactly one direction makes the cut (and counts it).
            let taken = b.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                (left > 0).then(|| left.saturating_sub(n as u64))
            });
            let Ok(left) = taken else {
                return;
            };
            if n as u64 >= left {
                chunk = &chunk[..left as usize];
                last = true;
                control.cuts.fetch_add(1, Ordering::SeqCst);
            }
        }
        let is_stalled = |s: &Stall| id <= s.upto && if upstream { s.up } else { s.down };
        while is_stalled(&stalled.borrow_and_update()) {
            if stalled.changed().await.is_err() {
                return;
            }
        }
        let split = control.split.load(Ordering::SeqCst);
        let step = if split == 0 { chunk.len() } else { split };
        for piece in chunk.chunks(step.max(1)) {
            if to.write_all(piece).await.is_err() {
                return;
            }
            if split != 0 {
                tokio::task::yield_now().await;
            }
        }
        if last {
            return;
        }
    }
}
