//! Quick end-to-end smoke test over the in-memory transport.
use rsocket_core::async_trait;
use std::sync::Arc;

use futures::StreamExt;
use rsocket_core::{
    memory_pair, ClientBuilder, Payload, PayloadStream, RSocket, RequestError, Server,
};

struct Echo;
#[async_trait]
impl RSocket for Echo {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        Ok(Some(req))
    }
    fn request_stream(&self, req: Payload) -> PayloadStream {
        let n: usize = req.data_utf8().unwrap_or("0").parse().unwrap_or(0);
        futures::stream::iter((0..n).map(|i| Ok(Payload::from(i.to_string())))).boxed()
    }
    fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
        futures::stream::once(async move { Ok(first) })
            .chain(rest)
            .boxed()
    }
}

#[tokio::test]
async fn smoke() {
    let (c, s) = memory_pair(64 * 1024);
    let server = Server::new(|_s, _r| async { Ok(Arc::new(Echo) as Arc<dyn RSocket>) });
    tokio::spawn(server.serve_with_shutdown(
        futures::stream::iter([Ok::<_, std::io::Error>(s)]),
        futures::future::pending(),
    ));
    let r = ClientBuilder::new().connect(c).unwrap();
    let reply = r
        .request_response(Payload::from("hi"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.data, "hi");
    let items: Vec<_> = r.request_stream(Payload::from("1000")).collect().await;
    assert_eq!(items.len(), 1000);
    assert_eq!(items[999].as_ref().unwrap().data, "999");
    let rest = futures::stream::iter((0..10).map(|i| Ok(Payload::from(format!("c{i}"))))).boxed();
    let items: Vec<_> = r
        .request_channel_fallible(Payload::from("first"), rest)
        .collect()
        .await;
    assert_eq!(items.len(), 11, "{items:?}");
    let rejected = r.fire_and_forget(Payload::from("x")).await;
    assert!(rejected.is_ok());
}

struct Counting(Arc<std::sync::atomic::AtomicUsize>);
#[async_trait]
impl RSocket for Counting {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        Ok(Some(req))
    }
    fn request_stream(&self, _req: Payload) -> PayloadStream {
        let produced = self.0.clone();
        futures::stream::repeat_with(move || {
            let i = produced.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Payload::from(i.to_string()))
        })
        .boxed()
    }
}

#[tokio::test]
async fn explicit_credit_is_exact() {
    let produced = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (c, s) = memory_pair(64 * 1024);
    let p = produced.clone();
    let server = Server::new(move |_s, _r| {
        let p = p.clone();
        async move { Ok(Arc::new(Counting(p)) as Arc<dyn RSocket>) }
    });
    tokio::spawn(server.serve_with_shutdown(
        futures::stream::iter([Ok::<_, std::io::Error>(s)]),
        futures::future::pending(),
    ));
    let r = ClientBuilder::new().connect(c).unwrap();
    let mut stream = r.request_stream_with_credit(Payload::from("go"), 2);
    for expected in ["0", "1"] {
        assert_eq!(stream.next().await.unwrap().unwrap().data, expected);
    }
    stream.request(3);
    for expected in ["2", "3", "4"] {
        assert_eq!(stream.next().await.unwrap().unwrap().data, expected);
    }
    // Two round trips on the same connection: anything the producer made
    // beyond the credit would have been sent before these answers.
    for _ in 0..2 {
        r.request_response(Payload::from("barrier")).await.unwrap();
    }
    assert_eq!(produced.load(std::sync::atomic::Ordering::SeqCst), 5);
    assert_eq!(r.open_streams(), 1);
    drop(stream);
    r.request_response(Payload::from("barrier")).await.unwrap();
    assert_eq!(r.open_streams(), 0);
}
