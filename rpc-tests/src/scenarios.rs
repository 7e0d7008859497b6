//! End-to-end scenarios, each written once and run over every transport by
//! [`rpc_suite!`](crate::rpc_suite).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use rsocket_core::{
    ClientBuilder, Config, ErrorCode, MimeType, Payload, RequestError, Requester, SetupParams,
};
use rsocket_rpc::codegen::prost::Message;
use rsocket_rpc::{interceptor_fn, Client, Code, Interceptor, Metadata, Request, Router, Status};
use rsocket_tests::{within, TestServer, TransportKind};
use tokio::sync::mpsc;

use crate::edge::repo_client::RepoClient;
use crate::edge::Thing;
use crate::greeter::admin_client::AdminClient;
use crate::greeter::greeter_client::GreeterClient;
use crate::greeter::{HelloReply, HelloRequest};
use crate::service::{Event, Probe, REQUEST_ID, SEEN_TOKEN};
use crate::shared::v1::inventory_client::InventoryClient;
use crate::shared::v1::{HelloRequest as OtherRequest, Item};
use crate::{connect, router, serve};

/// A server with every test service, a connected client, and the probe's
/// events.
pub struct Fixture<K: TransportKind> {
    /// The running server.
    pub server: TestServer<K>,
    /// The client connection.
    pub requester: Requester,
    /// A greeter client over it.
    pub client: GreeterClient<Requester>,
    /// What the service reports.
    pub events: mpsc::UnboundedReceiver<Event>,
    /// The probe the service reports through.
    pub probe: Probe,
}

impl<K: TransportKind> std::fmt::Debug for Fixture<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture").finish_non_exhaustive()
    }
}

impl<K: TransportKind> Fixture<K> {
    /// Starts a server with [`router`] (changed by `customize`) and
    /// connects a client.
    pub async fn start(customize: impl FnOnce(Router) -> Router) -> Self {
        let (probe, events) = Probe::new();
        let server = serve::<K>(customize(router(probe.clone()))).await;
        let requester = connect(&server, None).await;
        let client = GreeterClient::new(requester.clone());
        Self {
            server,
            requester,
            client,
            events,
            probe,
        }
    }

    /// The next event the service reports.
    pub async fn event(&mut self) -> Event {
        within("a service event", self.events.recv())
            .await
            .expect("probe dropped")
    }
}

fn hello(name: &str) -> HelloRequest {
    HelloRequest {
        name: name.into(),
        count: 0,
    }
}

async fn say(client: &GreeterClient<Requester>, name: &str) -> Result<String, Status> {
    let reply = within("say_hello", client.say_hello(hello(name))).await?;
    Ok(reply.into_inner().message)
}

/// Unary call with request metadata in and response metadata out.
pub async fn unary_with_metadata<K: TransportKind>() {
    let f = Fixture::<K>::start(|r| r).await;
    let mut request = Request::new(hello("Ada"));
    request
        .metadata_mut()
        .insert(REQUEST_ID, "req-7")
        .expect("metadata");
    let response = within("say_hello", f.client.say_hello(request))
        .await
        .expect("call succeeds");
    assert_eq!(response.metadata().get_str(REQUEST_ID), Some("req-7"));
    let reply = response.into_inner();
    assert_eq!(reply.message, "Hello Ada");
    assert_eq!(reply.item, Some(Item { id: "i".into() }));
    assert_eq!(reply.at.map(|t| t.seconds), Some(1_700_000_000));
}

/// Server streaming: every message in order, metadata on the first.
pub async fn server_streaming<K: TransportKind>() {
    let f = Fixture::<K>::start(|r| r).await;
    let mut request = Request::new(HelloRequest {
        name: "Bo".into(),
        count: 5,
    });
    request
        .metadata_mut()
        .insert(REQUEST_ID, "s-1")
        .expect("metadata");
    let mut stream = f.client.lots_of_replies(request).await.expect("started");
    let mut got = Vec::new();
    while let Some(m) = within("next reply", stream.message())
        .await
        .expect("no error")
    {
        got.push(m.message);
    }
    let want: Vec<String> = (0..5).map(|i| format!("Hello Bo #{i}")).collect();
    assert_eq!(got, want);
    assert_eq!(stream.metadata().get_str(REQUEST_ID), Some("s-1"));

    // An empty stream ends cleanly.
    let mut empty = f
        .client
        .lots_of_replies(hello("none"))
        .await
        .expect("started");
    assert!(within("end", empty.message()).await.expect("ok").is_none());
}

/// Client streaming: names in, one greeting out; an empty stream and a
/// stream that starts with the all-default (zero-length) message both work.
pub async fn client_streaming<K: TransportKind>() {
    let f = Fixture::<K>::start(|r| r).await;
    let names = futures::stream::iter(["a", "b", "c"].map(hello));
    let reply = within("greetings", f.client.lots_of_greetings(names))
        .await
        .expect("call succeeds");
    assert_eq!(reply.into_inner().message, "Hello a, b, c (3)");

    let empty = futures::stream::empty::<HelloRequest>();
    let reply = within("no greetings", f.client.lots_of_greetings(empty))
        .await
        .expect("call succeeds");
    assert_eq!(reply.into_inner().message, "Hello nobody");

    let first_default = futures::stream::iter([HelloRequest::default(), hello("z")]);
    let mut request = Request::new(first_default);
    request
        .metadata_mut()
        .insert(REQUEST_ID, "c-1")
        .expect("metadata");
    let reply = within("default first", f.client.lots_of_greetings(request))
        .await
        .expect("call succeeds");
    assert_eq!(reply.metadata().get_str(REQUEST_ID), Some("c-1"));
    assert_eq!(reply.into_inner().message, "Hello , z (2)");

    let only_default = futures::stream::iter([HelloRequest::default()]);
    let reply = within("only default", f.client.lots_of_greetings(only_default))
        .await
        .expect("call succeeds");
    assert_eq!(reply.into_inner().message, "Hello  (1)");
}

