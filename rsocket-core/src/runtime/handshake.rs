//! Transport handshakes (TLS, WebSocket upgrade) run side by side for a
//! listener: each with a timeout, at most a fixed number at once, so that one
//! slow or silent peer never holds up the connections behind it.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tracing::debug;

/// Handshakes in progress for one listener.
pub struct Handshakes<T> {
    pending: FuturesUnordered<BoxFuture<'static, (SocketAddr, io::Result<T>)>>,
    max: usize,
    timeout: Duration,
    what: &'static str,
}

impl<T> fmt::Debug for Handshakes<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshakes")
            .field("what", &self.what)
            .field("pending", &self.pending.len())
            .field("max", &self.max)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<T> Handshakes<T> {
    /// `what` names the handshake in logs and timeout errors ("TLS",
    /// "WebSocket"); `max` is raised to at least 1.
    pub fn new(what: &'static str, max: usize, timeout: Duration) -> Self {
        Self {
            pending: FuturesUnordered::new(),
            max: max.max(1),
            timeout,
            what,
        }
    }

    /// Changes the limits for handshakes started from now on.
    pub fn set_limits(&mut self, max: usize, timeout: Duration) {
        self.max = max.max(1);
        self.timeout = timeout;
    }

    /// Handshakes in progress.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when none is in progress.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

impl<T: Send + 'static> Handshakes<T> {
    /// Accepts connections with `accept` while there is room, starts
    /// `handshake` on each, and returns the next one that finished. Failed or
    /// timed-out handshakes are logged and skipped; an error from `accept`
    /// itself is returned. At the limit no accept waker is registered: a
    /// finishing handshake wakes the task instead.
    pub fn poll_next<C, F, Fut>(
        &mut self,
        cx: &mut Context<'_>,
        mut accept: impl FnMut(&mut Context<'_>) -> Poll<io::Result<(C, SocketAddr)>>,
        mut handshake: F,
    ) -> Poll<Option<io::Result<T>>>
    where
        F: FnMut(C, SocketAddr) -> Fut,
        Fut: Future<Output = io::Result<T>> + Send + 'static,
    {
        loop {
            while self.pending.len() < self.max {
                match accept(cx) {
                    Poll::Ready(Ok((conn, addr))) => {
                        let fut = handshake(conn, addr);
                        self.start(addr, fut);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                    Poll::Pending => break,
                }
            }
            match self.pending.poll_next_unpin(cx) {
                Poll::Ready(Some((_, Ok(t)))) => return Poll::Ready(Some(Ok(t))),
                Poll::Ready(Some((addr, Err(e)))) => {
                    debug!(%addr, error = %e, what = self.what, "handshake failed");
                }
                // Empty (the accept above registered the waker) or waiting.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn start(
        &mut self,
        addr: SocketAddr,
        fut: impl Future<Output = io::Result<T>> + Send + 'static,
    ) {
        let timeout = self.timeout;
        let what = self.what;
        self.pending.push(
            async move {
                let result = match tokio::time::timeout(timeout, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("{what} handshake timed out"),
                    )),
                };
                (addr, result)
            }
            .boxed(),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use tokio::sync::oneshot;

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Polls `h` once with connections 1, 2, 3, ... always ready to accept,
    /// each handshake finishing when its sender (kept in `done`) fires.
    fn poll_once(
        h: &mut Handshakes<u16>,
        accepted: &AtomicUsize,
        done: &Mutex<Vec<oneshot::Sender<()>>>,
    ) -> Poll<Option<io::Result<u16>>> {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        h.poll_next(
            &mut cx,
            |_| {
                let n = accepted.fetch_add(1, Ordering::SeqCst) + 1;
                Poll::Ready(Ok((n as u16, addr(n as u16))))
            },
            |n, _| {
                let (tx, rx) = oneshot::channel();
                done.lock().unwrap().push(tx);
                async move {
                    rx.await.map_err(|_| io::Error::other("dropped"))?;
                    Ok(n)
                }
            },
        )
    }

    #[tokio::test]
    async fn at_the_limit_nothing_more_is_accepted_until_one_finishes() {
        let mut h = Handshakes::new("test", 2, Duration::from_secs(3600));
        let accepted = AtomicUsize::new(0);
        let done = Mutex::new(Vec::new());
        assert!(poll_once(&mut h, &accepted, &done).is_pending());
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "two started, no more");
        assert_eq!(h.len(), 2);
        assert!(poll_once(&mut h, &accepted, &done).is_pending());
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "still at the limit");
        // The second handshake finishes: it is handed out, and room opens.
        let second = done.lock().unwrap().remove(1);
        second.send(()).unwrap();
        match poll_once(&mut h, &accepted, &done) {
            Poll::Ready(Some(Ok(2))) => {}
            other => panic!("expected connection 2, got {other:?}"),
        }
        assert!(poll_once(&mut h, &accepted, &done).is_pending());
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "one more accepted");
        assert_eq!(h.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_handshake_times_out_without_holding_up_others() {
        let mut h: Handshakes<u16> = Handshakes::new("test", 8, Duration::from_secs(10));
        // Connection 1 never finishes its handshake; connection 2 does.
        let mut offered = vec![2u16, 1];
        let stalled = Arc::new(AtomicUsize::new(0));
        let next = futures::future::poll_fn(|cx| {
            h.poll_next(
                cx,
                |_| match offered.pop() {
                    Some(n) => Poll::Ready(Ok((n, addr(n)))),
                    None => Poll::Pending,
                },
                |n, _| {
                    let stalled = stalled.clone();
                    async move {
                        if n == 1 {
                            stalled.fetch_add(1, Ordering::SeqCst);
                            std::future::pending::<()>().await;
                        }
                        Ok(n)
                    }
                },
            )
        });
        let started = tokio::time::Instant::now();
        match next.await {
            Some(Ok(2)) => {}
            other => panic!("expected connection 2, got {other:?}"),
        }
        assert_eq!(started.elapsed(), Duration::ZERO, "not held up by 1");
        assert_eq!(h.len(), 1, "1 still in its handshake");
        // Nothing else comes: 1 times out after 10 s and is dropped.
        let waited = tokio::time::timeout(
            Duration::from_secs(60),
            futures::future::poll_fn(|cx| {
                h.poll_next(cx, |_| Poll::Pending, |n: u16, _| async move { Ok(n) })
            }),
        )
        .await;
        assert!(waited.is_err(), "a timed-out handshake yields nothing");
        assert_eq!(h.len(), 0, "the stalled handshake was dropped");
        assert_eq!(stalled.load(Ordering::SeqCst), 1);
    }
}
