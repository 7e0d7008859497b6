//! Method names that cannot all become Rust names as they are.

use rsocket_rpc_build::{configure, Error};

/// Generates `proto` (as `names.proto`) into a fresh directory.
fn generate(name: &str, proto: &str) -> Result<String, Error> {
    let dir = std::env::temp_dir().join(format!(
        "rsocket-rpc-build-names-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("out")).expect("temp dir");
    std::fs::write(dir.join("names.proto"), proto).expect("proto");
    configure()
        .out_dir(dir.join("out"))
        .emit_rerun_if_changed(false)
        .compile_protos(&[dir.join("names.proto")], &[&dir])?;
    Ok(std::fs::read_to_string(dir.join("out").join("names.rs")).expect("generated file"))
}

#[test]
fn two_methods_with_one_rust_name_fail_the_build() {
    let err = generate(
        "same-snake",
        r#"syntax = "proto3";
package names;
message M {}
service S {
  rpc GetHTTPStatus (M) returns (M);
  rpc GetHttpStatus (M) returns (M);
}
"#,
    )
    .expect_err("both are get_http_status");
    assert!(
        matches!(
            &err,
            Error::DuplicateMethodName { service, name, methods }
                if service == "names.S"
                    && name == "get_http_status"
                    && methods == &["GetHTTPStatus".to_owned(), "GetHttpStatus".to_owned()]
        ),
        "{err}"
    );
}

#[test]
fn methods_named_like_the_clients_own_get_an_underscore_on_the_client() {
    let code = generate(
        "client-own",
        r#"syntax = "proto3";
package names;
message M {}
service S {
  rpc New (M) returns (M);
  rpc Client (M) returns (M);
  rpc WithTimeout (M) returns (M);
}
"#,
    )
    .expect("generated");
    for name in ["new", "client", "with_timeout"] {
        // The server trait keeps the name, the client adds `_`.
        assert!(code.contains(&format!("fn {name}(\n")), "{name}:\n{code}");
        assert!(
            code.contains(&format!("pub fn {name}_(")),
            "{name}:\n{code}"
        );
    }
}

#[test]
fn a_message_module_named_like_a_service_module_fails_the_build() {
    // prost-build puts `GameServer`'s nested enum in `mod game_server`.
    let proto = |nested: &str| {
        format!(
            r#"syntax = "proto3";
package names;
message GameServer {{ {nested} }}
service Game {{ rpc Join (GameServer) returns (GameServer); }}
"#
        )
    };
    for (name, nested) in [
        ("clash-enum", "enum State { UP = 0; } State state = 1;"),
        (
            "clash-message",
            "message Player { string id = 1; } Player p = 1;",
        ),
        ("clash-oneof", "oneof which { string a = 1; int32 b = 2; }"),
    ] {
        let err = generate(name, &proto(nested)).expect_err(name);
        assert!(
            matches!(
                &err,
                Error::ModuleNameClash { module, service, message }
                    if module == "game_server" && service == "names.Game"
                        && message == "names.GameServer"
            ),
            "{name}: {err}"
        );
    }
    // No module for the message: no clash.
    for (name, nested) in [
        ("no-clash-plain", "string id = 1;"),
        ("no-clash-map", "map<string, int32> scores = 1;"),
        ("no-clash-optional", "optional string id = 1;"),
    ] {
        generate(name, &proto(nested)).expect(name);
    }
}
