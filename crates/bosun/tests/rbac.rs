//! End-to-end tests of access control: service account tokens, RBAC, impersonation, reviews.

mod common;

use std::process::Command;

use base64::Engine;

use common::{Cluster, kubectl_path};

#[test]
fn scenario_11_rbac() {
    Cluster::start().scenario("11-rbac");
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
    let deployments = "--as=system:serviceaccount:kube-system:deployment-controller";
    let replicasets = "--as=system:serviceaccount:kube-system:replicaset-controller";
    let manager = "--as=system:kube-controller-manager";
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
        // the controllers hold only their own roles' rights
        (&["create", "replicasets", "-A", deployments], "yes"),
        (&["create", "pods", "-A", deployments], "no"),
        (&["get", "secrets", "-A", deployments], "no"),
        (&["create", "pods", "-A", replicasets], "yes"),
        (&["delete", "deployments", "-A", replicasets], "no"),
        (&["list", "secrets", "-A", manager], "yes"),
        (&["delete", "pods", "-A", manager], "no"),
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
fn a_pods_token_is_refused_until_a_role_binding_grants_access() {
    let c = Cluster::start_node();
    c.ok(&["create", "namespace", "probe"]);
    c.ok(&["-n", "probe", "create", "serviceaccount", "reader"]);
    c.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: probe}\nspec:\n  serviceAccountName: reader\n  containers:\n  - {name: c, image: busybox:1.36, command: [sleep, '3600']}\n",
    );
    c.ok(&[
        "-n",
        "probe",
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "--timeout=90s",
    ]);
    // from inside the pod, through the `kubernetes` Service and cluster DNS, with the token
    // the pod was given
    let get = |path: &str| {
        let script = format!(
            "wget -q -O- --no-check-certificate --header \"Authorization: Bearer $(cat /var/run/secrets/kubernetes.io/serviceaccount/token)\" https://kubernetes.default.svc{path} 2>&1"
        );
        let out = c.kubectl(&["-n", "probe", "exec", "client", "--", "sh", "-c", &script]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let pods = "/api/v1/namespaces/probe/pods";
    let before = get(pods);
    assert!(
        before.contains("403 Forbidden"),
        "refused at first: {before}"
    );
    c.ok(&[
        "-n",
        "probe",
        "create",
        "role",
        "pod-reader",
        "--verb=get,list",
        "--resource=pods",
    ]);
    c.ok(&[
        "-n",
        "probe",
        "create",
        "rolebinding",
        "reader-pods",
        "--role=pod-reader",
        "--serviceaccount=probe:reader",
    ]);
    let after = get(pods);
    assert!(
        after.contains("PodList") && after.contains("\"client\""),
        "granted: {after}"
    );
    let secrets = get("/api/v1/namespaces/probe/secrets");
    assert!(secrets.contains("403 Forbidden"), "only pods: {secrets}");
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

#[test]
fn audit_lines_follow_the_policy() {
    let dir = tempfile::tempdir().expect("dir");
    let policy = dir.path().join("policy.yaml");
    let log = dir.path().join("audit.log");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: None\n  users: [\"system:kube-controller-manager\"]\n- level: RequestResponse\n  resources:\n  - group: \"\"\n    resources: [secrets]\n- level: Metadata\n  verbs: [create]\n- level: None\n",
    )
    .expect("policy");
    let c = Cluster::start_with(&[
        "--audit-policy-file",
        policy.to_str().expect("path"),
        "--audit-log-path",
        log.to_str().expect("path"),
    ]);
    c.ok(&[
        "create",
        "secret",
        "generic",
        "audited",
        "--from-literal=k=v",
    ]);
    c.ok(&["create", "configmap", "audited", "--from-literal=k=v"]);
    c.ok(&["get", "configmap", "audited"]);
    // Pod Security's audit level notes violations in the event, refusing nothing
    c.ok(&[
        "label",
        "namespace",
        "default",
        "pod-security.kubernetes.io/audit=restricted",
    ]);
    c.wait_for(30, || {
        c.kubectl(&["get", "serviceaccount", "default"])
            .status
            .success()
    });
    c.ok(&["run", "loose", "--image=busybox:1.36"]);
    let mut events = Vec::new();
    for _ in 0..50 {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        events = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
            .collect();
        if events.iter().any(|e| e["objectRef"]["resource"] == "pods") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // (the server's first join token, a Secret too, is audited as well)
    let secret = events
        .iter()
        .find(|e| {
            e["objectRef"]["resource"] == "secrets"
                && e["responseObject"]["metadata"]["name"] == "audited"
        })
        .expect("the secret create is audited");
    assert_eq!(secret["kind"], "Event");
    assert_eq!(secret["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(secret["level"], "RequestResponse");
    assert_eq!(secret["verb"], "create");
    assert_eq!(secret["user"]["username"], "admin");
    assert_eq!(secret["responseStatus"]["code"], 201);
    assert_eq!(secret["responseObject"]["metadata"]["name"], "audited");
    let cm = events
        .iter()
        .find(|e| e["objectRef"]["resource"] == "configmaps" && e["user"]["username"] == "admin")
        .expect("the configmap create is audited");
    assert_eq!(cm["level"], "Metadata");
    assert_eq!(cm["objectRef"]["name"], "audited", "{cm}");
    assert!(
        cm.get("requestObject").is_none(),
        "Metadata carries no bodies"
    );
    assert!(
        !events
            .iter()
            .any(|e| e["verb"] == "get" && e["objectRef"]["resource"] == "configmaps"),
        "reads fall to the last rule, None"
    );
    let pod = events
        .iter()
        .find(|e| e["objectRef"]["resource"] == "pods" && e["verb"] == "create")
        .expect("the pod create is audited");
    assert_eq!(pod["responseStatus"]["code"], 201);
    let violations = pod["annotations"]["pod-security.kubernetes.io/audit-violations"]
        .as_str()
        .unwrap_or_default();
    assert!(
        violations.starts_with("would violate PodSecurity \"restricted:latest\": ")
            && violations.contains("allowPrivilegeEscalation != false"),
        "{pod}"
    );
}

#[test]
fn encrypted_secrets_never_reach_the_data_dir_in_the_clear() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("encryption.yaml");
    std::fs::write(
        &config,
        "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys:\n      - name: key1\n        secret: c2VjcmV0IGlzIHNlY3VyZSwgSSB0aGluayBzbyEhISE=\n  - identity: {}\n",
    )
    .expect("config");
    let mut c = Cluster::start_with(&[
        "--encryption-provider-config",
        config.to_str().expect("path"),
    ]);
    let value = "correct-horse-battery-staple";
    c.ok(&[
        "create",
        "secret",
        "generic",
        "vault",
        &format!("--from-literal=password={value}"),
    ]);
    c.ok(&[
        "create",
        "configmap",
        "plain",
        &format!("--from-literal=note={value}"),
    ]);
    let encoded = base64::engine::general_purpose::STANDARD.encode(value);
    let files_with = |c: &Cluster, needle: &str| {
        let mut hits = Vec::new();
        for entry in std::fs::read_dir(c.dir.path()).expect("data dir").flatten() {
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                hits.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        hits
    };
    c.restart_after_kill();
    assert!(
        !files_with(&c, value).is_empty(),
        "the unencrypted configmap is found: the scan sees the store's files"
    );
    assert!(
        files_with(&c, &encoded).is_empty(),
        "the secret's value is in the data dir: {:?}",
        files_with(&c, &encoded)
    );
    let read = c.ok(&["get", "secret", "vault", "-o", "jsonpath={.data.password}"]);
    assert_eq!(
        read, encoded,
        "the secret reads back in the clear through the API"
    );
    assert_eq!(
        c.ok(&["get", "cm", "plain", "-o", "jsonpath={.data.note}"]),
        value
    );
}

#[test]
fn keys_rotate_by_rewriting_secrets() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("encryption.yaml");
    let write = |providers: &str| {
        std::fs::write(&config, format!("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}")).expect("config")
    };
    let old =
        "  - aescbc:\n      keys:\n      - name: old\n        secret: MTIzNDU2Nzg5MDEyMzQ1Ng==\n";
    let new = "  - secretbox:\n      keys:\n      - name: new\n        secret: c2VjcmV0IGlzIHNlY3VyZSwgSSB0aGluayBzbyEhISE=\n";
    write(old);
    let mut c = Cluster::start_with(&[
        "--encryption-provider-config",
        config.to_str().expect("path"),
    ]);
    c.ok(&[
        "create",
        "secret",
        "generic",
        "rotated",
        "--from-literal=k=v",
    ]);
    // the new key first, the old one still readable; then every secret is written again
    write(&format!("{new}{old}"));
    c.restart_after_kill();
    let all = c.ok(&["get", "secrets", "-o", "json"]);
    let out = c.kubectl_stdin(&["replace", "-f", "-"], &all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // with only the new key left, the secret still reads
    write(new);
    c.restart_after_kill();
    assert_eq!(
        c.ok(&["get", "secret", "rotated", "-o", "jsonpath={.data.k}"]),
        "dg=="
    );
}

#[test]
fn an_admin_issues_a_user_a_client_certificate() {
    let c = Cluster::start();
    let dir = tempfile::tempdir().expect("dir");
    let (key, csr) = (dir.path().join("jane.key"), dir.path().join("jane.csr"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=jane/O=devs",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "openssl req failed");
    let request =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&csr).expect("csr"));
    let manifest = format!(
        "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: jane}}\nspec:\n  request: {request}\n  signerName: kubernetes.io/kube-apiserver-client\n  expirationSeconds: 86400\n  usages: [client auth]\n"
    );
    assert!(
        c.kubectl_stdin(&["create", "-f", "-"], &manifest)
            .status
            .success()
    );
    assert_eq!(
        c.ok(&["get", "csr", "jane", "-o", "jsonpath={.spec.username}"]),
        "admin",
        "the server records who asked"
    );
    assert!(
        c.ok(&["get", "csr", "jane", "-o", "jsonpath={.status.certificate}"])
            .is_empty(),
        "nothing is issued before approval"
    );
    // approving needs the approve verb on the request's signer, not only the subresource
    c.apply(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: csr-approver}\nrules:\n- {apiGroups: [certificates.k8s.io], resources: [certificatesigningrequests], verbs: [get, list]}\n- {apiGroups: [certificates.k8s.io], resources: [certificatesigningrequests/approval], verbs: [update]}\n",
    );
    c.ok(&[
        "create",
        "clusterrolebinding",
        "csr-approver",
        "--clusterrole=csr-approver",
        "--user=approver",
    ]);
    let refused = c.fails(&["certificate", "approve", "jane", "--as=approver"]);
    assert!(
        refused.contains("user not permitted to approve requests with signerName \"kubernetes.io/kube-apiserver-client\""),
        "{refused}"
    );
    assert!(!c.ok(&["get", "csr", "jane"]).contains("Approved"));
    // a grant on the signer's domain (`kubernetes.io/*`) is enough
    c.apply(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: csr-approver}\nrules:\n- {apiGroups: [certificates.k8s.io], resources: [certificatesigningrequests], verbs: [get, list]}\n- {apiGroups: [certificates.k8s.io], resources: [certificatesigningrequests/approval], verbs: [update]}\n- {apiGroups: [certificates.k8s.io], resources: [signers], resourceNames: [kubernetes.io/*], verbs: [approve]}\n",
    );
    c.ok(&["certificate", "approve", "jane", "--as=approver"]);
    let mut cert = String::new();
    for _ in 0..100 {
        cert = c.ok(&["get", "csr", "jane", "-o", "jsonpath={.status.certificate}"]);
        if !cert.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!cert.is_empty(), "the approved request is signed");
    let crt = dir.path().join("jane.crt");
    std::fs::write(
        &crt,
        base64::engine::general_purpose::STANDARD
            .decode(cert.trim())
            .expect("base64"),
    )
    .expect("write");
    let whoami = Command::new(kubectl_path())
        .args([
            &format!("--server={}", c.url()),
            &format!(
                "--certificate-authority={}",
                c.dir.path().join("tls/ca.crt").display()
            ),
            "--kubeconfig=/dev/null",
        ])
        .arg(format!("--client-certificate={}", crt.display()))
        .arg(format!("--client-key={}", key.display()))
        .args(["auth", "whoami"])
        .output()
        .expect("kubectl");
    let text = String::from_utf8_lossy(&whoami.stdout);
    assert!(
        text.contains("jane") && text.contains("devs"),
        "the new certificate names jane in devs: {text}{}",
        String::from_utf8_lossy(&whoami.stderr)
    );
    assert!(c.ok(&["get", "csr", "jane"]).contains("Approved,Issued"));
    // what was issued stays issued, and an approval is not undone by denying
    let rewrite = c.fails(&[
        "patch",
        "csr",
        "jane",
        "--subresource=status",
        "--type=merge",
        "-p",
        "{\"status\":{\"certificate\":\"b3RoZXI=\"}}",
    ]);
    assert!(
        rewrite.contains("updates may not modify existing certificate content"),
        "{rewrite}"
    );
    // (kubectl refuses to deny an approved request itself, so the request goes raw)
    let mut denied: serde_json::Value =
        serde_json::from_str(&c.ok(&["get", "csr", "jane", "-o", "json"])).expect("json");
    denied["status"]["conditions"]
        .as_array_mut()
        .expect("conditions")
        .push(serde_json::json!({"type": "Denied", "status": "True", "reason": "Changed"}));
    let deny = c.kubectl_stdin(
        &[
            "replace",
            "--raw",
            "/apis/certificates.k8s.io/v1/certificatesigningrequests/jane/approval",
            "-f",
            "-",
        ],
        &denied.to_string(),
    );
    let stderr = String::from_utf8_lossy(&deny.stderr);
    assert!(
        stderr.contains("Approved and Denied conditions are mutually exclusive"),
        "{stderr}"
    );

    // nobody gets a cluster-admin certificate through the client signer
    let masters = dir.path().join("masters.csr");
    let made = Command::new("openssl")
        .args(["req", "-new", "-key"])
        .arg(&key)
        .args(["-subj", "/CN=eve/O=system:masters", "-out"])
        .arg(&masters)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "openssl req failed");
    let request =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&masters).expect("csr"));
    let refused = c.kubectl_stdin(
        &["create", "-f", "-"],
        &format!(
            "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: eve}}\nspec:\n  request: {request}\n  signerName: kubernetes.io/kube-apiserver-client\n  usages: [client auth]\n"
        ),
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("use of kubernetes.io/kube-apiserver-client signer with system:masters group is not allowed"),
        "{stderr}"
    );
    assert!(c.fails(&["get", "csr", "eve"]).contains("NotFound"));
}

/// A node agent's identity reads only what the pods bound to it use and changes only itself
/// and its pods (Node authorizer and NodeRestriction). Requests are made as the nodes by
/// impersonation, which authorization and admission judge as the nodes' own.
#[test]
fn a_node_reaches_only_what_its_own_pods_use() {
    let c = Cluster::start();
    c.apply(
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: n2}\n",
    );
    c.ok(&["create", "secret", "generic", "mine", "--from-literal=k=1"]);
    c.ok(&[
        "create",
        "secret",
        "generic",
        "theirs",
        "--from-literal=k=2",
    ]);
    c.ok(&["create", "configmap", "settings", "--from-literal=k=3"]);
    c.apply(
        r#"apiVersion: v1
kind: Pod
metadata: {name: p1}
spec:
  nodeName: n1
  volumes: [{name: s, secret: {secretName: mine}}]
  containers:
  - name: c
    image: busybox:1.36
    env: [{name: K, valueFrom: {configMapKeyRef: {name: settings, key: k}}}]
---
apiVersion: v1
kind: Pod
metadata: {name: p2}
spec:
  nodeName: n2
  volumes: [{name: s, secret: {secretName: theirs}}]
  containers: [{name: c, image: busybox:1.36}]
"#,
    );
    fn as_n1<'a>(args: &[&'a str]) -> Vec<&'a str> {
        [args, &["--as=system:node:n1", "--as-group=system:nodes"]].concat()
    }

    // reads: its pods' objects, one at a time
    assert_eq!(
        c.ok(&as_n1(&["get", "secret", "mine", "-o", "name"]))
            .trim(),
        "secret/mine"
    );
    c.ok(&as_n1(&["get", "configmap", "settings"]));
    assert!(
        c.ok(&as_n1(&[
            "get",
            "secrets",
            "--field-selector=metadata.name=mine",
            "-o",
            "name"
        ]))
        .contains("secret/mine")
    );
    let denied = c.fails(&as_n1(&["get", "secret", "theirs"]));
    assert!(
        denied.contains(r#"User "system:node:n1" cannot get resource "secrets" in API group "" in the namespace "default": no relationship found between node 'n1' and this object"#),
        "{denied}"
    );
    assert!(c.fails(&as_n1(&["get", "secrets"])).contains("Forbidden"));
    // the other node reads its own
    c.ok(&[
        "get",
        "secret",
        "theirs",
        "--as=system:node:n2",
        "--as-group=system:nodes",
    ]);

    // what a node may read hangs on its pods, so its list of rules says it is incomplete
    let list = c.kubectl(&as_n1(&["auth", "can-i", "--list"]));
    let warning = String::from_utf8_lossy(&list.stderr);
    assert!(
        warning.contains(
            "the list may be incomplete: node authorizer does not support user rule resolution"
        ),
        "{warning}"
    );

    // writes: only itself and its own pods
    let denied = c.fails(&as_n1(&["delete", "pod", "p2"]));
    assert!(
        denied.contains(r#"node "n1" can only delete pods with spec.nodeName set to itself"#),
        "{denied}"
    );
    // (kubectl patch reads pods/status first, which no node may; replace writes it straight)
    let status = |pod: &str| {
        let current = c.ok(&["get", "pod", pod, "-o", "json"]);
        c.kubectl_stdin(
            &as_n1(&["replace", "--subresource=status", "-f", "-"]),
            &current,
        )
    };
    let denied = String::from_utf8_lossy(&status("p2").stderr).into_owned();
    assert!(
        denied.contains(
            r#"node "n1" can only update pod status for pods with spec.nodeName set to itself"#
        ),
        "{denied}"
    );
    assert!(status("p1").status.success());
    let denied = c.fails(&as_n1(&["label", "node", "n2", "team=a"]));
    assert!(
        denied.contains(r#"node "n1" is not allowed to modify node "n2""#),
        "{denied}"
    );
    c.ok(&as_n1(&["label", "node", "n1", "example.com/team=a"]));
    let denied = c.fails(&as_n1(&["taint", "node", "n1", "k=v:NoSchedule"]));
    assert!(
        denied.contains(r#"node "n1" is not allowed to modify taints"#),
        "{denied}"
    );
    let denied = c.fails(&as_n1(&[
        "label",
        "node",
        "n1",
        "node-restriction.kubernetes.io/pool=x",
    ]));
    assert!(
        denied.contains("is not allowed to modify labels"),
        "{denied}"
    );
    let denied = c.fails(&as_n1(&["run", "sneaky", "--image=busybox:1.36"]));
    assert!(denied.contains("can only create mirror pods"), "{denied}");

    // tokens: only for its own pods, bound by uid
    let token = |pod: &str| {
        let (name, uid) = (
            format!("--bound-object-name={pod}"),
            format!(
                "--bound-object-uid={}",
                c.jp(&format!("pod/{pod}"), "{.metadata.uid}")
            ),
        );
        c.kubectl(&as_n1(&[
            "create",
            "token",
            "default",
            "--bound-object-kind=Pod",
            &name,
            &uid,
        ]))
    };
    let issued = token("p1");
    assert!(
        issued.status.success() && !issued.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&issued.stderr)
    );
    let denied = String::from_utf8_lossy(&token("p2").stderr).into_owned();
    assert!(
        denied.contains("node requested token bound to a pod scheduled on a different node"),
        "{denied}"
    );
    let denied = c.fails(&as_n1(&["create", "token", "default"]));
    assert!(
        denied.contains("node requested token not bound to a pod"),
        "{denied}"
    );
}
