//! The physical limit: tokio TCP with a 3-byte length prefix and batched
//! writes (every frame ready is appended to one buffer, written with one
//! `write_all`), trivial purpose-built servers, no protocol at all.
//!
//! Raw TCP cannot multiplex, so `head_of_line` does not apply, and it has
//! no message credit: `slow_consumer` shows what the kernel socket buffers
//! absorb.

use std::any::Any;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};

use crate::common::*;
use crate::Workload;

const BATCH: usize = 64 * 1024;

fn frame(body: &[u8]) -> Vec<u8> {
    let l = body.len();
    let mut v = Vec::with_capacity(3 + l);
    v.extend_from_slice(&[(l >> 16) as u8, (l >> 8) as u8, l as u8]);
    v.extend_from_slice(body);
    v
}

/// Splits every complete frame off the front of `buf`.
fn next_frame(buf: &mut BytesMut) -> Option<Bytes> {
    if buf.len() < 3 {
        return None;
    }
    let l = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
    if buf.len() < 3 + l {
        return None;
    }
    buf.advance(3);
    Some(buf.split_to(l).freeze())
}

async fn listen() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let a = l.local_addr().expect("addr");
    (l, a)
}

async fn dial(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn accept(l: &TcpListener) -> TcpStream {
    let (s, _) = l.accept().await.expect("accept");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Echo server: reads what is there, echoes every complete frame, one write.
async fn echo(mut s: TcpStream) {
    let mut inb = BytesMut::with_capacity(BATCH);
    let mut out = Vec::with_capacity(BATCH);
    loop {
        match s.read_buf(&mut inb).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while let Some(f) = next_frame(&mut inb) {
            let l = f.len();
            out.extend_from_slice(&[(l >> 16) as u8, (l >> 8) as u8, l as u8]);
            out.extend_from_slice(&f);
        }
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if inb.capacity() < BATCH / 4 {
            inb.reserve(BATCH);
        }
    }
}

/// Stream server: reads "<count> <size>", writes that many frames in
/// 64 KiB batches, counting what it handed to the kernel.
async fn streamer(mut s: TcpStream, produced: Arc<Produced>) {
    let mut inb = BytesMut::with_capacity(256);
    let req = loop {
        if let Some(f) = next_frame(&mut inb) {
            break f;
        }
        match s.read_buf(&mut inb).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    };
    let req = String::from_utf8_lossy(&req).into_owned();
    if req == "hold" {
        let _ = s.write_all(&frame(&payload(SMALL))).await;
        let mut b = [0u8; 64];
        let _ = s.read(&mut b).await;
        return;
    }
    let mut it = req.split_whitespace();
    let n: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let size: usize = it.next().and_then(|v| v.parse().ok()).unwrap_or(SMALL);
    let f = frame(&payload(size));
    let mut out = Vec::with_capacity(BATCH + f.len());
    let mut left = n;
    while left > 0 {
        let mut k = 0;
        while left > 0 && out.len() < BATCH {
            out.extend_from_slice(&f);
            left -= 1;
            k += 1;
        }
        if s.write_all(&out).await.is_err() {
            return;
        }
        produced
            .0
            .fetch_add(k, std::sync::atomic::Ordering::Relaxed);
        out.clear();
    }
}

/// Counting sink for fire-and-forget.
async fn sink(mut s: TcpStream, arrivals: Arc<Arrivals>) {
    let mut inb = BytesMut::with_capacity(BATCH);
    loop {
        match s.read_buf(&mut inb).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        while next_frame(&mut inb).is_some() {
            arrivals.arrive();
        }
        if inb.capacity() < BATCH / 4 {
            inb.reserve(BATCH);
        }
    }
}

/// The least a pipelined request/response client needs on one TCP
/// connection, so that raw TCP is timed like every other implementation
/// (each request its own future in [`rr_driver`], timed from its start to
/// its answer): a request appends its frame to a shared buffer and waits
/// on a oneshot; one task writes whatever has accumulated, one task reads
/// and completes the waiting requests in order (the echo server answers
/// in order).
#[derive(Clone)]
struct RawRr {
    state: Arc<Mutex<RawRrState>>,
    write: Arc<Notify>,
    request: Arc<[u8]>,
}

#[derive(Default)]
struct RawRrState {
    out: Vec<u8>,
    waiting: VecDeque<oneshot::Sender<()>>,
}

impl RawRr {
    fn start(s: TcpStream) -> Self {
        let (mut r, mut w) = s.into_split();
        let state = Arc::new(Mutex::new(RawRrState::default()));
        let write = Arc::new(Notify::new());
        let (st, wake) = (state.clone(), write.clone());
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(BATCH);
            loop {
                wake.notified().await;
                std::mem::swap(&mut buf, &mut st.lock().expect("lock").out);
                if !buf.is_empty() && w.write_all(&buf).await.is_err() {
                    return;
                }
                buf.clear();
            }
        });
        let st = state.clone();
        tokio::spawn(async move {
            let mut inb = BytesMut::with_capacity(BATCH);
            loop {
                match r.read_buf(&mut inb).await {
                    Ok(0) | Err(_) => {
                        st.lock().expect("lock").waiting.clear();
                        return;
                    }
                    Ok(_) => {}
                }
                let mut done = 0;
                while next_frame(&mut inb).is_some() {
                    done += 1;
                }
                let mut g = st.lock().expect("lock");
                let done = done.min(g.waiting.len());
                for tx in g.waiting.drain(..done) {
                    let _ = tx.send(());
                }
                drop(g);
                if inb.capacity() < BATCH / 4 {
                    inb.reserve(BATCH);
                }
            }
        });
        Self {
            state,
            write,
            request: frame(&payload(SMALL)).into(),
        }
    }

    fn call(&self) -> impl std::future::Future<Output = Result<(), String>> {
        let (tx, rx) = oneshot::channel();
        {
            let mut g = self.state.lock().expect("lock");
            g.out.extend_from_slice(&self.request);
            g.waiting.push_back(tx);
        }
        self.write.notify_one();
        async move { rx.await.map_err(|_| "connection closed".to_owned()) }
    }
}

