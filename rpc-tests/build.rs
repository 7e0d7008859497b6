//! Generates the test services with rsocket-rpc-build.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    rsocket_rpc_build::configure()
        .fire_and_forget("greeter.Greeter/Log")
        .idempotent("greeter.Greeter/LotsOfReplies")
        .compile_protos(&["proto/greeter.proto"], &["proto"])?;
    rsocket_rpc_build::compile_protos(&["proto/edge/edge.proto"], &["proto"])?;
    Ok(())
}