/// Bidirectional: answers arrive while the client is still sending.
pub async fn bidi_streaming<K: TransportKind>() {
    let f = Fixture::<K>::start(|r| r).await;
    let (tx, rx) = mpsc::channel::<HelloRequest>(4);
    let input =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut replies = f.client.chat(input).await.expect("started");
    for name in ["x", "y", "z"] {
        tx.send(hello(name)).await.expect("send");
        let reply = within("chat reply", replies.message())
            .await
            .expect("no error")
            .expect("a reply");
        assert_eq!(reply.message, format!("Hello {name}"));
    }
    drop(tx);
    assert!(within("chat end", replies.message())
        .await
        .expect("ok")
        .is_none());
}

/// Fire-and-forget, marked by proto option and by builder option, is
/// delivered; a fire-and-forget method called with request/response is
/// answered with the empty message, and a unary method accepts REQUEST_FNF.
pub async fn fire_and_forget<K: TransportKind>() {
    let mut f = Fixture::<K>::start(|r| r).await;
    within("notify", f.client.notify(hello("n1")))
        .await
        .expect("queued");
    assert_eq!(f.event().await, Event::Notified("n1".into()));
    within("log", f.client.log(hello("l1")))
        .await
        .expect("queued");
    assert_eq!(f.event().await, Event::Logged("l1".into()));

    let raw = Client::new(f.requester.clone());
    let empty: rsocket_rpc::Response<()> = within(
        "notify as request/response",
        raw.unary("greeter.Greeter/Notify", Request::new(hello("n2"))),
    )
    .await
    .expect("answered");
    assert_eq!(empty.into_inner(), ());
    assert_eq!(f.event().await, Event::Notified("n2".into()));

    within(
        "say_hello as fire-and-forget",
        raw.fire_and_forget("greeter.Greeter/SayHello", Request::new(hello("hang"))),
    )
    .await
    .expect("queued");
    assert_eq!(f.event().await, Event::Started("hang".into()));
}

fn assert_status(status: &Status, code: Code, wire: ErrorCode, message: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(status.rsocket_code(), Some(wire), "{status:?}");
    assert!(
        status.message().contains(message),
        "{status:?} should mention {message:?}"
    );
}

/// Every error kind: handler status, unknown method, wrong interaction,
/// undecodable message, panic, missing route, too-large message, a stream
/// failing midway. None of them takes the connection down.
pub async fn errors<K: TransportKind>() {
    let f = Fixture::<K>::start(|r| r.max_decoding_message_size(64)).await;
    let raw = Client::new(f.requester.clone());

    let s = say(&f.client, "not-found").await.unwrap_err();
    assert_status(
        &s,
        Code::NotFound,
        ErrorCode::APPLICATION_ERROR,
        "no such user",
    );

    let s = within(
        "unknown method",
        raw.unary::<_, HelloReply>("greeter.Greeter/Nope", Request::new(hello("x"))),
    )
    .await
    .unwrap_err();
    assert_status(
        &s,
        Code::Unimplemented,
        ErrorCode::REJECTED,
        "greeter.Greeter/Nope",
    );

    let s = within(
        "unknown service",
        raw.unary::<_, HelloReply>("nope.Nope/SayHello", Request::new(hello("x"))),
    )
    .await
    .unwrap_err();
    assert_status(&s, Code::Unimplemented, ErrorCode::REJECTED, "nope.Nope");

    let s = within(
        "wrong interaction",
        raw.unary::<_, HelloReply>("greeter.Greeter/LotsOfReplies", Request::new(hello("x"))),
    )
    .await
    .unwrap_err();
    assert_status(
        &s,
        Code::Unimplemented,
        ErrorCode::REJECTED,
        "server_streaming",
    );

    // Field 1 (string) with a length running past the end.
    let route = Metadata::new()
        .encode_request("greeter.Greeter/SayHello")
        .expect("route");
    let garbage = Payload {
        metadata: Some(route.clone()),
        data: Bytes::from_static(&[0x0A, 0x05, b'a']),
    };
    let s = Status::from(
        within("undecodable", f.requester.request_response(garbage))
            .await
            .unwrap_err(),
    );
    assert_status(&s, Code::InvalidArgument, ErrorCode::INVALID, "decode");

    let s = say(&f.client, "panic").await.unwrap_err();
    assert_status(&s, Code::Internal, ErrorCode::APPLICATION_ERROR, "panicked");

    let no_route = Payload::new(Bytes::new());
    let s = Status::from(
        within("no metadata", f.requester.request_response(no_route))
            .await
            .unwrap_err(),
    );
    assert_status(
        &s,
        Code::InvalidArgument,
        ErrorCode::REJECTED,
        "no metadata",
    );

    let s = say(&f.client, &"x".repeat(100)).await.unwrap_err();
    assert_status(
        &s,
        Code::ResourceExhausted,
        ErrorCode::INVALID,
        "limit of 64",
    );

    let mut stream = f
        .client
        .lots_of_replies(hello("fail-after-2"))
        .await
        .expect("started");
    assert_eq!(
        stream.message().await.expect("#0").map(|m| m.message),
        Some("#0".into())
    );
    assert_eq!(
        stream.message().await.expect("#1").map(|m| m.message),
        Some("#1".into())
    );
    let s = within("stream error", stream.message()).await.unwrap_err();
    assert_status(
        &s,
        Code::Aborted,
        ErrorCode::APPLICATION_ERROR,
        "stopped after 2",
    );
    assert!(stream.message().await.expect("ended").is_none());

    let s = within("streamed not-found", async {
        let mut s = f.client.lots_of_replies(hello("not-found")).await?;
        s.message().await
    })
    .await
    .unwrap_err();
    assert_status(
        &s,
        Code::NotFound,
        ErrorCode::APPLICATION_ERROR,
        "no such user",
    );

    // A client limit on responses.
    let small = GreeterClient::new(f.requester.clone()).max_decoding_message_size(4);
    let s = say(&small, "Ada").await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted);

    // The connection is still fine.
    assert_eq!(say(&f.client, "after").await.expect("works"), "Hello after");
}

