//! The end-to-end suite (`rsocket_tests::scenarios`) instantiated per
//! transport: every scenario runs over the in-memory pair, over TCP and over WebSocket.

use rsocket_tests::{Memory, Tcp, Ws};

rsocket_tests::suite!(memory, Memory);
rsocket_tests::suite!(tcp, Tcp);
rsocket_tests::suite!(ws, Ws);
