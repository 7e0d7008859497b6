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
