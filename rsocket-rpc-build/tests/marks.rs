//! Method marks given to the builder or as proto options: what they accept
//! and the errors for routes they cannot apply to; and leaving out the
//! client or server modules.

use std::path::PathBuf;

use rsocket_rpc_build::{configure, Error};

const PROTO: &str = r#"syntax = "proto3";
package marks;
import "rsocket/options.proto";
message M { string s = 1; }
service S {
  rpc Get (M) returns (M) { option (io.rsocket.rpc.options) = { idempotent: true }; }
  rpc List (M) returns (stream M);
  rpc Talk (stream M) returns (stream M);
}
"#;

/// A fresh directory holding `marks.proto`, and one for the output.
fn workspace(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("rsocket-rpc-build-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("out")).expect("temp dir");
    std::fs::write(dir.join("marks.proto"), PROTO).expect("proto");
    (dir.clone(), dir.join("out"))
}

#[test]
fn idempotent_by_option_and_by_builder() {
    let (dir, out) = workspace("ok");
    configure()
        .out_dir(&out)
        .emit_rerun_if_changed(false)
        .idempotent("marks.S/List")
        .compile_protos(&[dir.join("marks.proto")], &[&dir])
        .expect("generated");
    let code = std::fs::read_to_string(out.join("marks.rs")).expect("generated file");
    let hinted = code.matches("rpc::CallHints::IDEMPOTENT").count();
    assert_eq!(
        hinted, 2,
        "Get (option) and List (builder) are hinted:\n{code}"
    );
    assert!(code.contains("unary_hinted"));
    assert!(code.contains("server_streaming_hinted"));
}

#[test]
fn a_channel_cannot_be_idempotent() {
    let (dir, out) = workspace("channel");
    let err = configure()
        .out_dir(&out)
        .emit_rerun_if_changed(false)
        .idempotent("marks.S/Talk")
        .compile_protos(&[dir.join("marks.proto")], &[&dir])
        .expect_err("a channel");
    assert!(
        matches!(&err, Error::IdempotentNotAllowed { route, .. } if route == "marks.S/Talk"),
        "{err}"
    );
}

#[test]
fn an_unknown_route_fails_the_build() {
    let (dir, out) = workspace("unknown");
    let err = configure()
        .out_dir(&out)
        .emit_rerun_if_changed(false)
        .idempotent("marks.S/Nope")
        .compile_protos(&[dir.join("marks.proto")], &[&dir])
        .expect_err("no such method");
    assert!(
        matches!(&err, Error::UnknownIdempotent { route } if route == "marks.S/Nope"),
        "{err}"
    );
}

#[test]
fn an_unknown_fire_and_forget_route_fails_the_build() {
    let (dir, out) = workspace("fnf-unknown");
    let err = configure()
        .out_dir(&out)
        .emit_rerun_if_changed(false)
        .fire_and_forget("marks.S/Nope")
        .compile_protos(&[dir.join("marks.proto")], &[&dir])
        .expect_err("no such method");
    assert!(
        matches!(&err, Error::UnknownFireAndForget { route } if route == "marks.S/Nope"),
        "{err}"
    );
}

#[test]
fn a_streaming_method_cannot_be_fire_and_forget() {
    for (name, route) in [
        ("fnf-stream", "marks.S/List"),
        ("fnf-channel", "marks.S/Talk"),
    ] {
        let (dir, out) = workspace(name);
        let err = configure()
            .out_dir(&out)
            .emit_rerun_if_changed(false)
            .fire_and_forget(route)
            .compile_protos(&[dir.join("marks.proto")], &[&dir])
            .expect_err("a streaming method");
        assert!(
            matches!(&err, Error::FireAndForgetNotUnary { route: r } if r == route),
            "{err}"
        );
    }
}

/// The generated file with `client` and `server` as given.
fn generated(name: &str, client: bool, server: bool) -> String {
    let (dir, out) = workspace(name);
    configure()
        .out_dir(&out)
        .emit_rerun_if_changed(false)
        .build_client(client)
        .build_server(server)
        .compile_protos(&[dir.join("marks.proto")], &[&dir])
        .expect("generated");
    std::fs::read_to_string(out.join("marks.rs")).expect("generated file")
}

#[test]
fn client_and_server_modules_can_be_left_out() {
    let both = generated("both", true, true);
    assert!(both.contains("pub mod s_client"), "{both}");
    assert!(both.contains("pub mod s_server"), "{both}");

    let server_only = generated("no-client", false, true);
    assert!(!server_only.contains("s_client"), "{server_only}");
    assert!(server_only.contains("pub mod s_server"), "{server_only}");

    let client_only = generated("no-server", true, false);
    assert!(client_only.contains("pub mod s_client"), "{client_only}");
    assert!(!client_only.contains("s_server"), "{client_only}");
    // The messages are generated either way.
    assert!(client_only.contains("pub struct M"), "{client_only}");
    assert!(server_only.contains("pub struct M"), "{server_only}");
}

#[test]
fn a_fire_and_forget_method_cannot_be_idempotent() {
    // Get is idempotent by its option; marking it fire-and-forget too is
    // refused.
    let (dir, out) = workspace("fnf-idempotent");
    let err = configure()
        .out_dir(&out)
        .emit_rerun_if_changed(false)
        .fire_and_forget("marks.S/Get")
        .compile_protos(&[dir.join("marks.proto")], &[&dir])
        .expect_err("fire-and-forget and idempotent");
    assert!(
        matches!(&err, Error::IdempotentNotAllowed { route, .. } if route == "marks.S/Get"),
        "{err}"
    );
}

#[test]
fn prost_build_settings_reach_the_messages() {
    let (dir, out) = workspace("prost-config");
    configure()
        .out_dir(&out)
        .emit_rerun_if_changed(false)
        .prost_config(|config| {
            config.type_attribute("marks.M", "#[derive(Eq, Hash)]");
        })
        .compile_protos(&[dir.join("marks.proto")], &[&dir])
        .expect("generated");
    let code = std::fs::read_to_string(out.join("marks.rs")).expect("generated file");
    assert!(code.contains("#[derive(Eq, Hash)]"), "{code}");

    let (dir, out) = workspace("with-prost-config");
    let mut config = prost_build::Config::new();
    config.type_attribute("marks.M", "#[derive(PartialOrd)]");
    configure()
        .out_dir(&out)
        .emit_rerun_if_changed(false)
        .with_prost_config(config)
        .compile_protos(&[dir.join("marks.proto")], &[&dir])
        .expect("generated");
    let code = std::fs::read_to_string(out.join("marks.rs")).expect("generated file");
    assert!(code.contains("#[derive(PartialOrd)]"), "{code}");
}
