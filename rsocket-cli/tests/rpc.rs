//! `rsocket rpc` against an in-test server that speaks the RPC layer's
//! wire format (route `package.Service/Method` in a routing entry of
//! composite metadata, protobuf data; client and bidirectional streams on
//! a channel whose first payload is the header). The RPC layer itself has
//! not landed on main yet; when it does, these calls should also be run
//! against its example server.
#![cfg(feature = "rpc")]

mod common;

use std::path::PathBuf;

use bytes::Bytes;
use futures::StreamExt;
use prost_reflect::prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value};
use rsocket::prelude::*;
use rsocket::{Listener, Payload, PayloadStream, RequestError, Server, SetupInfo, StreamError};
use tokio::sync::mpsc;

use common::{next_event, route_of, run};

const PROTO: &str = r#"syntax = "proto3";
package greeter;
import "google/protobuf/empty.proto";
import "rsocket/options.proto";

message HelloRequest { string name = 1; uint32 count = 2; }
message HelloReply { string message = 1; }

service Greeter {
  rpc SayHello (HelloRequest) returns (HelloReply);
  rpc LotsOfReplies (HelloRequest) returns (stream HelloReply);
  rpc LotsOfGreetings (stream HelloRequest) returns (HelloReply);
  rpc Chat (stream HelloRequest) returns (stream HelloReply);
  rpc Notify (HelloRequest) returns (google.protobuf.Empty) {
    option (io.rsocket.rpc.options) = { fire_and_forget: true };
  }
  rpc Missing (HelloRequest) returns (HelloReply);
}
"#;