/// A status whose message is longer than an ERROR frame can carry reaches
/// the client cut short (at a character boundary), and the connection
/// stays up; with `Config::max_frame_len` lowered on both sides, cut to
/// that.
pub async fn status_longer_than_a_frame<K: TransportKind>() {
    const MAX: usize = 1024;
    let config = Config {
        max_frame_len: MAX,
        ..Config::default()
    };
    let (probe, _events) = Probe::new();
    let server = TestServer::<K>::start(
        Arc::new(router(probe)),
        config.clone(),
        Duration::from_secs(1),
    )
    .await;
    let builder = ClientBuilder::new()
        .setup(rsocket_rpc::setup_params())
        .config(config);
    let client = GreeterClient::new(server.connect(builder).await);
    let s = say(&client, "long-error:1000").await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    let frame = 10 + "INVALID_ARGUMENT: ".len() + s.message().len();
    assert!((MAX - 1..=MAX).contains(&frame), "a frame of {frame} bytes");
    assert!(s.message().chars().all(|c| c == 'é'));
    assert_eq!(say(&client, "after").await.expect("works"), "Hello after");

    let f = Fixture::<K>::start(|r| r).await;
    let s = say(&f.client, "long-error").await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{:?}", s.rsocket_code());
    assert_eq!(s.rsocket_code(), Some(ErrorCode::APPLICATION_ERROR));
    // A frame of at most 16 MiB - 1: a 6-byte header, the 4-byte code,
    // the message, cut short by at most part of a character.
    let frame = 10 + "INVALID_ARGUMENT: ".len() + s.message().len();
    assert!(
        (0xFF_FFFF - 1..=0xFF_FFFF).contains(&frame),
        "a frame of {frame} bytes"
    );
    assert!(s.message().chars().all(|c| c == 'é'));
    assert_eq!(say(&f.client, "after").await.expect("works"), "Hello after");
}

/// Server interceptors see the route and can reject; client interceptors
/// add metadata.
pub async fn interceptors<K: TransportKind>() {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    let f = Fixture::<K>::start(move |r| {
        r.interceptor(interceptor_fn(move |call| {
            if let Ok(mut log) = log.lock() {
                log.push(format!("{} {}", call.route(), call.kind().as_str()));
            }
            match call.metadata().bearer_token() {
                Some(t) if t == "letmein" => Ok(()),
                _ => Err(Status::unauthenticated("a bearer token is required")),
            }
        }))
    })
    .await;

    let s = say(&f.client, "Ada").await.unwrap_err();
    assert_status(
        &s,
        Code::Unauthenticated,
        ErrorCode::REJECTED,
        "bearer token",
    );

    let authed = GreeterClient::new(f.requester.clone()).with_interceptor(interceptor_fn(|call| {
        call.metadata_mut()
            .set_bearer_token("letmein")
            .map_err(|e| Status::internal(e.to_string()))
    }));
    let response = within("authed call", authed.say_hello(hello("Ada")))
        .await
        .expect("accepted");
    assert_eq!(response.metadata().get_str(SEEN_TOKEN), Some("letmein"));

    let mut stream = authed
        .lots_of_replies(HelloRequest {
            name: "s".into(),
            count: 1,
        })
        .await
        .expect("started");
    assert!(within("stream", stream.message())
        .await
        .expect("ok")
        .is_some());

    // A client interceptor can refuse before anything is sent.
    let refusing = GreeterClient::new(f.requester.clone()).with_interceptor(interceptor_fn(|_| {
        Err(Status::failed_precondition("offline"))
    }));
    let s = say(&refusing, "Ada").await.unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert_eq!(s.rsocket_code(), None);

    let seen = seen.lock().map(|v| v.clone()).unwrap_or_default();
    assert_eq!(
        seen,
        [
            "greeter.Greeter/SayHello unary",
            "greeter.Greeter/SayHello unary",
            "greeter.Greeter/LotsOfReplies server_streaming",
        ]
    );
}

