//! The scripted peer shared by the scripted-frame tests: the engine gets a
//! transport, the test holds the raw end of the same pipe and reads and
//! writes frames by hand.

// Each test file uses its own subset.
#![allow(dead_code)]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rsocket_core::codec::FrameCodec;
use rsocket_core::frame::{Frame, RequestCount, StreamId};
use rsocket_core::{MemoryTransport, StreamTransport};
use tokio::io::DuplexStream;
use tokio::time::timeout;
use tokio_util::codec::Framed;

/// How long any single step may take before the test fails.
pub(crate) const WAIT: Duration = Duration::from_secs(5);

/// The script's end: raw frames with the 24-bit length prefix.
pub(crate) type Raw = Framed<DuplexStream, FrameCodec>;

/// A transport for the engine and the script's raw end of the same pipe.
pub(crate) fn raw_pair() -> (MemoryTransport, Raw) {
    let (engine, script) = tokio::io::duplex(64 << 10);
    let (r, w) = tokio::io::split(engine);
    (
        StreamTransport::new(r, w),
        Framed::new(script, FrameCodec::new()),
    )
}

/// The next frame the engine sends.
pub(crate) async fn expect_frame(raw: &mut Raw) -> Frame {
    match timeout(WAIT, raw.next()).await {
        Ok(Some(Ok(b))) => Frame::decode(b.clone())
            .unwrap_or_else(|e| panic!("engine sent an undecodable frame {b:02x?}: {e}")),
        Ok(Some(Err(e))) => panic!("codec error while expecting a frame: {e}"),
        Ok(None) => panic!("transport closed while a frame was expected"),
        Err(_) => panic!("no frame within {WAIT:?}"),
    }
}

/// The engine closes the transport with no further frame.
pub(crate) async fn expect_closed(raw: &mut Raw) {
    match timeout(WAIT, raw.next()).await {
        Ok(None) => {}
        Ok(Some(Ok(b))) => panic!("expected close, got frame {:?}", Frame::decode(b)),
        Ok(Some(Err(e))) => panic!("expected a clean close, got {e}"),
        Err(_) => panic!("transport not closed within {WAIT:?}"),
    }
}

/// Sends a frame to the engine.
pub(crate) async fn send(raw: &mut Raw, frame: Frame) {
    timeout(WAIT, raw.send(frame))
        .await
        .expect("send timed out")
        .expect("send failed");
}

/// Awaits a future that must finish promptly.
pub(crate) async fn prompt<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: not finished within {WAIT:?}"))
}

pub(crate) fn sid(n: u32) -> StreamId {
    StreamId::new(n).expect("valid stream id")
}

pub(crate) fn count(n: u32) -> RequestCount {
    RequestCount::new(n).expect("valid request-n")
}
