//! The driver writes every ready frame and flushes once: a burst of small
//! frames costs a handful of write calls, not one per frame.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::StreamExt;
use rsocket_core::codec::FrameCodec;
use rsocket_core::{ClientBuilder, Frame, Payload, StreamTransport};
use tokio::io::AsyncWrite;
use tokio_util::codec::FramedRead;

/// Counts `poll_write` calls that wrote something.
struct CountingWriter<W> {
    inner: W,
    writes: Arc<AtomicUsize>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for CountingWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_burst_of_small_frames_takes_few_writes() {
    const BURST: usize = 1000;
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let (r, w) = tokio::io::split(ours);
    let writes = Arc::new(AtomicUsize::new(0));
    let transport = StreamTransport::new(
        r,
        CountingWriter {
            inner: w,
            writes: writes.clone(),
        },
    );
    let requester = ClientBuilder::new().connect(transport).expect("connect");
    // Queue the whole burst before the driver task gets to run.
    for i in 0..BURST {
        requester
            .fire_and_forget(Payload::from(format!("m{i}")))
            .await
            .expect("queued");
    }
    let mut peer = FramedRead::new(theirs, FrameCodec::new());
    // Bounded: the default keepalive (20 s) must not be what flushes the
    // rest of the burst.
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut fnf = 0;
        while fnf < BURST {
            let bytes = peer.next().await.expect("frame").expect("codec");
            if let Frame::RequestFnf(_) = Frame::decode(bytes).expect("decode") {
                fnf += 1;
            }
        }
    })
    .await
    .expect("the whole burst is written without waiting for a timer");
    let n = writes.load(Ordering::SeqCst);
    assert!(n <= 10, "{BURST} frames took {n} writes");
}

/// Regression: producers waiting for outbound-queue space were left waiting
/// (until the next keepalive tick) when the writer stalled on a full socket
/// and then drained its staged frames without looking at the queue again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbound_queue_keeps_draining() {
    const SENDS: usize = 20_000;
    let (ours, theirs) = tokio::io::duplex(4096);
    let (r, w) = tokio::io::split(ours);
    let config = rsocket_core::Config {
        max_outbound_queue_bytes: 2048,
        ..rsocket_core::Config::default()
    };
    let requester = ClientBuilder::new()
        // Keepalive far away: it must not be what unsticks the writer.
        .keepalive(
            std::time::Duration::from_secs(3600),
            std::time::Duration::from_secs(7200),
        )
        .config(config)
        .connect(StreamTransport::new(r, w))
        .expect("connect");
    let reader = tokio::spawn(async move {
        let mut peer = FramedRead::new(theirs, FrameCodec::new());
        let mut fnf = 0;
        while fnf < SENDS {
            let bytes = peer.next().await.expect("frame").expect("codec");
            if let Frame::RequestFnf(_) = Frame::decode(bytes).expect("decode") {
                fnf += 1;
            }
        }
        fnf
    });
    let sent = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        for i in 0..SENDS {
            requester
                .fire_and_forget(Payload::from(format!("m{i}")))
                .await
                .expect("queued");
        }
    })
    .await;
    assert!(
        sent.is_ok(),
        "fire-and-forget stalled waiting for queue space"
    );
    let received = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
        .await
        .expect("all frames written")
        .expect("reader");
    assert_eq!(received, SENDS);
}
