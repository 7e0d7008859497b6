//! Quick end-to-end smoke test over the in-memory transport.
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::StreamExt;
use rsocket_core::{
    memory_pair, ClientBuilder, Payload, PayloadStream, RSocket, RequestError, Server,
};

struct Echo;
impl RSocket for Echo {
    fn request_response(
        &self,
        req: Payload,
    ) -> BoxFuture<'static, Result<Option<Payload>, RequestError>> {
        Box::pin(async move { Ok(Some(req)) })
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
    tokio::spawn(server.serve(
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
        .request_channel(Payload::from("first"), rest)
        .collect()
        .await;
    assert_eq!(items.len(), 11, "{items:?}");
    let rejected = r.fire_and_forget(Payload::from("x")).await;
    assert!(rejected.is_ok());
}
