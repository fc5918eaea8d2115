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
