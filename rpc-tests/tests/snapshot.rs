//! The code generated for the test protos (by this crate's build script,
//! on every build) must equal the committed snapshot in `snapshots/`, so a
//! change to the generator shows up as a reviewable diff.
//!
//! After an intended change: `UPDATE_SNAPSHOTS=1 cargo test -p
//! rsocket-rpc-tests --test snapshot`, then review and commit the files.

use std::path::Path;

fn check(file: &str) {
    let generated_path = Path::new(env!("OUT_DIR")).join(file);
    let generated = std::fs::read_to_string(&generated_path).expect("generated file");
    let snapshot_path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("snapshots")
        .join(file);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&snapshot_path, &generated).expect("write snapshot");
        return;
    }
    let snapshot = std::fs::read_to_string(&snapshot_path).unwrap_or_default();
    if snapshot != generated {
        let line = snapshot
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| snapshot.lines().count().min(generated.lines().count()));
        panic!(
            "{} differs from the snapshot {} (first difference at line {}); \
             if the change is intended, rerun with UPDATE_SNAPSHOTS=1 and commit",
            generated_path.display(),
            snapshot_path.display(),
            line + 1
        );
    }
}

#[test]
fn greeter_matches_snapshot() {
    check("greeter.rs");
}

#[test]
fn shared_v1_matches_snapshot() {
    check("shared.v1.rs");
}

#[test]
fn edge_matches_snapshot() {
    check("edge.rs");
}
