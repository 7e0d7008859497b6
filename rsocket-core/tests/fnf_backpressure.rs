//! Fire-and-forget under load: at the handler limit the server stops
//! reading instead of dropping requests, so every one is handled once the
//! handlers catch up.

use rsocket_core::async_trait;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rsocket_core::{memory_pair, ClientBuilder, Config, Payload, RSocket, RequestError, Server};
use tokio::sync::Semaphore;

/// Each fire-and-forget handler waits for a permit, then counts.
struct Gated {
    gate: Arc<Semaphore>,
    handled: Arc<AtomicUsize>,
}

#[async_trait]

impl RSocket for Gated {
    async fn fire_and_forget(&self, _req: Payload) -> Result<(), RequestError> {
        let gate = self.gate.clone();
        let handled = self.handled.clone();
        Box::pin(async move {
            let permit = gate.acquire().await.map_err(|_| RequestError::Cancelled)?;
            permit.forget();
            handled.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .await
    }
}

#[tokio::test]
async fn fire_and_forget_beyond_the_handler_limit_is_not_dropped() {
    const SENT: usize = 50;
    let gate = Arc::new(Semaphore::new(0));
    let handled = Arc::new(AtomicUsize::new(0));
    let config = Config {
        max_concurrent_inbound_streams: 4,
        ..Config::default()
    };
    let (c, s) = memory_pair(64 * 1024);
    let (g, h) = (gate.clone(), handled.clone());
    let server = Server::new(move |_s, _r| {
        let responder = Gated {
            gate: g.clone(),
            handled: h.clone(),
        };
        async move { Ok(Arc::new(responder) as Arc<dyn RSocket>) }
    })
    .config(config);
    tokio::spawn(server.serve_with_shutdown(
        futures::stream::iter([Ok::<_, std::io::Error>(s)]),
        futures::future::pending(),
    ));
    let requester = ClientBuilder::new().connect(c).expect("connect");
    for i in 0..SENT {
        requester
            .fire_and_forget(Payload::from(format!("m{i}")))
            .await
            .expect("queued");
    }
    // Let every handler through, then wait until all were handled.
    gate.add_permits(SENT);
    tokio::time::timeout(Duration::from_secs(5), async {
        while handled.load(Ordering::SeqCst) < SENT {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "only {} of {SENT} fire-and-forget requests were handled",
            handled.load(Ordering::SeqCst)
        )
    });
}