/// An interceptor that appends `tag` to the request's [`REQUEST_ID`]
/// entry (which the service echoes back).
fn append_mark(tag: &'static str) -> impl Interceptor {
    interceptor_fn(move |call| {
        let marks = match call.metadata().get_str(REQUEST_ID) {
            Some(before) => format!("{before},{tag}"),
            None => tag.to_owned(),
        };
        call.metadata_mut()
            .insert(REQUEST_ID, marks)
            .map_err(|e| Status::internal(e.to_string()))
    })
}

/// Interceptors run in the order they were added, on the client and then
/// on the server, for unary and streaming calls.
pub async fn interceptor_order<K: TransportKind>() {
    let f = Fixture::<K>::start(|r| {
        r.interceptor(append_mark("s1"))
            .interceptor(append_mark("s2"))
    })
    .await;
    let client = GreeterClient::new(f.requester.clone())
        .with_interceptor(append_mark("c1"))
        .with_interceptor(append_mark("c2"));
    let response = within("unary", client.say_hello(hello("Ada")))
        .await
        .expect("answered");
    assert_eq!(response.metadata().get_str(REQUEST_ID), Some("c1,c2,s1,s2"));
    let mut stream = client
        .lots_of_replies(HelloRequest {
            name: "o".into(),
            count: 1,
        })
        .await
        .expect("started");
    assert!(within("reply", stream.message())
        .await
        .expect("ok")
        .is_some());
    assert_eq!(stream.metadata().get_str(REQUEST_ID), Some("c1,c2,s1,s2"));
}

/// A server interceptor that removes an entry hides it from the handler;
/// the other entries still reach it.
pub async fn interceptor_strips<K: TransportKind>() {
    let f = Fixture::<K>::start(|r| {
        r.interceptor(interceptor_fn(|call| {
            call.metadata_mut().remove(REQUEST_ID);
            Ok(())
        }))
    })
    .await;
    let client = GreeterClient::new(f.requester.clone()).with_interceptor(interceptor_fn(|call| {
        call.metadata_mut()
            .set_bearer_token("kept")
            .map_err(|e| Status::internal(e.to_string()))
    }));
    let mut request = Request::new(hello("Ada"));
    request
        .metadata_mut()
        .insert(REQUEST_ID, "strip-me")
        .expect("metadata");
    let response = within("unary", client.say_hello(request))
        .await
        .expect("answered");
    assert_eq!(response.metadata().get_str(SEEN_TOKEN), Some("kept"));
    assert_eq!(response.metadata().get_str(REQUEST_ID), None);
}

/// A REQUEST_CHANNEL in the composite layout whose first payload carries
/// data is refused with `ERROR[INVALID]`, for client-streaming and
/// bidirectional methods; one with empty data is served.
pub async fn channel_header_must_be_empty<K: TransportKind>() {
    let f = Fixture::<K>::start(|r| r).await;
    for route in ["greeter.Greeter/LotsOfGreetings", "greeter.Greeter/Chat"] {
        let first = Payload {
            metadata: Some(Metadata::new().encode_request(route).expect("route")),
            data: Bytes::from(hello("a").encode_to_vec()),
        };
        let rest = futures::stream::iter([Payload::new(Bytes::from(hello("b").encode_to_vec()))]);
        let mut responses = f.requester.request_channel(first, rest);
        match within("the refusal", responses.next()).await {
            Some(Err(RequestError::Stream(e))) => {
                assert_eq!(e.code, ErrorCode::INVALID, "{route}");
                assert_eq!(
                    e.message,
                    "INVALID_ARGUMENT: the first payload of a channel carries only metadata; \
                     its data must be empty",
                    "{route}"
                );
            }
            other => panic!("{route}: expected ERROR[INVALID], got {other:?}"),
        }
        assert!(within("the end", responses.next()).await.is_none());
    }

    let first = Payload {
        metadata: Some(
            Metadata::new()
                .encode_request("greeter.Greeter/LotsOfGreetings")
                .expect("route"),
        ),
        data: Bytes::new(),
    };
    let rest = futures::stream::iter([Payload::new(Bytes::from(hello("r1").encode_to_vec()))]);
    let mut responses = f.requester.request_channel(first, rest);
    let payload = within("the answer", responses.next())
        .await
        .expect("one response")
        .expect("ok");
    let reply = HelloReply::decode(payload.data).expect("decodes");
    assert_eq!(reply.message, "Hello r1 (1)");
}

/// In a client-streaming call, a message over the server's size limit
/// reaches the handler as an `Err` item with `RESOURCE_EXHAUSTED`, after
/// which its input ends; the test handler returns it, so it goes out as
/// `ERROR[INVALID]`.
pub async fn streamed_message_over_limit<K: TransportKind>() {
    let mut f = Fixture::<K>::start(|r| r.max_decoding_message_size(64)).await;
    let names = futures::stream::iter([hello("a"), hello(&"x".repeat(100))]);
    let s = within("greetings", f.client.lots_of_greetings(names))
        .await
        .unwrap_err();
    assert_status(
        &s,
        Code::ResourceExhausted,
        ErrorCode::INVALID,
        "exceeds the limit of 64 bytes",
    );
    assert_eq!(
        f.event().await,
        Event::InputFailed {
            code: Code::ResourceExhausted,
            ended: true
        }
    );
}

