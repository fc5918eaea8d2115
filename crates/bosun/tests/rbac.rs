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
    let with_token = |args: &[&str]| c.kubectl_as_token(token.trim(), args);
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

#[test]
fn no_one_grants_what_they_do_not_hold() {
    let dir = tempfile::tempdir().expect("dir");
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "bob-token,bob,1001,\"devs\"\n").expect("token file");
    let c = Cluster::start_with(&["--token-auth-file", tokens.to_str().expect("path")]);
    c.ok(&["create", "namespace", "team"]);
    // bob may manage roles in team (without the escalate and bind verbs), and read pods
    c.ok(&[
        "-n",
        "team",
        "create",
        "role",
        "role-admin",
        "--verb=create,get,list,update,patch,delete",
        "--resource=roles,rolebindings",
    ]);
    c.ok(&[
        "-n",
        "team",
        "create",
        "role",
        "pod-reader",
        "--verb=get,list",
        "--resource=pods",
    ]);
    c.ok(&[
        "-n",
        "team",
        "create",
        "rolebinding",
        "bob-roles",
        "--role=role-admin",
        "--user=bob",
    ]);
    c.ok(&[
        "-n",
        "team",
        "create",
        "rolebinding",
        "bob-pods",
        "--role=pod-reader",
        "--user=bob",
    ]);
    let whoami = c.kubectl_as_token("bob-token", &["auth", "whoami"]);
    assert!(
        String::from_utf8_lossy(&whoami.stdout).contains("devs"),
        "the token file names bob's groups"
    );

    let ok = c.kubectl_as_token(
        "bob-token",
        &[
            "-n",
            "team",
            "create",
            "role",
            "mine",
            "--verb=get",
            "--resource=pods",
        ],
    );
    assert!(
        ok.status.success(),
        "granting what one holds works: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let escalate = c.kubectl_as_token(
        "bob-token",
        &[
            "-n",
            "team",
            "create",
            "role",
            "secrets",
            "--verb=get",
            "--resource=secrets",
        ],
    );
    assert!(!escalate.status.success());
    assert!(
        String::from_utf8_lossy(&escalate.stderr)
            .contains("attempting to grant RBAC permissions not currently held"),
        "{}",
        String::from_utf8_lossy(&escalate.stderr)
    );
    let bind_admin = c.kubectl_as_token(
        "bob-token",
        &[
            "-n",
            "team",
            "create",
            "rolebinding",
            "bob-admin",
            "--clusterrole=admin",
            "--user=bob",
        ],
    );
    assert!(
        !bind_admin.status.success(),
        "binding a role one does not hold is refused"
    );
    let list = c.kubectl_as_token("bob-token", &["-n", "team", "auth", "can-i", "--list"]);
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains("pods") && list.contains("roles.rbac.authorization.k8s.io"),
        "can-i --list: {list}"
    );
    assert!(
        c.kubectl_as_token("wrong", &["get", "pods"])
            .stderr
            .ends_with(b"Unauthorized\n")
            || !c
                .kubectl_as_token("wrong", &["get", "pods"])
                .status
                .success()
    );
}

#[test]
fn anonymous_auth_can_be_turned_off() {
    let c = Cluster::start_with(&["--anonymous-auth=false"]);
    let ca = c.dir.path().join("tls/ca.crt");
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&ca)
        .arg(format!("{}/api/v1/pods", c.url()))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
}