/// Reads frames until `n` arrived (or the cap); counts payload bytes.
async fn read_frames(
    s: &mut (impl AsyncReadExt + Unpin),
    n: u64,
    cap: Duration,
) -> (u64, u64, Option<String>) {
    let deadline = Instant::now() + cap;
    let mut inb = BytesMut::with_capacity(4 * BATCH);
    let (mut got, mut bytes) = (0u64, 0u64);
    while got < n {
        match s.read_buf(&mut inb).await {
            Ok(0) => return (got, bytes, Some("closed early".into())),
            Err(e) => return (got, bytes, Some(e.to_string())),
            Ok(_) => {}
        }
        while let Some(f) = next_frame(&mut inb) {
            got += 1;
            bytes += f.len() as u64;
        }
        if inb.capacity() < BATCH {
            inb.reserve(4 * BATCH);
        }
        if Instant::now() >= deadline {
            return (got, bytes, Some(format!("capped at {} s", cap.as_secs())));
        }
    }
    (got, bytes, None)
}

/// Writes `n` copies of `f` in 64 KiB batches.
async fn write_frames(
    s: &mut (impl AsyncWriteExt + Unpin),
    f: &[u8],
    n: u64,
    deadline: Instant,
) -> std::io::Result<u64> {
    let mut out = Vec::with_capacity(BATCH + f.len());
    let mut sent = 0;
    while sent < n {
        while sent < n && out.len() < BATCH {
            out.extend_from_slice(f);
            sent += 1;
        }
        s.write_all(&out).await?;
        out.clear();
        if Instant::now() >= deadline {
            break;
        }
    }
    Ok(sent)
}