/// A message that does not decode in the middle of a client-streaming or
/// bidirectional input (valid messages before it) reaches the handler as an
/// `Err` item with `INVALID_ARGUMENT`, after which its input ends; the test
/// handlers return it, so it goes out as `ERROR[INVALID]`. The connection
/// stays up.
pub async fn undecodable_streamed_message<K: TransportKind>() {
    let mut f = Fixture::<K>::start(|r| r).await;
    // Field 1 (string) with a length running past the end.
    let garbage = Bytes::from_static(&[0x0A, 0x05, b'a']);
    let header = |route: &str| Payload {
        metadata: Some(Metadata::new().encode_request(route).expect("route")),
        data: Bytes::new(),
    };
    let message = |name: &str| Payload::new(Bytes::from(hello(name).encode_to_vec()));
    let expect_invalid = |item: Option<Result<Payload, RequestError>>, route: &str| match item {
        Some(Err(RequestError::Stream(e))) => {
            assert_eq!(e.code, ErrorCode::INVALID, "{route}: {e:?}");
            assert!(
                e.message
                    .starts_with("INVALID_ARGUMENT: cannot decode the request message: "),
                "{route}: {e:?}"
            );
            let s = Status::from_stream_error(&e);
            assert_eq!(s.code(), Code::InvalidArgument, "{route}");
            assert_eq!(s.rsocket_code(), Some(ErrorCode::INVALID), "{route}");
        }
        other => panic!("{route}: expected ERROR[INVALID], got {other:?}"),
    };

    // Client streaming: the handler sees the error, then the end of its
    // input, though a valid message follows the garbage.
    let route = "greeter.Greeter/LotsOfGreetings";
    let rest = futures::stream::iter([
        message("a"),
        message("b"),
        Payload::new(garbage.clone()),
        message("c"),
    ]);
    let mut responses = f.requester.request_channel(header(route), rest);
    expect_invalid(within("the answer", responses.next()).await, route);
    assert!(within("the end", responses.next()).await.is_none());
    assert_eq!(
        f.event().await,
        Event::InputFailed {
            code: Code::InvalidArgument,
            ended: true
        }
    );

    // Bidirectional: the answer to the valid message, then the error; the
    // message after the garbage is not answered.
    let route = "greeter.Greeter/Chat";
    let rest = futures::stream::iter([message("a"), Payload::new(garbage), message("c")]);
    let mut responses = f.requester.request_channel(header(route), rest);
    let first = within("the first answer", responses.next())
        .await
        .expect("an answer")
        .expect("ok");
    let reply = HelloReply::decode(first.data).expect("decodes");
    assert_eq!(reply.message, "Hello a");
    expect_invalid(within("the error", responses.next()).await, route);
    assert!(within("the end", responses.next()).await.is_none());

    assert_eq!(say(&f.client, "after").await.expect("works"), "Hello after");
}

/// A responder that is not the router: answers every request with `reply`
/// unless its name is `valid`.
struct RawResponder {
    reply: Bytes,
}

