//! The end-to-end suite (`rsocket_tests::scenarios`) instantiated per
//! transport: every scenario runs over the in-memory pair and over TCP.

use rsocket_tests::{Memory, Tcp};

rsocket_tests::suite!(memory, Memory);
rsocket_tests::suite!(tcp, Tcp);
