//! Every RPC scenario over the in-memory and TCP transports.
rsocket_rpc_tests::rpc_suite!(memory, rsocket_tests::Memory);
rsocket_rpc_tests::rpc_suite!(tcp, rsocket_tests::Tcp);