fn raw_answer(request: &Payload, reply: &Bytes) -> Payload {
    let name = HelloRequest::decode(request.data.clone())
        .map(|r| r.name)
        .unwrap_or_default();
    if name == "valid" {
        Payload::new(Bytes::from(
            HelloReply {
                message: "fine".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ))
    } else {
        Payload::new(reply.clone())
    }
}

#[rsocket_core::async_trait]
impl rsocket_core::RSocket for RawResponder {
    async fn request_response(&self, request: Payload) -> Result<Option<Payload>, RequestError> {
        Ok(Some(raw_answer(&request, &self.reply)))
    }

    /// A valid `ok`, the answer, and `ok` again.
    fn request_stream(&self, request: Payload) -> rsocket_core::PayloadStream {
        let ok = HelloReply {
            message: "ok".into(),
            ..Default::default()
        };
        let ok = Payload::new(Bytes::from(ok.encode_to_vec()));
        let items = [
            Ok(ok.clone()),
            Ok(raw_answer(&request, &self.reply)),
            Ok(ok),
        ];
        futures::stream::iter(items).boxed()
    }
}

/// A generated client's unary call and server stream, answered by
/// `reply`: the status of the answer (and of the stream's second item,
/// after which the stream ends, though the server sends a third), then a
/// valid call on the same connection.
async fn raw_answers<K: TransportKind>(
    reply: &'static [u8],
    limit: usize,
    check: impl Fn(&Status),
) {
    let server = serve::<K>(RawResponder {
        reply: Bytes::from_static(reply),
    })
    .await;
    let requester = connect(&server, None).await;
    let client = GreeterClient::new(requester).max_decoding_message_size(limit);

    let s = say(&client, "x").await.unwrap_err();
    check(&s);

    let mut stream = within("start", client.lots_of_replies(hello("x")))
        .await
        .expect("started");
    let first = within("#0", stream.message()).await.expect("#0");
    assert_eq!(first.map(|m| m.message), Some("ok".into()));
    let s = within("#1", stream.message()).await.unwrap_err();
    check(&s);
    assert!(stream.message().await.expect("ended").is_none());

    assert_eq!(say(&client, "valid").await.expect("works"), "fine");
}

/// A response that does not decode fails the client's call with
/// `INTERNAL`; it came in no ERROR frame, so `rsocket_code` is `None`.
pub async fn undecodable_response<K: TransportKind>() {
    // Field 1 (string) with a length running past the end.
    raw_answers::<K>(&[0x0A, 0x05, b'a'], 64, |s| {
        assert_eq!(s.code(), Code::Internal, "{s:?}");
        assert_eq!(s.rsocket_code(), None, "{s:?}");
        assert!(
            s.message()
                .starts_with("cannot decode the response message: "),
            "{s:?}"
        );
    })
    .await;
}

/// A response over the client's size limit fails the call with
/// `RESOURCE_EXHAUSTED`, checked on the length before decoding: the
/// 9-byte answer does not decode, yet the status is the limit's.
pub async fn response_over_client_limit<K: TransportKind>() {
    raw_answers::<K>(&[0x0A, 0x20, 1, 2, 3, 4, 5, 6, 7], 8, |s| {
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert_eq!(s.rsocket_code(), None, "{s:?}");
        assert_eq!(
            s.message(),
            "message of 9 bytes exceeds the limit of 8 bytes",
            "{s:?}"
        );
    })
    .await;
}

/// A server stream whose handler panics after two items: the client gets
/// the two, then `INTERNAL: the handler panicked` in `ERROR[APPLICATION_ERROR]`,
/// and the stream ends; the connection and later calls are unaffected.
pub async fn server_stream_panics<K: TransportKind>() {
    let f = Fixture::<K>::start(|r| r).await;
    let mut stream = within("start", f.client.lots_of_replies(hello("panic-after-2")))
        .await
        .expect("started");
    for expected in ["#0", "#1"] {
        let item = within(expected, stream.message()).await.expect(expected);
        assert_eq!(item.map(|m| m.message), Some(expected.into()));
    }
    let s = within("the panic", stream.message()).await.unwrap_err();
    assert_eq!(s.code(), Code::Internal, "{s:?}");
    assert_eq!(
        s.rsocket_code(),
        Some(ErrorCode::APPLICATION_ERROR),
        "{s:?}"
    );
    assert_eq!(s.message(), "the handler panicked", "{s:?}");
    assert!(stream.message().await.expect("ended").is_none());

    assert_eq!(say(&f.client, "after").await.expect("works"), "Hello after");
    let replies: Vec<String> = within("a later stream", async {
        let request = HelloRequest {
            name: "n".into(),
            count: 2,
        };
        let mut stream = f.client.lots_of_replies(request).await.expect("started");
        let mut out = Vec::new();
        while let Some(m) = stream.message().await.expect("an item") {
            out.push(m.message);
        }
        out
    })
    .await;
    assert_eq!(replies, ["Hello n #0", "Hello n #1"]);
}

/// The server does not check the SETUP's MIME types: a client that
/// announces JSON for data and metadata is served as any other.
pub async fn other_setup_mime_types<K: TransportKind>() {
    let (probe, _events) = Probe::new();
    let server = serve::<K>(router(probe)).await;
    let json = MimeType::from_static("application/json").expect("a valid MIME type");
    let params = SetupParams {
        data_mime_type: json.clone(),
        metadata_mime_type: json,
        ..rsocket_rpc::setup_params()
    };
    let requester = server.connect(ClientBuilder::new().setup(params)).await;
    let client = GreeterClient::new(requester);
    assert_eq!(say(&client, "json").await.expect("served"), "Hello json");
}

/// A per-call deadline fails the call and drops the server's handler.
pub async fn deadline<K: TransportKind>() {
    let mut f = Fixture::<K>::start(|r| r).await;
    let mut request = Request::new(hello("hang"));
    request.set_timeout(Duration::from_millis(200));
    let s = within("deadline", f.client.say_hello(request))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::DeadlineExceeded);
    assert_eq!(f.event().await, Event::Started("hang".into()));
    assert_eq!(f.event().await, Event::Dropped("hang".into()));

    // A client-wide timeout applies to streams until their last message.
    let client = GreeterClient::new(f.requester.clone()).with_timeout(Duration::from_millis(200));
    let (tx, rx) = mpsc::channel::<HelloRequest>(1);
    let input =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut chat = client.chat(input).await.expect("started");
    tx.send(hello("a")).await.expect("send");
    assert!(within("first", chat.message()).await.expect("ok").is_some());
    let s = within("deadline", chat.message()).await.unwrap_err();
    assert_eq!(s.code(), Code::DeadlineExceeded);
    assert_eq!(f.event().await, Event::Dropped("chat".into()));
}

/// Dropping a call on the client cancels it on the server: the handler's
/// future (unary) or stream (server streaming) is dropped.
pub async fn client_cancels<K: TransportKind>() {
    let mut f = Fixture::<K>::start(|r| r).await;
    let client = f.client.clone();
    let call = tokio::spawn(async move { client.say_hello(hello("hang")).await });
    assert_eq!(f.event().await, Event::Started("hang".into()));
    call.abort();
    assert_eq!(f.event().await, Event::Dropped("hang".into()));

    let mut stream = f
        .client
        .lots_of_replies(hello("endless"))
        .await
        .expect("started");
    assert!(within("one", stream.message()).await.expect("ok").is_some());
    drop(stream);
    assert_eq!(f.event().await, Event::Dropped("endless".into()));
}