pub async fn run(w: Workload, sizes: Sizes) -> Outcome {
    let (l, addr) = listen().await;
    let produced = Arc::new(Produced::default());
    let arrivals = Arrivals::new();
    match w {
        Workload::RrSeq | Workload::RrC64 | Workload::RrC256 => {
            tokio::spawn(async move { echo(accept(&l).await).await });
            let client = RawRr::start(dial(addr).await.expect("connect"));
            rr_driver(sizes, w.concurrency(), move || client.call()).await
        }
        Workload::Stream64 | Workload::Stream16k => {
            let (n, size) = w.stream_shape(sizes);
            let p = produced.clone();
            tokio::spawn(async move { streamer(accept(&l).await, p).await });
            let mut s = dial(addr).await.expect("connect");
            let meter = Meter::start();
            s.write_all(&frame(format!("{n} {size}").as_bytes()))
                .await
                .expect("request");
            let (got, bytes, problem) = read_frames(&mut s, n, sizes.cap).await;
            throughput(&meter, got, bytes, problem, n)
        }
        Workload::Channel64 => {
            let n = sizes.channel_64;
            tokio::spawn(async move { echo(accept(&l).await).await });
            let s = dial(addr).await.expect("connect");
            let (mut r, mut wr) = s.into_split();
            let meter = Meter::start();
            let deadline = Instant::now() + sizes.cap;
            let writer = tokio::spawn(async move {
                let f = frame(&payload(SMALL));
                let r = write_frames(&mut wr, &f, n, deadline).await;
                (r, wr)
            });
            let (got, bytes, problem) = read_frames(&mut r, n, sizes.cap).await;
            drop(writer);
            throughput(&meter, got, bytes, problem, n)
        }
        Workload::Fnf64 => {
            let n = sizes.fnf_64;
            let a = arrivals.clone();
            tokio::spawn(async move { sink(accept(&l).await, a).await });
            let mut s = dial(addr).await.expect("connect");
            let meter = Meter::start();
            let f = frame(&payload(SMALL));
            let sent = match write_frames(&mut s, &f, n, Instant::now() + sizes.cap).await {
                Ok(v) => v,
                Err(e) => return Outcome::failed(e.to_string()),
            };
            let got = arrivals.wait(sent, sizes.cap).await;
            let problem = (sent < n).then(|| format!("capped at {} s", sizes.cap.as_secs()));
            throughput(&meter, got, got * SMALL as u64, problem, n)
        }
        Workload::SlowConsumer => {
            let p = produced.clone();
            tokio::spawn(async move { streamer(accept(&l).await, p).await });
            let before = rss_kb();
            let mut s = dial(addr).await.expect("connect");
            s.write_all(&frame(format!("{} {}", sizes.slow_total, SMALL).as_bytes()))
                .await
                .expect("request");
            // consume 10 frames (reading exactly their bytes), then stop reading
            let mut buf = vec![0u8; (3 + SMALL) * sizes.slow_consume as usize];
            s.read_exact(&mut buf).await.expect("items");
            tokio::time::sleep(sizes.slow_hold).await;
            let after = rss_kb();
            let mut o = Outcome {
                ops: sizes.slow_consume,
                rss_growth_kb: Some(after as f64 - before as f64),
                produced: Some(produced.get()),
                peak_rss_kb: mem().hwm_kb,
                ..Outcome::default()
            };
            o.add_note("no credit: the producer runs until the kernel socket buffers are full");
            o
        }
        Workload::HeadOfLine => Outcome {
            failed: true,
            note: "n/a: one raw TCP byte stream cannot multiplex".into(),
            ..Outcome::default()
        },
        Workload::Conn10k => unreachable!(),
    }
}

pub async fn conn_server() -> SocketAddr {
    let (l, addr) = listen().await;
    let produced = Arc::new(Produced::default());
    tokio::spawn(async move {
        loop {
            let s = accept(&l).await;
            tokio::spawn(streamer(s, produced.clone()));
        }
    });
    addr
}

pub async fn conn_open(addr: SocketAddr) -> Result<Box<dyn Any + Send>, String> {
    let mut s = dial(addr).await.map_err(|e| e.to_string())?;
    s.write_all(&frame(b"hold"))
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 3 + SMALL];
    tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut buf))
        .await
        .map_err(|_| "no first item in 30 s".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(Box::new(s))
}
