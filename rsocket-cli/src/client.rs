//! One interaction with a server: request/response, fire-and-forget,
//! request/stream, request/channel or metadata push.

use std::sync::{Arc, Mutex};

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use rsocket::frame::FrameType;
use rsocket::{Payload, Requester, ResponseStream};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

use crate::cli::ClientArgs;
use crate::connect::connect;
use crate::input::{parse_auth, payload, plan_metadata, read_opt, setup_params};
use crate::output::{classify, Output, RemoteError};

/// Lines of standard input (any bytes, without the `\n` or `\r\n` that
/// ends them), read as the channel asks for them.
pub(crate) fn stdin_lines() -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let lines = tokio::io::BufReader::new(tokio::io::stdin()).split(b'\n');
    futures::stream::unfold(lines, |mut lines| async move {
        match lines.next_segment().await {
            Ok(Some(mut line)) => {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Some((Ok(Bytes::from(line)), lines))
            }
            Ok(None) => None,
            Err(e) => Some((Err(e), lines)),
        }
    })
}

/// At most one argument may read standard input.
fn check_stdin_use(args: &ClientArgs) -> Result<()> {
    let dashes = [
        args.data.as_deref(),
        args.metadata.as_deref(),
        args.conn.setup_data.as_deref(),
        args.conn.setup_metadata.as_deref(),
    ]
    .iter()
    .filter(|a| **a == Some("-"))
    .count();
    if dashes > 1 || (args.channel && dashes > 0) {
        bail!("standard input can feed only one thing (--channel reads it line by line)");
    }
    Ok(())
}

/// Runs the interaction the arguments ask for.
pub(crate) async fn run(args: ClientArgs) -> Result<()> {
    check_stdin_use(&args)?;
    let uri = args.uri.as_deref().context("a server URI is required")?;
    let auth = args.conn.auth.as_deref().map(parse_auth).transpose()?;
    let metadata = read_opt(args.metadata.as_deref()).await?;
    let plan = plan_metadata(
        args.route.as_deref(),
        auth.as_ref(),
        metadata,
        &args.mime.metadata_mime,
    )?;
    let data = read_opt(args.data.as_deref()).await?;
    let setup = setup_params(&args.conn, &args.mime, plan.setup_mime.clone()).await?;
    let conn = connect(uri, &args.conn, setup).await?;
    let client = &conn.requester;
    let out = Output::new(args.json);

    let result = if args.fnf {
        fire_and_forget(client, payload(data.unwrap_or_default(), &plan), &out).await
    } else if args.metadata_push {
        let md = plan.request.clone().unwrap_or_default();
        metadata_push(client, md, &out).await
    } else if args.stream {
        let p = payload(data.unwrap_or_default(), &plan);
        stream(client, p, &args, &out).await
    } else if args.channel {
        channel(client, data, &plan, &args, &out).await
    } else {
        request_response(client, payload(data.unwrap_or_default(), &plan), &out).await
    };
    if let Err(e) = &result {
        if let Some(remote) = e.downcast_ref::<RemoteError>() {
            // Best effort: the error itself goes to standard error anyway.
            let _ = out.error_event(remote);
        }
    }
    // A fire-and-forget, a metadata push or a CANCEL is only queued when
    // its call returns: close once it is on the wire.
    let last = result.as_ref().ok().copied().flatten();
    conn.close_after(last.map(|t| (t, 1))).await;
    result.map(|_| ())
}

/// What an interaction returns: the frame type to see written before
/// closing, if any.
type Outcome = Result<Option<FrameType>>;

async fn request_response(client: &Requester, p: Payload, out: &Output) -> Outcome {
    if let Some(reply) = client.request_response(p).await.map_err(classify)? {
        out.payload(&reply)?;
    }
    out.event("complete", json!({}))?;
    Ok(None)
}

async fn fire_and_forget(client: &Requester, p: Payload, out: &Output) -> Outcome {
    client.fire_and_forget(p).await.map_err(classify)?;
    out.event("sent", json!({"interaction": "fire_and_forget"}))?;
    Ok(Some(FrameType::RequestFnf))
}

async fn metadata_push(client: &Requester, md: Bytes, out: &Output) -> Outcome {
    client.metadata_push(md).await.map_err(classify)?;
    out.event("sent", json!({"interaction": "metadata_push"}))?;
    Ok(Some(FrameType::MetadataPush))
}

/// Prints items until the stream ends or `--take` is reached (then the
/// stream is dropped, which sends CANCEL). With `--request-n N`, grants N
/// more each time N items have arrived.
async fn consume(
    mut items: ResponseStream,
    request_n: Option<u32>,
    take: Option<u64>,
    out: &Output,
) -> Outcome {
    let mut count: u64 = 0;
    let mut since_grant: u32 = 0;
    if take == Some(0) {
        // Never polled, so never sent.
        drop(items);
        out.event("cancel", json!({"after": 0}))?;
        return Ok(None);
    }
    while let Some(item) = items.next().await {
        let item = item.map_err(classify)?;
        out.payload(&item)?;
        count += 1;
        if take == Some(count) {
            drop(items);
            out.event("cancel", json!({"after": count}))?;
            return Ok(Some(FrameType::Cancel));
        }
        if let Some(n) = request_n {
            since_grant += 1;
            if since_grant == n {
                items.request(n);
                since_grant = 0;
            }
        }
    }
    out.event("complete", json!({"items": count}))?;
    Ok(None)
}

async fn stream(client: &Requester, p: Payload, args: &ClientArgs, out: &Output) -> Outcome {
    let items = match (args.request_n, args.prefetch) {
        (Some(n), _) => client.request_stream_with_credit(p, n),
        (None, Some(window)) => client.with_prefetch(window).request_stream(p),
        (None, None) => client.request_stream(p),
    };
    consume(items, args.request_n, args.take, out).await
}

async fn channel(
    client: &Requester,
    data: Option<Bytes>,
    plan: &crate::input::MetadataPlan,
    args: &ClientArgs,
    out: &Output,
) -> Outcome {
    let mut lines = Box::pin(stdin_lines());
    let first = match data {
        Some(d) => d,
        None => match lines.next().await {
            Some(line) => line.context("reading standard input")?,
            None => bail!("--channel needs a first payload: --data or a line of standard input"),
        },
    };
    // A read error ends the outbound side (COMPLETE); the run then fails
    // with it once the replies have ended.
    let read_error = Arc::new(Mutex::new(None::<std::io::Error>));
    let seen = read_error.clone();
    let rest = lines
        .take_while(move |l| {
            if let Err(e) = l {
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                *seen = Some(std::io::Error::new(e.kind(), e.to_string()));
            }
            futures::future::ready(l.is_ok())
        })
        .filter_map(|l| futures::future::ready(l.ok().map(Payload::new)));
    let requester = match args.request_n.or(args.prefetch) {
        Some(window) => client.with_prefetch(window),
        None => client.clone(),
    };
    let items = requester.request_channel(payload(first, plan), rest);
    let outcome = consume(items, None, args.take, out).await;
    let failed = read_error.lock().unwrap_or_else(|e| e.into_inner()).take();
    match failed {
        Some(e) => {
            Err(anyhow::Error::new(e).context("reading standard input (the channel was cut short)"))
        }
        None => outcome,
    }
}
