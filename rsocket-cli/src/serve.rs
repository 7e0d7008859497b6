//! `rsocket serve URI --echo`: an echo responder for trying clients and
//! other implementations against.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use futures::StreamExt;
use rsocket::metadata::{CompositeMetadata, RoutingMetadata, WellKnownMimeType};
use rsocket::prelude::*;
use rsocket::{
    LeaseConfig, LeasePolicy, Listener, MimeType, Payload, PayloadStream, RequestError, Server,
    ServerResumeOptions, SetupInfo, StreamError, Transport,
};

use crate::cli::ServeArgs;
use crate::debug::{preview, FrameLog, Tap};

/// The route that answers with `ERROR[APPLICATION_ERROR]`, the request data
/// as its message.
pub(crate) const ERROR_ROUTE: &str = "error";

/// Prints one line to standard output (ignored if it is closed).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Runs the server until SIGINT or SIGTERM.
pub(crate) async fn run(args: ServeArgs) -> Result<()> {
    if !args.echo {
        bail!("nothing to serve: pass --echo");
    }
    if args.uri.starts_with("wss://") {
        bail!("serve does not do TLS yet: listen on tcp:// or ws://");
    }
    let listener = Listener::bind(&args.uri)
        .await
        .with_context(|| format!("listening on {}", args.uri))?;
    say(&listener.local_uri());
    let verbose = args.verbose;
    let server = Server::new(move |setup: SetupInfo, _requester| async move {
        let composite = setup.metadata_mime_type == MimeType::COMPOSITE_METADATA;
        if verbose {
            say(&format!(
                "SETUP metadata-mime={} data-mime={} from {}",
                String::from_utf8_lossy(setup.metadata_mime_type.as_bytes()),
                String::from_utf8_lossy(setup.data_mime_type.as_bytes()),
                setup
                    .peer
                    .addr
                    .map_or_else(|| "?".to_owned(), |a| a.to_string()),
            ));
        }
        Ok(Echo { verbose, composite })
    })
    .grace_period(Duration::from_secs(2));
    let server = match args.lease {
        Some((requests, ttl)) => {
            server.lease(LeaseConfig::new().policy(LeasePolicy::fixed(ttl, requests)))
        }
        None => server,
    };
    let server = if args.resume {
        server.resumption(ServerResumeOptions::default())
    } else {
        server
    };
    if args.debug {
        let incoming =
            listener.map(|r| r.map(|t| Tap::new(t, Some(FrameLog::new("server")), Arc::default())));
        serve(server, incoming).await
    } else {
        serve(server, listener).await
    }
}

async fn serve<S, T>(server: Server, incoming: S) -> Result<()>
where
    S: Stream<Item = std::io::Result<T>>,
    T: Transport,
{
    server
        .serve_with_shutdown(incoming, shutdown_signal())
        .await
        .context("serving")
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// The echo responder of one connection.
struct Echo {
    verbose: bool,
    composite: bool,
}

impl Echo {
    fn log(&self, what: &str, p: &Payload) {
        if self.verbose {
            let md = p
                .metadata
                .as_ref()
                .map(|m| format!(" metadata={}", preview(m)))
                .unwrap_or_default();
            say(&format!("{what} data={}{md}", preview(&p.data)));
        }
    }

    /// The first routing tag, when metadata is composite.
    fn route(&self, p: &Payload) -> Option<String> {
        if !self.composite {
            return None;
        }
        let md = CompositeMetadata::new(p.metadata.clone()?);
        let routing = md.find(WellKnownMimeType::MessageRSocketRouting).ok()??;
        let tag = RoutingMetadata::new(routing).iter().next()?.ok()?;
        Some(tag.as_str().to_owned())
    }

    fn failure(&self, p: &Payload) -> Option<StreamError> {
        (self.route(p).as_deref() == Some(ERROR_ROUTE))
            .then(|| StreamError::application(String::from_utf8_lossy(&p.data)))
    }
}

/// Says `CANCEL` when dropped before the stream ended.
struct CancelProbe {
    what: &'static str,
    verbose: bool,
    done: bool,
}

impl Drop for CancelProbe {
    fn drop(&mut self) {
        if self.verbose && !self.done {
            say(&format!("CANCEL {}", self.what));
        }
    }
}

/// Wraps `items` so that a cancellation is logged.
fn probed(items: PayloadStream, what: &'static str, verbose: bool) -> PayloadStream {
    let probe = CancelProbe {
        what,
        verbose,
        done: false,
    };
    futures::stream::unfold((items, probe), |(mut items, mut probe)| async move {
        match items.next().await {
            Some(item) => Some((item, (items, probe))),
            None => {
                probe.done = true;
                if probe.verbose {
                    say(&format!("COMPLETE {}", probe.what));
                }
                None
            }
        }
    })
    .boxed()
}

#[async_trait]
impl RSocket for Echo {
    async fn request_response(&self, req: Payload) -> Result<Option<Payload>, RequestError> {
        self.log("REQUEST_RESPONSE", &req);
        if let Some(e) = self.failure(&req) {
            return Err(e.into());
        }
        Ok(Some(req))
    }

    async fn fire_and_forget(&self, req: Payload) -> Result<(), RequestError> {
        self.log("REQUEST_FNF", &req);
        Ok(())
    }

    fn request_stream(&self, req: Payload) -> PayloadStream {
        self.log("REQUEST_STREAM", &req);
        if let Some(e) = self.failure(&req) {
            return rsocket::error_stream(e);
        }
        let count = std::str::from_utf8(&req.data)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        let items = match count {
            Some(n) => {
                futures::stream::iter((0..n).map(|i| Ok(Payload::from(i.to_string())))).boxed()
            }
            None => futures::stream::iter([Ok(req)]).boxed(),
        };
        probed(items, "stream", self.verbose)
    }

    fn request_channel(&self, first: Payload, rest: PayloadStream) -> PayloadStream {
        self.log("REQUEST_CHANNEL", &first);
        if let Some(e) = self.failure(&first) {
            return rsocket::error_stream(e);
        }
        let items = futures::stream::once(async { Ok(first) })
            .chain(rest)
            .boxed();
        probed(items, "channel", self.verbose)
    }

    async fn metadata_push(&self, metadata: Bytes) -> Result<(), RequestError> {
        self.log("METADATA_PUSH", &Payload::metadata_only(metadata));
        Ok(())
    }
}
