//! Generates the RPC greeter's server and client from `proto/greeter.proto`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    rsocket_rpc_build::configure()
        .fire_and_forget("greeter.Greeter/Notify")
        .compile_protos(&["proto/greeter.proto"], &["proto"])?;
    Ok(())
}
