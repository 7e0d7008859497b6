//! `rsocket rpc`: protobuf RPC calls from a `.proto` compiled at run time
//! (protox), with JSON converted to and from protobuf (prost-reflect).
//!
//! The wire format is the RPC layer's: SETUP announces
//! `application/vnd.google.protobuf` data and composite metadata; every
//! request carries a routing entry `package.Service/Method`; unary calls
//! are request/response, server streams request/stream, client and
//! bidirectional streams a request/channel whose first payload is the
//! header (route, no data) and whose later payloads are the messages;
//! methods marked `(io.rsocket.rpc.options).fire_and_forget` (or called
//! with `--fnf`) are fire-and-forget.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use futures::StreamExt;
use prost_reflect::prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, MethodDescriptor};
use protox::file::{
    ChainFileResolver, File, FileResolver, GoogleFileResolver, IncludeFileResolver,
};
use rsocket::frame::FrameType;
use rsocket::{MimeType, Payload, RequestError, Requester, StreamError};

use crate::cli::{MimeArgs, RpcArgs};
use crate::client::stdin_lines;
use crate::connect::connect;
use crate::input::{parse_auth, plan_metadata, read_value, setup_params, MetadataPlan};
use crate::output::{classify, Output};

/// Data MIME type of RPC connections.
const DATA_MIME: &str = "application/vnd.google.protobuf";
/// Where the fire-and-forget method option is importable from.
const OPTIONS_PATH: &str = "rsocket/options.proto";
/// The fire-and-forget method option (field 1057 of MethodOptions, as in
/// rsocket-rpc-java).
const OPTIONS_SOURCE: &str = "syntax = \"proto3\";\n\
package io.rsocket.rpc;\n\
import \"google/protobuf/descriptor.proto\";\n\
extend google.protobuf.MethodOptions { RSocketMethodOptions options = 1057; }\n\
message RSocketMethodOptions { bool fire_and_forget = 1; }\n";
/// The extension's full name.
const OPTIONS_EXTENSION: &str = "io.rsocket.rpc.options";

/// Serves `rsocket/options.proto` from memory.
struct OptionsFile;

impl FileResolver for OptionsFile {
    fn open_file(&self, name: &str) -> Result<File, protox::Error> {
        if name == OPTIONS_PATH {
            File::from_source(name, OPTIONS_SOURCE)
        } else {
            Err(protox::Error::file_not_found(name))
        }
    }
}

/// Compiles the `.proto` files; imports resolve in `import_paths` (or each
/// file's directory), then the built-in options and well-known types.
pub(crate) fn compile(protos: &[PathBuf], import_paths: &[PathBuf]) -> Result<DescriptorPool> {
    let mut includes: Vec<PathBuf> = import_paths.to_vec();
    if includes.is_empty() {
        for p in protos {
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
            let dir = dir.map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            if !includes.contains(&dir) {
                includes.push(dir);
            }
        }
    }
    let mut resolver = ChainFileResolver::new();
    for dir in &includes {
        resolver.add(IncludeFileResolver::new(dir.clone()));
    }
    resolver.add(OptionsFile);
    resolver.add(GoogleFileResolver::new());
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true);
    for p in protos {
        compiler
            .open_file(p)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("compiling {}", p.display()))?;
    }
    Ok(compiler.descriptor_pool())
}

/// How a method is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Unary,
    ServerStream,
    ClientStream,
    Bidi,
    FireAndForget,
}

impl Kind {
    fn of(method: &MethodDescriptor, pool: &DescriptorPool) -> Self {
        match (method.is_client_streaming(), method.is_server_streaming()) {
            (false, false) if marked_fire_and_forget(method, pool) => Self::FireAndForget,
            (false, false) => Self::Unary,
            (false, true) => Self::ServerStream,
            (true, false) => Self::ClientStream,
            (true, true) => Self::Bidi,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Unary => "unary",
            Self::ServerStream => "server streaming",
            Self::ClientStream => "client streaming",
            Self::Bidi => "bidirectional streaming",
            Self::FireAndForget => "fire-and-forget",
        }
    }
}