/// A server handler that stops reading its input cancels the client's
/// outbound half: the client's message stream is dropped, while the
/// server's answers still arrive.
pub async fn server_cancels<K: TransportKind>() {
    let mut f = Fixture::<K>::start(|r| r).await;
    let probe = f.probe.clone();
    let guard = InputGuard(probe);
    let input = futures::stream::iter([hello("a"), hello("stop")])
        .chain(futures::stream::pending())
        .map(move |m| {
            let _keep = &guard;
            m
        });
    let mut replies = f.client.chat(input).await.expect("started");
    let first = within("a", replies.message())
        .await
        .expect("ok")
        .expect("reply");
    assert_eq!(first.message, "Hello a");
    let bye = within("bye", replies.message())
        .await
        .expect("ok")
        .expect("reply");
    assert_eq!(bye.message, "bye");
    assert!(within("end", replies.message())
        .await
        .expect("ok")
        .is_none());
    assert_eq!(f.event().await, Event::InputDropped);
}

/// Reports [`Event::InputDropped`] when the client's input stream is dropped.
struct InputGuard(Probe);

impl Drop for InputGuard {
    fn drop(&mut self) {
        self.0.send(Event::InputDropped);
    }
}

/// A consumer that stops after 10 items holds the producer to the credit
/// window: the producer is polled no more than the items granted.
pub async fn backpressure<K: TransportKind>() {
    const WINDOW: usize = 16;
    let f = Fixture::<K>::start(|r| r).await;
    let client = GreeterClient::new(f.requester.with_prefetch(WINDOW as u32));
    let mut stream = client
        .lots_of_replies(hello("endless"))
        .await
        .expect("started");
    for i in 0..10 {
        let m = within("item", stream.message())
            .await
            .expect("ok")
            .expect("item");
        assert_eq!(m.message, format!("#{i}"));
    }
    // The producer fills the window the client granted...
    within("the producer to fill the window", async {
        while f.probe.polls.load(Ordering::SeqCst) < WINDOW {
            tokio::task::yield_now().await;
        }
    })
    .await;
    // ...and after round trips on the same connection (which the server
    // handles after any REQUEST_N sent before them), it is still held to
    // what was granted: the 10 consumed plus the window.
    for _ in 0..3 {
        say(&f.client, "ping").await.expect("round trip");
    }
    let polls = f.probe.polls.load(Ordering::SeqCst);
    assert!(
        polls <= 10 + WINDOW,
        "producer polled {polls} times with {WINDOW} credits and 10 items consumed"
    );
    drop(stream);
}

/// The client hosts a service; the server calls it through the requester it
/// got at accept time, with the same generated client.
pub async fn both_directions<K: TransportKind>() {
    let (server_probe, _server_events) = Probe::new();
    let mut server = serve::<K>(router(server_probe)).await;
    let (client_probe, mut client_events) = Probe::new();
    let requester = connect(&server, Some(router(client_probe))).await;
    let to_client = GreeterClient::new(server.accepted().await);
    let reply = within("server calls client", to_client.say_hello(hello("back")))
        .await
        .expect("answered");
    assert_eq!(reply.into_inner().message, "Hello back");
    within("notify client", to_client.notify(hello("n")))
        .await
        .expect("queued");
    let event = within("client event", client_events.recv()).await;
    assert_eq!(event, Some(Event::Notified("n".into())));
    let mut stream = to_client
        .lots_of_replies(HelloRequest {
            name: "c".into(),
            count: 2,
        })
        .await
        .expect("started");
    assert!(within("s", stream.message()).await.expect("ok").is_some());
    drop(requester);
}

/// The server accepts the rsocket-rpc-java version 1 metadata layout,
/// including a channel whose first payload carries the first message.
pub async fn rsocket_rpc_java_layout<K: TransportKind>() {
    let f = Fixture::<K>::start(|r| r).await;
    // version 1, service "greeter.Greeter", method "SayHello", no tracing
    let metadata = rsocket_rpc::encode_rpc_v1("greeter.Greeter", "SayHello", b"", b"").expect("v1");
    assert_eq!(&metadata[..6], [0x00, 0x01, 0x00, 0x0F, b'g', b'r']);
    let request = Payload {
        metadata: Some(metadata),
        data: Bytes::from(hello("Java").encode_to_vec()),
    };
    let response = within("v1 unary", f.requester.request_response(request))
        .await
        .expect("answered")
        .expect("a payload");
    let reply = HelloReply::decode(response.data).expect("decodes");
    assert_eq!(reply.message, "Hello Java");

    let metadata =
        rsocket_rpc::encode_rpc_v1("greeter.Greeter", "LotsOfGreetings", b"t", b"").expect("v1");
    let first = Payload {
        metadata: Some(metadata),
        data: Bytes::from(hello("j1").encode_to_vec()),
    };
    let rest = futures::stream::iter([Payload::new(Bytes::from(hello("j2").encode_to_vec()))]);
    let mut responses = f.requester.request_channel(first, rest);
    let payload = within("v1 channel", responses.next())
        .await
        .expect("one response")
        .expect("ok");
    let reply = HelloReply::decode(payload.data).expect("decodes");
    assert_eq!(reply.message, "Hello j1, j2 (2)");
}