/// Writes the proto into its own directory; returns (dir, file).
fn proto_file(tag: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("rsocket-cli-rpc-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("protos")).unwrap();
    let file = dir.join("protos/greeter.proto");
    std::fs::write(&file, PROTO).unwrap();
    (dir, file)
}

/// The test's own descriptors (compiled with protox, as the CLI does).
fn pool(file: &PathBuf) -> DescriptorPool {
    let include = file.parent().unwrap().to_path_buf();
    let mut resolver = protox::file::ChainFileResolver::new();
    resolver.add(protox::file::IncludeFileResolver::new(include));
    resolver.add(OptionsFile);
    resolver.add(protox::file::GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true);
    compiler.open_file(file).unwrap();
    compiler.descriptor_pool()
}

struct OptionsFile;

impl protox::file::FileResolver for OptionsFile {
    fn open_file(&self, name: &str) -> Result<protox::file::File, protox::Error> {
        if name == "rsocket/options.proto" {
            protox::file::File::from_source(
                name,
                "syntax = \"proto3\"; package io.rsocket.rpc;\n\
                 import \"google/protobuf/descriptor.proto\";\n\
                 extend google.protobuf.MethodOptions { RSocketMethodOptions options = 1057; }\n\
                 message RSocketMethodOptions { bool fire_and_forget = 1; }",
            )
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

/// The greeter, answering by route; every call is reported to the test.
struct Greeter {
    request: MessageDescriptor,
    reply: MessageDescriptor,
    events: mpsc::UnboundedSender<String>,
}

impl Greeter {
    fn name(&self, data: Bytes) -> Result<(String, u32), RequestError> {
        let msg = DynamicMessage::decode(self.request.clone(), data)
            .map_err(|e| StreamError::application(format!("INVALID_ARGUMENT: {e}")))?;
        let name = msg
            .get_field_by_name("name")
            .and_then(|v| v.as_str().map(str::to_owned));
        let count = msg.get_field_by_name("count").and_then(|v| v.as_u32());
        Ok((name.unwrap_or_default(), count.unwrap_or(0)))
    }

    fn reply(&self, text: String) -> Payload {
        let mut msg = DynamicMessage::new(self.reply.clone());
        msg.set_field_by_name("message", Value::String(text));
        Payload::new(msg.encode_to_vec())
    }

    fn unimplemented(route: &str) -> RequestError {
        StreamError::application(format!("UNIMPLEMENTED: no method {route}")).into()
    }
}

#[async_trait]
impl RSocket for Greeter {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        let route = route_of(req.metadata.as_ref()).unwrap_or_default();
        let _ = self.events.send(format!("rr {route}"));
        if route != "greeter.Greeter/SayHello" {
            return Err(Self::unimplemented(&route));
        }
        let (name, _) = self.name(req.data)?;
        Ok(Some(self.reply(format!("hello, {name}"))))
    }

    async fn fire_and_forget(&self, req: Payload) -> Result<(), RequestError> {
        let route = route_of(req.metadata.as_ref()).unwrap_or_default();
        let (name, _) = self.name(req.data)?;
        let _ = self.events.send(format!("fnf {route} {name}"));
        Ok(())
    }

    fn request_stream(&self, req: Payload) -> PayloadStream {
        let route = route_of(req.metadata.as_ref()).unwrap_or_default();
        if route != "greeter.Greeter/LotsOfReplies" {
            return rsocket::error_stream(Self::unimplemented(&route));
        }
        match self.name(req.data) {
            Ok((name, count)) => {
                let replies: Vec<_> = (0..count)
                    .map(|i| Ok(self.reply(format!("hello #{i}, {name}"))))
                    .collect();
                futures::stream::iter(replies).boxed()
            }
            Err(e) => rsocket::error_stream(e),
        }
    }

    fn request_channel(&self, header: Payload, rest: PayloadStream) -> PayloadStream {
        let route = route_of(header.metadata.as_ref()).unwrap_or_default();
        let _ = self
            .events
            .send(format!("channel {route} header-data={}", header.data.len()));
        let request = self.request.clone();
        let reply = self.reply.clone();
        let me = Self {
            request,
            reply,
            events: self.events.clone(),
        };
        let names = rest.map(move |item| item.and_then(|p| me.name(p.data).map(|(n, _)| n)));
        match route.as_str() {
            "greeter.Greeter/Chat" => {
                let fmt = self.reply.clone();
                names
                    .map(move |n| {
                        n.map(|n| {
                            let mut msg = DynamicMessage::new(fmt.clone());
                            msg.set_field_by_name("message", Value::String(format!("hi {n}")));
                            Payload::new(msg.encode_to_vec())
                        })
                    })
                    .boxed()
            }
            "greeter.Greeter/LotsOfGreetings" => {
                let fmt = self.reply.clone();
                futures::stream::once(async move {
                    let all: Result<Vec<String>, RequestError> =
                        names.collect::<Vec<_>>().await.into_iter().collect();
                    let mut msg = DynamicMessage::new(fmt);
                    msg.set_field_by_name(
                        "message",
                        Value::String(format!("hello, {}", all?.join(" & "))),
                    );
                    Ok(Payload::new(msg.encode_to_vec()))
                })
                .boxed()
            }
            other => rsocket::error_stream(Self::unimplemented(other)),
        }
    }
}

async fn serve(file: &PathBuf) -> (String, mpsc::UnboundedReceiver<String>) {
    let pool = pool(file);
    let request = pool.get_message_by_name("greeter.HelloRequest").unwrap();
    let reply = pool.get_message_by_name("greeter.HelloReply").unwrap();
    let listener = Listener::bind("tcp://127.0.0.1:0").await.unwrap();
    let uri = listener.local_uri();
    let (tx, rx) = mpsc::unbounded_channel();
    let server = Server::new(move |setup: SetupInfo, _requester| {
        let g = Greeter {
            request: request.clone(),
            reply: reply.clone(),
            events: tx.clone(),
        };
        async move {
            let _ = g.events.send(format!(
                "setup {} {}",
                String::from_utf8_lossy(setup.data_mime_type.as_bytes()),
                String::from_utf8_lossy(setup.metadata_mime_type.as_bytes())
            ));
            Ok(g)
        }
    });
    tokio::spawn(server.serve(listener));
    (uri, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_every_method_and_its_kind() {
    let (_dir, file) = proto_file("list");
    let r = run(&["rpc", "--proto", file.to_str().unwrap(), "--list"], "").await;
    r.expect_code(0);
    assert_eq!(
        r.lines(),
        [
            "greeter.Greeter/SayHello (unary: greeter.HelloRequest -> greeter.HelloReply)",
            "greeter.Greeter/LotsOfReplies (server streaming: greeter.HelloRequest -> greeter.HelloReply)",
            "greeter.Greeter/LotsOfGreetings (client streaming: greeter.HelloRequest -> greeter.HelloReply)",
            "greeter.Greeter/Chat (bidirectional streaming: greeter.HelloRequest -> greeter.HelloReply)",
            "greeter.Greeter/Notify (fire-and-forget: greeter.HelloRequest -> google.protobuf.Empty)",
            "greeter.Greeter/Missing (unary: greeter.HelloRequest -> greeter.HelloReply)",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_server_stream_client_stream_bidi_and_fnf() {
    let (dir, file) = proto_file("calls");
    let (uri, mut events) = serve(&file).await;
    let proto = file.to_str().unwrap();
    let import = dir.join("protos");
    let import = import.to_str().unwrap();

    let r = run(
        &[
            "rpc",
            &uri,
            "--proto",
            proto,
            "--import-path",
            import,
            "greeter.Greeter/SayHello",
            "-d",
            r#"{"name":"world"}"#,
        ],
        "",
    )
    .await;
    r.expect_code(0);
    assert_eq!(r.lines(), [r#"{"message":"hello, world"}"#]);
    assert_eq!(
        next_event(&mut events).await,
        "setup application/vnd.google.protobuf message/x.rsocket.composite-metadata.v0"
    );
    assert_eq!(next_event(&mut events).await, "rr greeter.Greeter/SayHello");

    let r = run(
        &[
            "rpc",
            &uri,
            "--proto",
            proto,
            "greeter.Greeter/LotsOfReplies",
            "-d",
            r#"{"name":"ann","count":3}"#,
        ],
        "",
    )
    .await;
    r.expect_code(0);
    assert_eq!(
        r.lines(),
        [
            r#"{"message":"hello #0, ann"}"#,
            r#"{"message":"hello #1, ann"}"#,
            r#"{"message":"hello #2, ann"}"#
        ]
    );

    let r = run(
        &[
            "rpc",
            &uri,
            "--proto",
            proto,
            "greeter.Greeter/LotsOfGreetings",
        ],
        "{\"name\":\"a\"}\n\n{\"name\":\"b\"}\n",
    )
    .await;
    r.expect_code(0);
    assert_eq!(r.lines(), [r#"{"message":"hello, a & b"}"#]);

    let r = run(
        &["rpc", &uri, "--proto", proto, "greeter.Greeter/Chat"],
        "{\"name\":\"x\"}\n{\"name\":\"y\"}\n",
    )
    .await;
    r.expect_code(0);
    assert_eq!(
        r.lines(),
        [r#"{"message":"hi x"}"#, r#"{"message":"hi y"}"#]
    );

    let r = run(
        &[
            "rpc",
            &uri,
            "--proto",
            proto,
            "greeter.Greeter/Notify",
            "-d",
            r#"{"name":"n"}"#,
        ],
        "",
    )
    .await;
    r.expect_code(0);
    assert_eq!(r.stdout, "");
    // Channels start with a header payload without data.
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &String| e.starts_with("fnf ")) {
        seen.push(next_event(&mut events).await);
    }
    assert!(
        seen.contains(&"channel greeter.Greeter/LotsOfGreetings header-data=0".to_owned()),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"channel greeter.Greeter/Chat header-data=0".to_owned()),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"fnf greeter.Greeter/Notify n".to_owned()),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_reported_with_exit_status() {
    let (_dir, file) = proto_file("errors");
    let (uri, _events) = serve(&file).await;
    let proto = file.to_str().unwrap();
    // Bad JSON: rejected before any request, exit 2.
    let r = run(
        &[
            "rpc",
            &uri,
            "--proto",
            proto,
            "greeter.Greeter/SayHello",
            "-d",
            r#"{"name":7}"#,
        ],
        "",
    )
    .await;
    r.expect_code(2);
    assert!(r.stderr.contains("greeter.HelloRequest"), "{}", r.stderr);
    // Unknown method in the .proto: exit 2.
    run(&["rpc", &uri, "--proto", proto, "greeter.Greeter/Nope"], "")
        .await
        .expect_code(2);
    // A server error: exit 1 with the code and message.
    let r = run(
        &["rpc", &uri, "--proto", proto, "greeter.Greeter/Missing"],
        "",
    )
    .await;
    r.expect_code(1);
    assert!(r.stderr.contains("APPLICATION_ERROR"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("UNIMPLEMENTED: no method greeter.Greeter/Missing"),
        "{}",
        r.stderr
    );
    // A bad message mid-stream ends the call with an error.
    let r = run(
        &[
            "rpc",
            &uri,
            "--proto",
            proto,
            "greeter.Greeter/LotsOfGreetings",
        ],
        "{\"name\":\"a\"}\nnot json\n",
    )
    .await;
    assert_ne!(r.code, 0, "{r:#?}");
    assert!(
        r.stderr.contains("not a valid greeter.HelloRequest"),
        "{}",
        r.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_input_feeds_one_thing() {
    let (_dir, file) = proto_file("stdin");
    let (uri, _events) = serve(&file).await;
    let proto = file.to_str().unwrap();
    // A client stream reads its messages from standard input: --setup-data
    // may not take it first (the stream would be sent empty).
    for extra in [
        &["greeter.Greeter/LotsOfGreetings", "--setup-data", "-"][..],
        &["greeter.Greeter/Chat", "--setup-metadata", "-"],
        &["greeter.Greeter/SayHello", "-d", "-", "--setup-data", "-"],
    ] {
        let mut args = vec!["rpc", &uri, "--proto", proto];
        args.extend_from_slice(extra);
        let r = run(&args, "{\"name\":\"a\"}\n").await;
        r.expect_code(2);
        assert!(
            r.stderr.contains("standard input can feed only one thing"),
            "{extra:?}: {}",
            r.stderr
        );
    }
}
