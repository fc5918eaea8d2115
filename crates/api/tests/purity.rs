//! `api` is pure: its dependency tree holds no runtime, HTTP stack or database. A change that
//! pulls one in fails here, so the object model stays testable and cheap to build.

use std::process::Command;

#[test]
fn api_depends_on_no_io_crates() {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "-p", "api", "-e", "normal", "--prefix", "none"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    for forbidden in ["tokio", "hyper", "redb", "axum", "rustls", "kube", "mio"] {
        assert!(
            !tree.lines().any(|l| l.split(' ').next() == Some(forbidden)),
            "the api crate now depends on {forbidden}:\n{tree}"
        );
    }
}
