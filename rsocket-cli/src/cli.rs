//! Command-line arguments (clap derive).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Talk to an RSocket server, serve an echo responder, call protobuf RPC
/// methods from a `.proto`, or load-test a server.
///
/// Without a subcommand: one interaction with the server at URI
/// (request/response unless --fnf, --stream, --channel or --metadata-push).
/// Replies go to standard output, one per line; errors and --debug frames
/// go to standard error. The exit status is 1 when the server answers with
/// an ERROR frame, 2 for any other failure.
#[derive(Debug, Parser)]
#[command(
    name = "rsocket",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    #[command(flatten)]
    pub(crate) client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run an echo server: `rsocket serve tcp://127.0.0.1:0 --echo`.
    Serve(ServeArgs),
    /// Load-test a server and report throughput and latency percentiles.
    Bench(BenchArgs),
    /// Call a protobuf RPC method described by a `.proto` file.
    Rpc(RpcArgs),
}

/// How to reach the server and what to announce in SETUP; shared by the
/// client, `bench` and `rpc`.
#[derive(Debug, Args)]
pub(crate) struct ConnArgs {
    /// Extra WebSocket handshake header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub(crate) headers: Vec<String>,
    /// Keepalive interval announced in SETUP (`20s`, `500ms`, `1m`).
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = parse_duration)]
    pub(crate) keepalive: Duration,
    /// Max lifetime announced in SETUP: the connection is dropped when
    /// nothing arrives for this long.
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = parse_duration)]
    pub(crate) lifetime: Duration,
    /// Data of the SETUP payload: text, `@file` or `-` (standard input).
    #[arg(long, value_name = "DATA")]
    pub(crate) setup_data: Option<String>,
    /// Metadata of the SETUP payload: text, `@file` or `-`.
    #[arg(long, value_name = "METADATA")]
    pub(crate) setup_metadata: Option<String>,
    /// Authentication metadata: `bearer:TOKEN` or `simple:USER:PASSWORD`
    /// (sent in composite metadata with each request).
    #[arg(long, value_name = "SCHEME:CREDENTIALS")]
    pub(crate) auth: Option<String>,
    /// Print every frame sent and received, decoded and in hex, to
    /// standard error.
    #[arg(long)]
    pub(crate) debug: bool,
    /// `wss://`: trust these PEM certificates (in addition to the system
    /// roots).
    #[arg(long, value_name = "PEM FILE")]
    pub(crate) ca_file: Option<PathBuf>,
    /// `wss://`: accept any server certificate (self-signed development
    /// servers only).
    #[arg(long)]
    pub(crate) insecure: bool,
    /// Make the connection a resumable session (SETUP with a resume token):
    /// when the transport breaks, reconnect to the same URI and resume.
    /// The server must enable resumption (else `REJECTED_SETUP`).
    #[arg(long)]
    pub(crate) resume: bool,
    /// Ask for leasing (SETUP with the L flag): every request waits, up to
    /// --lease-wait, for the server's lease, and fails without one. The
    /// server must lease (else `UNSUPPORTED_SETUP`).
    #[arg(long)]
    pub(crate) lease: bool,
    /// With --lease: how long a request waits for a lease.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) lease_wait: Duration,
}