fn marked_fire_and_forget(method: &MethodDescriptor, pool: &DescriptorPool) -> bool {
    let Some(ext) = pool.get_extension_by_name(OPTIONS_EXTENSION) else {
        return false;
    };
    let options = method.options();
    options.has_extension(&ext)
        && options
            .get_extension(&ext)
            .as_message()
            .and_then(|m| m.get_field_by_name("fire_and_forget"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false)
}

/// `package.Service/Method` lines with their kinds.
pub(crate) fn list(pool: &DescriptorPool) -> Vec<String> {
    let mut lines = Vec::new();
    for service in pool.services() {
        for m in service.methods() {
            lines.push(format!(
                "{}/{} ({}: {} -> {})",
                service.full_name(),
                m.name(),
                Kind::of(&m, pool).name(),
                m.input().full_name(),
                m.output().full_name()
            ));
        }
    }
    lines
}

/// Finds `package.Service/Method` (a `.` before the method is accepted).
pub(crate) fn find_method(pool: &DescriptorPool, route: &str) -> Result<MethodDescriptor> {
    let (service, method) = route
        .rsplit_once('/')
        .or_else(|| route.rsplit_once('.'))
        .with_context(|| format!("method {route:?}: expected package.Service/Method"))?;
    let svc = pool
        .get_service_by_name(service)
        .with_context(|| format!("no service {service:?} in the .proto files (try --list)"))?;
    let found = svc.methods().find(|m| m.name() == method);
    found.with_context(|| format!("service {service} has no method {method:?} (try --list)"))
}

/// JSON text to protobuf bytes.
pub(crate) fn encode_json(desc: &MessageDescriptor, json: &str) -> Result<Bytes> {
    let mut de = serde_json::Deserializer::from_str(json);
    let msg = DynamicMessage::deserialize(desc.clone(), &mut de)
        .with_context(|| format!("JSON is not a valid {}", desc.full_name()))?;
    de.end()
        .with_context(|| format!("trailing input after the {} JSON", desc.full_name()))?;
    Ok(Bytes::from(msg.encode_to_vec()))
}

/// Protobuf bytes to one line of JSON.
pub(crate) fn decode_json(desc: &MessageDescriptor, bytes: Bytes) -> Result<String> {
    let msg = DynamicMessage::decode(desc.clone(), bytes)
        .with_context(|| format!("reply is not a valid {}", desc.full_name()))?;
    serde_json::to_string(&msg).context("reply to JSON")
}

/// Lists or calls.
pub(crate) async fn run(args: RpcArgs) -> Result<()> {
    let pool = compile(&args.protos, &args.import_paths)?;
    let out = Output::new(false);
    if args.list {
        for line in list(&pool) {
            out.line(&line)?;
        }
        return Ok(());
    }
    let (Some(uri), Some(route)) = (args.uri.as_deref(), args.method.as_deref()) else {
        bail!("give a server URI and a method (package.Service/Method), or --list");
    };
    let method = find_method(&pool, route)?;
    let route = format!("{}/{}", method.parent_service().full_name(), method.name());
    let kind = if args.fnf {
        Kind::FireAndForget
    } else {
        Kind::of(&method, &pool)
    };
    if args.fnf && (method.is_client_streaming() || method.is_server_streaming()) {
        bail!("--fnf needs a method that is not streaming");
    }
    check_stdin_use(&args, method.is_client_streaming())?;
    let auth = args.conn.auth.as_deref().map(parse_auth).transpose()?;
    let composite = MimeType::COMPOSITE_METADATA;
    let composite_name = String::from_utf8_lossy(composite.as_bytes()).into_owned();
    let plan = plan_metadata(Some(&route), auth.as_ref(), None, &composite_name)?;
    let mime = MimeArgs {
        data_mime: DATA_MIME.to_owned(),
        metadata_mime: composite_name,
    };
    let setup = setup_params(&args.conn, &mime, composite).await?;
    let input = method.input();
    let output = method.output();

    // Unary requests are converted before connecting, so bad JSON fails
    // without touching the network.
    let single = match kind {
        Kind::Unary | Kind::ServerStream | Kind::FireAndForget => {
            let text = match args.data.as_deref() {
                Some(d) => String::from_utf8(read_value(d).await?.to_vec())
                    .context("--data is not UTF-8")?,
                None => "{}".to_owned(),
            };
            Some(encode_json(&input, &text)?)
        }
        Kind::ClientStream | Kind::Bidi => None,
    };
    let conn = connect(uri, &args.conn, setup).await?;
    let result = call(
        &conn.requester,
        kind,
        single,
        &plan,
        &args,
        &input,
        &output,
        &out,
    )
    .await;
    let last = result.as_ref().ok().copied().flatten();
    conn.close_after(last.map(|t| (t, 1))).await;
    result.map(|_| ())
}

/// At most one thing may read standard input: `--data -`, the SETUP's
/// `-`, or the messages of a client stream given without `--data`.
fn check_stdin_use(args: &RpcArgs, client_streaming: bool) -> Result<()> {
    let dashes = [
        args.data.as_deref(),
        args.conn.setup_data.as_deref(),
        args.conn.setup_metadata.as_deref(),
    ]
    .iter()
    .filter(|a| **a == Some("-"))
    .count();
    let stream_reads_stdin = client_streaming && args.data.is_none();
    if dashes + usize::from(stream_reads_stdin) > 1 {
        bail!(
            "standard input can feed only one thing (a client stream without --data \
             reads its messages from it)"
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
async fn call(
    client: &Requester,
    kind: Kind,
    single: Option<Bytes>,
    plan: &MetadataPlan,
    args: &RpcArgs,
    input: &MessageDescriptor,
    output: &MessageDescriptor,
    out: &Output,
) -> Result<Option<FrameType>> {
    let request = |data: Bytes| Payload {
        metadata: plan.request.clone(),
        data,
    };
    let replies = match (kind, single) {
        (Kind::FireAndForget, Some(data)) => {
            client
                .fire_and_forget(request(data))
                .await
                .map_err(classify)?;
            return Ok(Some(FrameType::RequestFnf));
        }
        (Kind::Unary, Some(data)) => {
            if let Some(reply) = client
                .request_response(request(data))
                .await
                .map_err(classify)?
            {
                out.line(&decode_json(output, reply.data)?)?;
            }
            return Ok(None);
        }
        (Kind::ServerStream, Some(data)) => client.request_stream(request(data)),
        _ => {
            let failed = Arc::new(AtomicBool::new(false));
            let messages = streamed_messages(args, input.clone(), failed.clone()).await?;
            let replies = client.request_channel_fallible(request(Bytes::new()), messages);
            let result = print_replies(replies, output, args.take, out).await;
            if failed.load(Ordering::Relaxed) {
                bail!("the call was ended because an input message was invalid");
            }
            return result;
        }
    };
    print_replies(replies, output, args.take, out).await
}

async fn print_replies(
    mut replies: rsocket::ResponseStream,
    output: &MessageDescriptor,
    take: Option<u64>,
    out: &Output,
) -> Result<Option<FrameType>> {
    let mut n = 0;
    if take == Some(0) {
        return Ok(None);
    }
    while let Some(item) = replies.next().await {
        let item = item.map_err(classify)?;
        out.line(&decode_json(output, item.data)?)?;
        n += 1;
        if take == Some(n) {
            // Dropping the stream sends CANCEL.
            return Ok(Some(FrameType::Cancel));
        }
    }
    Ok(None)
}

/// The request messages of a client or bidirectional stream: one JSON
/// message per non-empty line of `--data` (text, `@file` or `-`) or of
/// standard input. A line that does not convert ends the stream with an
/// ERROR to the server and sets `failed`.
async fn streamed_messages(
    args: &RpcArgs,
    input: MessageDescriptor,
    failed: Arc<AtomicBool>,
) -> Result<futures::stream::BoxStream<'static, Result<Payload, RequestError>>> {
    let lines: futures::stream::BoxStream<'static, std::io::Result<String>> = match args
        .data
        .as_deref()
    {
        Some(d) => {
            let text =
                String::from_utf8(read_value(d).await?.to_vec()).context("--data is not UTF-8")?;
            let owned: Vec<_> = text.lines().map(|l| Ok(l.to_owned())).collect();
            futures::stream::iter(owned).boxed()
        }
        None => stdin_lines()
            .map(|line| {
                line.and_then(|l| {
                    String::from_utf8(l.to_vec()).map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::InvalidData, "a line is not UTF-8")
                    })
                })
            })
            .boxed(),
    };
    let mut stopped = false;
    Ok(lines
        .filter(|l| futures::future::ready(!matches!(l, Ok(s) if s.trim().is_empty())))
        .map(move |line| {
            let converted = line
                .context("reading standard input")
                .and_then(|l| encode_json(&input, &l));
            converted.map(Payload::new).map_err(|e| {
                eprintln!("error: {e:#}");
                failed.store(true, Ordering::Relaxed);
                RequestError::Stream(StreamError::invalid(format!("{e:#}")))
            })
        })
        .take_while(move |item| {
            // Stop after the first error has been sent.
            let go = !stopped;
            stopped |= item.is_err();
            futures::future::ready(go)
        })
        .boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
"#;

    /// The test proto compiled; each test writes it to a folder of its own
    /// (tests run in parallel, and one truncating the file another is
    /// reading made that one find no service).
    fn pool(test: &str) -> DescriptorPool {
        let dir = std::env::temp_dir().join(format!(
            "rsocket-cli-rpc-unit-{}-{test}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("greeter.proto");
        std::fs::write(&file, PROTO).unwrap();
        compile(&[file], &[]).unwrap()
    }

    #[test]
    fn kinds_listing_and_json_round_trip() {
        let pool = pool("kinds");
        let listed = list(&pool);
        assert!(
            listed.contains(
                &"greeter.Greeter/SayHello (unary: greeter.HelloRequest -> greeter.HelloReply)"
                    .to_owned()
            ),
            "{listed:?}"
        );
        let kinds: Vec<_> = [
            "SayHello",
            "LotsOfReplies",
            "LotsOfGreetings",
            "Chat",
            "Notify",
        ]
        .iter()
        .map(|m| {
            Kind::of(
                &find_method(&pool, &format!("greeter.Greeter/{m}")).unwrap(),
                &pool,
            )
        })
        .collect();
        assert_eq!(
            kinds,
            [
                Kind::Unary,
                Kind::ServerStream,
                Kind::ClientStream,
                Kind::Bidi,
                Kind::FireAndForget
            ]
        );
        let m = find_method(&pool, "greeter.Greeter.SayHello").unwrap();
        let bytes = encode_json(&m.input(), r#"{"name":"world","count":2}"#).unwrap();
        assert_eq!(&bytes[..], b"\x0a\x05world\x10\x02");
        let back = decode_json(&m.input(), bytes).unwrap();
        assert_eq!(back, r#"{"name":"world","count":2}"#);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let pool = pool("bad-input");
        assert!(find_method(&pool, "greeter.Greeter/Nope").is_err());
        assert!(find_method(&pool, "nope").is_err());
        let m = find_method(&pool, "greeter.Greeter/SayHello").unwrap();
        assert!(encode_json(&m.input(), r#"{"name": 5}"#).is_err());
        assert!(encode_json(&m.input(), r#"{"name": "x"} trailing"#).is_err());
        assert!(decode_json(&m.output(), Bytes::from_static(b"\xff\xff")).is_err());
        assert!(compile(&[PathBuf::from("/nonexistent/x.proto")], &[]).is_err());
    }
}
