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
            eprintln!("error: {e:#}");
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