/// One interaction with a server.
#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    /// Server URI: `tcp://host:port`, `ws://host:port/path` or
    /// `wss://host:port/path`.
    #[arg(required = true)]
    pub(crate) uri: Option<String>,
    /// Fire-and-forget instead of request/response.
    #[arg(long, group = "interaction")]
    pub(crate) fnf: bool,
    /// Request/stream: print each item as it arrives.
    #[arg(long, group = "interaction")]
    pub(crate) stream: bool,
    /// Request/channel: lines of standard input become payloads (after
    /// --data, when given); replies are printed as they arrive.
    #[arg(long, group = "interaction")]
    pub(crate) channel: bool,
    /// Metadata push (stream 0) of --metadata (with --route and --auth, as
    /// composite metadata).
    #[arg(long, group = "interaction")]
    pub(crate) metadata_push: bool,
    /// Request data: text, `@file` or `-` (standard input).
    #[arg(short, long, value_name = "DATA")]
    pub(crate) data: Option<String>,
    /// Request metadata: text, `@file` or `-`. With --route or --auth it
    /// becomes one entry of the composite metadata, typed by
    /// --metadata-mime.
    #[arg(short, long, value_name = "METADATA")]
    pub(crate) metadata: Option<String>,
    /// Route, sent as a routing entry of composite metadata.
    #[arg(short, long)]
    pub(crate) route: Option<String>,
    #[command(flatten)]
    pub(crate) mime: MimeArgs,
    /// Initial credit of a stream (REQUEST_STREAM's request-n); then one
    /// REQUEST_N of this size each time that many items have arrived. For
    /// a channel: its credit window, like --prefetch.
    #[arg(short = 'n', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=0x7FFF_FFFF))]
    pub(crate) request_n: Option<u32>,
    /// Cancel a stream or channel after N items.
    #[arg(long, value_name = "N")]
    pub(crate) take: Option<u64>,
    /// Fixed credit window of a stream or channel: initial request-n, then
    /// REQUEST_N as half of it is consumed (default: the engine's window,
    /// 256 at first, growing up to 4,096 while items are small).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=0x7FFF_FFFF))]
    pub(crate) prefetch: Option<u32>,
    /// One JSON object per line: `{"event":"next","data":..}`, then
    /// `complete`, `cancel` or `error` (`sent` for fire-and-forget and
    /// metadata push).
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
}

/// MIME types announced in SETUP.
#[derive(Debug, Args, Clone)]
pub(crate) struct MimeArgs {
    /// Data MIME type announced in SETUP.
    #[arg(long, value_name = "MIME", default_value = "application/octet-stream")]
    pub(crate) data_mime: String,
    /// MIME type of --metadata. Without --route and --auth it is the
    /// metadata MIME type of SETUP; with them, SETUP announces composite
    /// metadata and this types the --metadata entry.
    #[arg(long, value_name = "MIME", default_value = "application/octet-stream")]
    pub(crate) metadata_mime: String,
}

/// `rsocket serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Where to listen: `tcp://127.0.0.1:0` or `ws://127.0.0.1:0/path`
    /// (port 0 picks a free port). The bound URI is printed on the first
    /// line of standard output.
    pub(crate) uri: String,
    /// Answer every interaction: request/response echo, a stream of N
    /// items (`0`..`N-1`) when the data is a number N (else the request
    /// once), channel echo; fire-and-forget and metadata push are accepted
    /// (and printed with --verbose).
    #[arg(long)]
    pub(crate) echo: bool,
    /// Print one line per request received (and CANCEL) to standard output.
    #[arg(short, long)]
    pub(crate) verbose: bool,
    /// Print every frame, decoded and in hex, to standard error.
    #[arg(long)]
    pub(crate) debug: bool,
    /// Keep the sessions of clients that ask for resumption when their
    /// transport breaks (for two minutes), so that they can resume.
    #[arg(long)]
    pub(crate) resume: bool,
    /// Lease to clients that ask for it: `N/DURATION` grants N requests
    /// for DURATION, again every DURATION (`100/10s`). Clients that do not
    /// ask are served without lease.
    #[arg(long, value_name = "N/DURATION", value_parser = parse_lease)]
    pub(crate) lease: Option<(u32, Duration)>,
}

/// `N/DURATION`, as `--lease` takes it.
fn parse_lease(s: &str) -> Result<(u32, Duration), String> {
    let (n, ttl) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected N/DURATION, for example 100/10s"))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("{n:?}: not a number of requests"))?;
    let ttl = parse_duration(ttl)?;
    if ttl.is_zero() {
        return Err("the lease duration must be greater than zero".into());
    }
    Ok((n, ttl))
}

