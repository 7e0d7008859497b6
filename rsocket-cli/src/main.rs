//! `rsocket`: a command-line RSocket client, echo server, protobuf RPC
//! caller and load generator. See the crate README for examples.
#![forbid(unsafe_code)]

mod bench;
mod cli;
mod client;
mod connect;
mod debug;
mod input;
mod output;
#[cfg(feature = "rpc")]
mod rpc;
mod serve;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};
use crate::output::{OutputClosed, RemoteError};

/// The error and its causes, `: `-separated, as `{:#}` prints them, but
/// without a cause whose text the message already ends with: many errors
/// (`invalid transport URI: {0}`, `WebSocket handshake failed: {0}`)
/// print their source and also return it as their source.
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.is_empty() && out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            None => client::run(cli.client).await,
            Some(Command::Serve(args)) => serve::run(args).await,
            Some(Command::Bench(args)) => bench::run(args).await,
            #[cfg(feature = "rpc")]
            Some(Command::Rpc(args)) => rpc::run(args).await,
            #[cfg(not(feature = "rpc"))]
            Some(Command::Rpc(_)) => Err(anyhow::anyhow!(
                "rsocket was built without the `rpc` feature"
            )),
        }
    });
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<OutputClosed>().is_some() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            if e.downcast_ref::<RemoteError>().is_some() {
                ExitCode::from(1)
            } else {
                ExitCode::from(2)
            }
        }
    };
    // A pending read of standard input (a channel cut short) would hold a
    // normal runtime shutdown: leave it behind.
    runtime.shutdown_background();
    code
}

#[cfg(test)]
mod tests {
    use super::message;

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        /// Prints its source and returns it as its source.
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "outer: {}", self.0)
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = anyhow::Error::new(Outer(std::io::Error::other("inner"))).context("doing");
        assert_eq!(message(&e), "doing: outer: inner");
        let e = anyhow::Error::new(std::io::Error::other("inner")).context("doing");
        assert_eq!(message(&e), "doing: inner");
    }
}
