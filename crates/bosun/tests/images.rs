//! `bosun images import|ls|rm` on the busybox archives of the shared image builder.

mod common;

use std::process::Command;

use common::shared_dir;

fn bosun(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bosun"))
        .args(args)
        .output()
        .expect("run bosun")
}

#[test]
fn images_import_list_and_remove() {
    assert!(
        std::path::Path::new("/bin/busybox").exists(),
        "the busybox image needs /bin/busybox (apt-get install busybox-static)"
    );
    let archives = tempfile::tempdir().expect("dir");
    let built = Command::new("python3")
        .arg(shared_dir().join("images/busybox_image.py"))
        .arg(archives.path())
        .output()
        .expect("python3");
    assert!(built.status.success(), "busybox_image.py failed");
    let data = tempfile::tempdir().expect("dir");
    let data = data.path().to_str().expect("path");
    let oci = archives.path().join("busybox-oci.tar");
    let docker = archives.path().join("busybox-docker.tar");
    let out = bosun(&[
        "images",
        "--data-dir",
        data,
        "import",
        oci.to_str().expect("path"),
        docker.to_str().expect("path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("imported docker.io/library/busybox:1.36")
    );
    let ls =
        String::from_utf8_lossy(&bosun(&["images", "--data-dir", data, "ls"]).stdout).into_owned();
    assert!(
        ls.starts_with("IMAGE") && ls.contains("docker.io/library/busybox:1.36"),
        "{ls}"
    );
    let rm = bosun(&["images", "--data-dir", data, "rm", "busybox:1.36"]);
    assert!(rm.status.success());
    let again = bosun(&["images", "--data-dir", data, "rm", "busybox:1.36"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).starts_with("error: cannot remove busybox:1.36"),
        "a clear error, no backtrace"
    );
}

#[test]
fn an_image_a_container_uses_cannot_be_removed() {
    let c = common::Cluster::start_node();
    c.ok(&[
        "run",
        "user",
        "--image=busybox:1.36",
        "--command",
        "--",
        "sleep",
        "3600",
    ]);
    c.ok(&["wait", "--for=condition=Ready", "pod/user", "--timeout=60s"]);
    let data = c.dir.path().to_str().expect("path").to_string();
    let out = bosun(&["images", "--data-dir", &data, "rm", "busybox:1.36"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a container on this node uses it"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.ok(&["delete", "pod", "user", "--grace-period=1"]);
    let out = bosun(&["images", "--data-dir", &data, "rm", "busybox:1.36"]);
    let left: Vec<String> = std::fs::read_dir(c.dir.path().join("agent/containers"))
        .map(|d| {
            d.flatten()
                .map(|e| std::fs::read_to_string(e.path().join("meta.json")).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        out.status.success(),
        "{} {left:?}",
        String::from_utf8_lossy(&out.stderr)
    );
}