/// The interaction a benchmark drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Interaction {
    /// Request/response: one operation per reply.
    Rr,
    /// Request/stream of --items items (the data is the number, as the
    /// echo server and the interop servers expect): one operation per
    /// stream, from request to completion.
    Stream,
    /// Fire-and-forget: one operation per frame queued.
    Fnf,
    /// One channel per worker, ping-pong: one operation per reply.
    Channel,
}

/// `rsocket bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Server URI.
    pub(crate) uri: String,
    /// What to drive.
    #[arg(short, long, value_enum, default_value = "rr")]
    pub(crate) interaction: Interaction,
    /// Concurrent workers, each with one operation in flight.
    #[arg(short, long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) concurrency: u32,
    /// Connections the workers are spread over.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub(crate) connections: u32,
    /// How long to run (`10s`, `500ms`, `1m`).
    #[arg(short, long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Request data size in bytes (rr, fnf, channel), at most 64 MiB (the
    /// largest request a server takes by default).
    #[arg(short, long, default_value_t = 64, value_parser = parse_size)]
    pub(crate) size: usize,
    /// Items per stream (stream).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) items: u32,
    /// Route, sent as a routing entry of composite metadata.
    #[arg(short, long)]
    pub(crate) route: Option<String>,
    #[command(flatten)]
    pub(crate) mime: MimeArgs,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
}

/// `rsocket rpc`.
#[derive(Debug, Args)]
pub(crate) struct RpcArgs {
    /// Server URI.
    pub(crate) uri: Option<String>,
    /// The method, `package.Service/Method` (not needed with --list).
    pub(crate) method: Option<String>,
    /// `.proto` file(s) to compile (repeatable).
    #[arg(long = "proto", value_name = "FILE", required = true)]
    pub(crate) protos: Vec<PathBuf>,
    /// Directories imports are resolved in (repeatable; default: the
    /// directory of each --proto).
    #[arg(short = 'I', long = "import-path", value_name = "DIR")]
    pub(crate) import_paths: Vec<PathBuf>,
    /// The request message as JSON: text, `@file` or `-`. Client and
    /// bidirectional streams read one JSON message per line of standard
    /// input instead.
    #[arg(short, long, value_name = "JSON")]
    pub(crate) data: Option<String>,
    /// List services and methods instead of calling one.
    #[arg(long)]
    pub(crate) list: bool,
    /// Send as fire-and-forget even if the .proto does not mark the method.
    #[arg(long)]
    pub(crate) fnf: bool,
    /// Cancel a server stream after N replies.
    #[arg(long, value_name = "N")]
    pub(crate) take: Option<u64>,
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
}

/// The largest `bench --size`: a server's default reassembly limit
/// (`Config::max_reassembly_bytes`).
pub(crate) const MAX_BENCH_SIZE: usize = 64 << 20;

/// A request size for `bench --size`: bytes, at most [`MAX_BENCH_SIZE`].
fn parse_size(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: not a number of bytes"))?;
    if n > MAX_BENCH_SIZE {
        return Err(format!(
            "{n} bytes is more than a server takes by default ({MAX_BENCH_SIZE}, 64 MiB)"
        ));
    }
    Ok(n)
}

/// Parses `1500ms`, `10s`, `2m`, `1h` or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 10s, 2m"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?}: use ms, s, m or h"
            ))
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("duration {s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn arguments_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("1e400s").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn client_and_subcommands_parse() {
        let cli = Cli::try_parse_from(["rsocket", "tcp://h:1", "--stream", "-d", "5"]).unwrap();
        assert!(cli.command.is_none());
        assert!(cli.client.stream);
        let cli = Cli::try_parse_from(["rsocket", "serve", "tcp://127.0.0.1:0", "--echo"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Serve(_))));
        assert!(Cli::try_parse_from(["rsocket", "tcp://h:1", "--fnf", "--stream"]).is_err());
        assert!(Cli::try_parse_from(["rsocket"]).is_err());
        assert!(Cli::try_parse_from(["rsocket", "tcp://h:1", "-n", "0"]).is_err());
    }
}
