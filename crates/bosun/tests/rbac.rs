//! End-to-end tests of access control: service account tokens, RBAC, impersonation, reviews.

mod common;

use std::process::Command;

use common::{Cluster, kubectl_path, shared_dir};

#[test]
fn scenario_11_rbac() {
    let c = Cluster::start();
    let script = shared_dir().join("scenarios/11-rbac.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("KUBECONFIG", &c.kubeconfig)
        .env("KUBECTL", kubectl_path())
        .output()
        .expect("run scenario");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("PASS [11-rbac]"),
        "scenario 11 failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn can_i_answers_a_matrix_of_subjects_verbs_and_resources() {
    let c = Cluster::start();
    c.ok(&["create", "namespace", "team"]);
    c.ok(&["-n", "team", "create", "serviceaccount", "dev"]);
    c.ok(&[
        "-n",
        "team",
        "create",
        "rolebinding",
        "dev-edit",
        "--clusterrole=edit",
        "--serviceaccount=team:dev",
    ]);
    c.ok(&[
        "create",
        "clusterrolebinding",
        "auditors-view",
        "--clusterrole=view",
        "--group=auditors",
    ]);
    let can = |args: &[&str]| {
        let out = c.kubectl(&[&["auth", "can-i"], args].concat());
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let dev = "--as=system:serviceaccount:team:dev";
    let cases: &[(&[&str], &str)] = &[
        (&["create", "deployments", "-n", "team", dev], "yes"),
        (&["get", "secrets", "-n", "team", dev], "yes"),
        (&["create", "pods/exec", "-n", "team", dev], "yes"),
        (&["create", "roles", "-n", "team", dev], "no"),
        (&["list", "pods", "-n", "default", dev], "no"),
        (&["list", "nodes", dev], "no"),
        (
            &["list", "pods", "-A", "--as=alice", "--as-group=auditors"],
            "yes",
        ),
        (
            &[
                "get",
                "secrets",
                "-n",
                "team",
                "--as=alice",
                "--as-group=auditors",
            ],
            "no",
        ),
        (
            &[
                "delete",
                "pods",
                "-n",
                "team",
                "--as=alice",
                "--as-group=auditors",
            ],
            "no",
        ),
        (&["delete", "namespaces"], "yes"),
    ];
    for (args, want) in cases {
        assert_eq!(can(args), *want, "kubectl auth can-i {args:?}");
    }
    let whoami = c.ok(&["auth", "whoami"]);
    assert!(
        whoami.contains("admin") && whoami.contains("system:masters"),
        "{whoami}"
    );
}

#[test]
fn a_token_stops_working_when_its_service_account_is_deleted() {
    let c = Cluster::start();
    c.ok(&["create", "serviceaccount", "temp"]);
    c.ok(&[
        "create",
        "clusterrolebinding",
        "temp-view",
        "--clusterrole=view",
        "--serviceaccount=default:temp",
    ]);
    let token = c.ok(&["create", "token", "temp"]);
    let server = c.url();
    let with_token = |args: &[&str]| {
        Command::new(kubectl_path())
            .args([
                &format!("--server={server}"),
                &format!("--token={}", token.trim()),
                &format!(
                    "--certificate-authority={}",
                    c.dir.path().join("tls/ca.crt").display()
                ),
                "--kubeconfig=/dev/null",
            ])
            .args(args)
            .output()
            .expect("kubectl")
    };
    assert!(
        with_token(&["get", "pods"]).status.success(),
        "the token works"
    );
    let denied = with_token(&["get", "secrets"]);
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("cannot list resource \"secrets\""),
        "view excludes secrets"
    );
    c.ok(&["delete", "serviceaccount", "temp"]);
    let gone = with_token(&["get", "pods"]);
    assert!(
        !gone.status.success() && String::from_utf8_lossy(&gone.stderr).contains("Unauthorized"),
        "a deleted account's token is refused"
    );
}
