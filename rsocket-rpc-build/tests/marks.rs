//! Method marks given to the builder or as proto options: what they accept
//! and the errors for routes they cannot apply to.

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
