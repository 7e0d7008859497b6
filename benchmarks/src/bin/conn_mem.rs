//! Where conn_10k's server memory goes: a server process (this binary with
//! `server`) that counts its heap, and a client that opens N connections
//! to it, each with one open stream (the server's stream sends one item and
//! then waits, like conn_10k's "hold"), and prints the server's growth per
//! connection: live heap bytes and allocations (a counting allocator), the
//! allocator's in-use bytes (`mallinfo2`) and RSS.
//!
//! `cargo run --release --manifest-path benchmarks/Cargo.toml --bin conn_mem -- [N] [ct|mt2]`
//!
//! With `CONN_MEM_WRAP` set (for example `valgrind --tool=dhat
//! --dhat-out-file=dhat.json`), the server runs under that command; it
//! exits (without dropping the connections, so that a heap profiler sees
//! them live at exit) when the client is done. Under valgrind only the heap
//! figures mean anything (`mallinfo2` and RSS are the tool's).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use rsocket_core::{ClientBuilder, Payload, PayloadStream, RSocket, Server};
use rsocket_transport_tcp::{connect, TcpListener};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_ALLOCS: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        LIVE_ALLOCS.fetch_sub(1, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

struct Hold;

impl RSocket for Hold {
    fn request_stream(&self, _req: Payload) -> PayloadStream {
        futures::stream::once(futures::future::ready(Ok(Payload::from("x"))))
            .chain(futures::stream::pending())
            .boxed()
    }
}

fn rss_kb() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn runtime(flavor: &str) -> tokio::runtime::Runtime {
    match flavor {
        "mt2" => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    }
    .expect("runtime")
}

fn server(flavor: &str) {
    runtime(flavor).block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!("ADDR {}", listener.local_addr().expect("addr"));
        let _ = std::io::stdout().flush();
        tokio::spawn(Server::new(|_setup, _requester| async { Ok(Hold) }).serve(listener));
        loop {
            let line = tokio::task::spawn_blocking(|| {
                let mut l = String::new();
                std::io::stdin().read_line(&mut l).ok().map(|_| l)
            })
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
            match line.trim() {
                "STAT" => {
                    // SAFETY: a plain query of glibc's allocator.
                    let mi = unsafe { libc::mallinfo2() };
                    println!(
                        "STAT {} {} {} {}",
                        LIVE_BYTES.load(Ordering::Relaxed),
                        LIVE_ALLOCS.load(Ordering::Relaxed),
                        mi.uordblks,
                        rss_kb()
                    );
                    let _ = std::io::stdout().flush();
                }
                _ => std::process::exit(0),
            }
        }
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("server") {
        server(args.get(1).map_or("ct", String::as_str));
        return;
    }
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let flavor = args.get(1).cloned().unwrap_or_else(|| "ct".into());
    let exe = std::env::current_exe().expect("exe");
    let wrap = std::env::var("CONN_MEM_WRAP").unwrap_or_default();
    let mut cmd: Vec<String> = wrap.split_whitespace().map(String::from).collect();
    cmd.push(exe.display().to_string());
    cmd.push("server".into());
    cmd.push(flavor.clone());
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let mut to = child.stdin.take().expect("stdin");
    let mut from = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    from.read_line(&mut line).expect("addr");
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("ADDR ")
        .and_then(|a| a.parse().ok())
        .expect("server address");
    let mut stat = move || -> Vec<f64> {
        writeln!(to, "STAT").expect("ask");
        to.flush().expect("flush");
        let mut l = String::new();
        from.read_line(&mut l).expect("stat");
        l.split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect()
    };
    let rt = runtime(&flavor);
    let settle = if wrap.is_empty() { 300 } else { 3000 };
    rt.block_on(async move {
        tokio::time::sleep(Duration::from_millis(settle)).await;
        let before = stat();
        let opened: Vec<_> = futures::stream::iter(0..n)
            .map(|_| async move {
                let client = ClientBuilder::new()
                    .connect(connect(addr).await.expect("connect"))
                    .expect("client");
                let mut stream = client.request_stream(Payload::from("hold"));
                stream.next().await.expect("item").expect("ok");
                (client, stream)
            })
            .buffer_unordered(256)
            .collect()
            .await;
        tokio::time::sleep(Duration::from_millis(settle)).await;
        let after = stat();
        let per = |i: usize| (after[i] - before[i]) / n as f64;
        println!(
            "{n} connections ({flavor}): heap {:.0} B/conn in {:.1} allocs/conn; \
             malloc in-use {:.0} B/conn; RSS {:.2} KiB/conn",
            per(0),
            per(1),
            per(2),
            per(3)
        );
        std::mem::forget(opened);
    });
    let _ = child.wait();
}
