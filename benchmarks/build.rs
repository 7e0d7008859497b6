//! Generates the tonic/prost code for `proto/bench.proto` with protox (a
//! protobuf compiler in Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/bench.proto");
    let fds = protox::compile(["bench.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // `bytes` fields as `bytes::Bytes`: clones are reference counts.
        .bytes(".")
        .compile_fds(fds)?;
    // The same .proto for rsocket-rpc, in a subdirectory (both generators
    // write `bench.rs`).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("rpc");
    rsocket_rpc_build::configure()
        .out_dir(out)
        .prost_config(|config| {
            config.bytes(["."]);
        })
        .compile_protos(&["proto/bench.proto"], &["proto"])?;
    Ok(())
}