/// Two more services, one from a nested package with a message named like
/// one in `greeter` and a method named like a Rust keyword, on the same
/// router.
pub async fn other_services<K: TransportKind>() {
    let f = Fixture::<K>::start(|r| r).await;
    let admin = AdminClient::new(f.requester.clone());
    let pong = within("ping", admin.ping(()))
        .await
        .expect("ok")
        .into_inner();
    assert_eq!(pong.id, "pong");
    let at = within("lookup", admin.lookup(OtherRequest { number: 42 }))
        .await
        .expect("ok")
        .into_inner();
    assert_eq!(at.seconds, 42);
    let inventory = InventoryClient::new(f.requester.clone());
    let item = within("get", inventory.get(OtherRequest { number: 7 }))
        .await
        .expect("ok")
        .into_inner();
    assert_eq!(item.id, "7");
    let echoed = within("type", inventory.r#type(Item { id: "k".into() }))
        .await
        .expect("ok")
        .into_inner();
    assert_eq!(echoed.id, "k");
}

/// `edge.Repo`: methods named like `Clone::clone` and like the client's
/// own methods (`new_` and `client_` on the client), keywords, odd case,
/// and `google.protobuf.Empty` streamed both ways (zero-length messages;
/// none at all for the client-streaming count).
pub async fn edge_names<K: TransportKind>() {
    let f = Fixture::<K>::start(|r| r).await;
    let repo = RepoClient::new(f.requester.clone());
    let thing = || Thing { name: "x".into() };
    let answers = [
        within("clone", repo.clone(thing())).await,
        within("new_", repo.new_(thing())).await,
        within("client_", repo.client_(thing())).await,
        within("from_file", repo.from_file(thing())).await,
        within("type", repo.r#type(thing())).await,
        within("self_", repo.self_(thing())).await,
        within("get_http_status", repo.get_http_status(thing())).await,
    ];
    let names: Vec<String> = answers
        .into_iter()
        .map(|r| r.expect("answered").into_inner().name)
        .collect();
    assert_eq!(
        names,
        [
            "clone x",
            "new x",
            "client x",
            "from_file x",
            "type x",
            "self x",
            "get_http_status x"
        ]
    );
    let mut parsed = within("xml_parse2", repo.xml_parse2(thing()))
        .await
        .expect("a stream");
    let first = within("its item", parsed.message()).await.expect("ok");
    assert_eq!(first.map(|t| t.name).as_deref(), Some("xml_parse2 x"));

    let pings = within("pings", repo.pings(futures::stream::iter([(), (), ()])))
        .await
        .expect("a stream");
    let echoed: Vec<_> = within("every pong", pings.collect::<Vec<_>>()).await;
    assert_eq!(echoed, [Ok(()), Ok(()), Ok(())]);
    for n in [0, 2] {
        let counted = within(
            "count",
            repo.count(futures::stream::iter(std::iter::repeat_n((), n))),
        )
        .await
        .expect("counted")
        .into_inner();
        assert_eq!(counted.name, n.to_string());
    }
}

/// A server interceptor that panics: the call is answered `INTERNAL`, like
/// a handler's panic, and the connection goes on serving.
pub async fn interceptor_panics<K: TransportKind>() {
    let f = Fixture::<K>::start(|r| {
        r.interceptor(interceptor_fn(|call| {
            if call.metadata().bearer_token().is_none() {
                panic!("an interceptor's bug");
            }
            Ok(())
        }))
    })
    .await;
    let s = say(&f.client, "Ada").await.unwrap_err();
    assert_status(
        &s,
        Code::Internal,
        ErrorCode::APPLICATION_ERROR,
        "an interceptor panicked",
    );
    let mut stream = within(
        "a server stream through the panicking interceptor",
        f.client.lots_of_replies(HelloRequest {
            name: "s".into(),
            count: 1,
        }),
    )
    .await;
    let failed = match &mut stream {
        Ok(s) => within("its first item", s.next()).await,
        Err(e) => Some(Err(e.clone())),
    };
    match failed {
        Some(Err(s)) => assert_status(
            &s,
            Code::Internal,
            ErrorCode::APPLICATION_ERROR,
            "an interceptor panicked",
        ),
        other => panic!("expected INTERNAL, got {other:?}"),
    }
    let authed = GreeterClient::new(f.requester.clone()).with_interceptor(interceptor_fn(|call| {
        call.metadata_mut()
            .set_bearer_token("ok")
            .map_err(|e| Status::internal(e.to_string()))
    }));
    let response = within(
        "a call the interceptor lets through",
        authed.say_hello(hello("Ada")),
    )
    .await
    .expect("served on the same connection");
    assert!(response.into_inner().message.contains("Ada"));
}

/// Instantiates every scenario as a `#[tokio::test]` for one transport.
#[macro_export]
macro_rules! rpc_suite {
    ($name:ident, $kind:ty) => {
        mod $name {
            use $crate::scenarios as s;
            $crate::rpc_suite!(@tests $kind;
                unary_with_metadata, server_streaming, client_streaming, bidi_streaming,
                fire_and_forget, errors, interceptors, deadline, client_cancels,
                server_cancels, backpressure, both_directions, rsocket_rpc_java_layout,
                other_services, interceptor_order, interceptor_strips,
                channel_header_must_be_empty, streamed_message_over_limit,
                other_setup_mime_types, undecodable_streamed_message, undecodable_response,
                response_over_client_limit, server_stream_panics, interceptor_panics,
                edge_names, status_longer_than_a_frame);
        }
    };
    (@tests $kind:ty; $($test:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            s::$test::<$kind>().await;
        }
    )*};
}
