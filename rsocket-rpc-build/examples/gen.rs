fn main() {
    let out = std::env::args().nth(1).unwrap();
    rsocket_rpc_build::configure()
        .fire_and_forget("greeter.Greeter/Log")
        .out_dir(&out)
        .emit_rerun_if_changed(false)
        .prost_config(|c| { c.format(false); })
        .compile_protos(&["rpc-tests/proto/greeter.proto"], &["rpc-tests/proto"])
        .unwrap();
}
