//! End-to-end tests of the API server: a real `bosun server`, the real kubectl, the `kube` crate
//! as a second client.

mod common;

use std::process::Command;

use common::Cluster;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};

#[test]
fn scenario_01_api_basics() {
    Cluster::start().scenario("01-api-basics");
}

#[test]
fn anonymous_requests_reach_only_what_rbac_allows() {
    let c = Cluster::start();
    let ca = c.dir.path().join("tls/ca.crt");
    let url = c.url();
    let curl = |path: &str, extra: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "--cacert"])
            .arg(&ca)
            .args(extra)
            .arg(format!("{url}{path}"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let version = curl("/version", &[]);
    assert!(
        version.contains("\"minor\":\"33\"") && version.ends_with("200"),
        "anonymous /version: {version}"
    );
    assert!(curl("/healthz", &[]).ends_with("200"), "anonymous /healthz");
    let denied = curl("/api/v1/configmaps", &[]);
    assert!(
        denied.ends_with("403")
            && denied.contains(r#"User \"system:anonymous\" cannot list resource \"configmaps\""#),
        "anonymous list: {denied}"
    );
    let bad_token = curl("/api/v1/configmaps", &["-H", "Authorization: Bearer nope"]);
    assert!(bad_token.ends_with("401"), "a bad token: {bad_token}");
    let mode = std::fs::metadata(&c.kubeconfig)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("kubeconfig");
    assert_eq!(
        mode, 0o600,
        "the admin kubeconfig is readable only by its owner"
    );
}

#[test]
fn a_restart_keeps_objects_and_the_ca() {
    let mut c = Cluster::start();
    c.ok(&["create", "configmap", "keep", "--from-literal=a=b"]);
    let uid = c.ok(&["get", "cm", "keep", "-o", "jsonpath={.metadata.uid}"]);
    let ca = std::fs::read(c.dir.path().join("tls/ca.crt")).expect("ca");
    c.restart_after_kill();
    assert_eq!(
        c.ok(&["get", "cm", "keep", "-o", "jsonpath={.metadata.uid}"]),
        uid
    );
    assert_eq!(
        std::fs::read(c.dir.path().join("tls/ca.crt")).expect("ca"),
        ca,
        "the CA survives restarts"
    );
    // history before the restart is gone: a watch from an old revision is told so (410)
    let old = c.ok(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=1&timeoutSeconds=1",
    ]);
    assert!(
        old.contains("\"type\":\"ERROR\"") && old.contains("\"code\":410"),
        "watch from a compacted revision: {old}"
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let c = Cluster::start();
    let err = c.fails(&["get", "cm", "-l", "a in b"]);
    assert!(err.contains("unable to parse requirement"), "{err}");
    let big = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{{\"name\":\"big\"}},\"data\":{{\"a\":\"{}\"}}}}",
        "x".repeat(4 << 20)
    );
    let out = c.kubectl_stdin(&["create", "-f", "-"], &big);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("too large"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wrong_type = "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"t\"},\"data\":{\"a\":1}}";
    let out = c.kubectl_stdin(&["create", "--validate=false", "-f", "-"], wrong_type);
    assert!(
        !out.status.success(),
        "a number where a string belongs is refused"
    );
    let dup = c.kubectl_stdin(&["apply", "-f", "-"], "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: b}}\n    spec: {containers: [{name: c, image: i}]}\n");
    assert!(
        String::from_utf8_lossy(&dup.stderr)
            .contains("`selector` does not match template `labels`")
    );
    assert_eq!(
        c.ok(&["get", "cm,deploy", "-o", "name"])
            .lines()
            .filter(|l| !l.contains("kube-root-ca"))
            .count(),
        0,
        "nothing was stored"
    );
    // a List is validated on the client against the OpenAPI v2 document, as kubectl does it
    let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: l2}\n  dta: {a: b}\n";
    let out = c.kubectl_stdin(&["apply", "-f", "-"], list);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("unknown field \"dta\" in io.k8s.api.core.v1.ConfigMap"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn scale_and_yaml_output_match_upstream() {
    let c = Cluster::start();
    c.ok(&[
        "create",
        "deployment",
        "web",
        "--image=busybox:1.36",
        "--replicas=1",
    ]);
    c.ok(&["scale", "deployment", "web", "--replicas=3"]);
    assert_eq!(
        c.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"]),
        "3"
    );
    assert_eq!(
        c.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.metadata.generation}"
        ]),
        "2"
    );
    let table = c.ok(&["get", "deploy", "web", "-o", "wide"]);
    assert!(
        table.starts_with("NAME")
            && table.contains("READY")
            && table.contains("UP-TO-DATE")
            && table.contains("SELECTOR"),
        "{table}"
    );
    assert!(table.contains("app=web"));
    let explain = c.ok(&["explain", "deployment.spec.strategy"]);
    assert!(explain.contains("rollingUpdate"), "{explain}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kube_crate_is_a_second_client() {
    let c = Cluster::start();
    let client = c.client().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("from-rust".into());
    cm.data = Some([("k".to_string(), "v".to_string())].into());
    let created = maps
        .create(&PostParams::default(), &cm)
        .await
        .expect("create");
    let rv = created
        .metadata
        .resource_version
        .clone()
        .expect("resourceVersion");

    let listed = maps
        .list(&ListParams::default().labels("!missing"))
        .await
        .expect("list");
    assert!(
        listed
            .items
            .iter()
            .any(|m| m.metadata.name.as_deref() == Some("from-rust"))
    );

    let mut stream = Box::pin(
        // only this map: the controllers may add kube-root-ca.crt to the namespace meanwhile
        maps.watch(
            &WatchParams::default()
                .fields("metadata.name=from-rust")
                .timeout(10),
            &rv,
        )
        .await
        .expect("watch"),
    );
    let patch = serde_json::json!({"data": {"k": "w"}});
    maps.patch("from-rust", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch");
    use futures::StreamExt;
    let event = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
        .await
        .expect("an event")
        .expect("open")
        .expect("ok");
    match event {
        WatchEvent::Modified(m) => assert_eq!(
            m.data.and_then(|d| d.get("k").cloned()).as_deref(),
            Some("w")
        ),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    let applied = maps
        .patch("from-rust", &PatchParams::apply("rust-test").force(), &Patch::Apply(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "from-rust"}, "data": {"k": "x"}})))
        .await
        .expect("server-side apply");
    assert!(
        applied
            .metadata
            .managed_fields
            .unwrap_or_default()
            .iter()
            .any(|m| m.manager.as_deref() == Some("rust-test"))
    );
    // an update that sends no managedFields, or an empty list, keeps them (as upstream: the
    // controllers' caches drop them)
    let mut cm = maps.get("from-rust").await.expect("get");
    cm.metadata.managed_fields = Some(Vec::new());
    cm.data = Some([("k".to_string(), "y".to_string())].into());
    let replaced = maps
        .replace("from-rust", &Default::default(), &cm)
        .await
        .expect("replace");
    let managers: Vec<String> = replaced
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.iter().any(|m| m == "rust-test"),
        "kept: {managers:?}"
    );
    maps.delete("from-rust", &Default::default())
        .await
        .expect("delete");
    assert!(maps.get_opt("from-rust").await.expect("get").is_none());
}

#[test]
fn the_serving_certificate_renews_itself() {
    let c = Cluster::start_with(&["--serving-cert-seconds", "6"]);
    let addr = c.url().trim_start_matches("https://").to_string();
    let serial = || {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("openssl s_client -connect {addr} </dev/null 2>/dev/null | openssl x509 -noout -serial"))
            .output()
            .expect("openssl");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let first = serial();
    assert!(
        first.starts_with("serial="),
        "read the serving certificate: {first:?}"
    );
    std::thread::sleep(std::time::Duration::from_secs(6));
    assert_ne!(
        serial(),
        first,
        "a new certificate is served before the old one expires"
    );
    c.ok(&["get", "namespaces"]);
}

#[test]
fn limit_ranges_default_and_bound_pods() {
    let c = Cluster::start();
    c.apply(
        r#"
apiVersion: v1
kind: LimitRange
metadata: {name: mylimits}
spec:
  limits:
  - max: {cpu: "2", memory: 1Gi}
    min: {cpu: 200m, memory: 6Mi}
    type: Pod
  - default: {cpu: 300m, memory: 200Mi}
    defaultRequest: {cpu: 200m, memory: 100Mi}
    max: {cpu: "2", memory: 1Gi}
    min: {cpu: 100m, memory: 3Mi}
    type: Container
"#,
    );
    c.ok(&[
        "run",
        "defaulted",
        "--image=busybox:1.36",
        "--restart=Never",
        "--",
        "sleep",
        "3600",
    ]);
    let res = |path: &str| {
        c.jp(
            "pod/defaulted",
            &format!("{{.spec.containers[0].resources.{path}}}"),
        )
    };
    assert_eq!(res("limits.cpu"), "300m");
    assert_eq!(res("limits.memory"), "200Mi");
    assert_eq!(res("requests.cpu"), "200m");
    assert_eq!(res("requests.memory"), "100Mi");
    assert_eq!(c.jp("pod/defaulted", "{.status.qosClass}"), "Burstable");
    assert_eq!(
        c.jp(
            "pod/defaulted",
            "{.metadata.annotations.kubernetes\\.io/limit-ranger}"
        ),
        "LimitRanger plugin set: cpu, memory request for container defaulted; cpu, memory limit for container defaulted"
    );
    let out = c.fails(&[
        "run",
        "invalid-pod",
        "--image=busybox:1.36",
        "--restart=Never",
        "--overrides",
        r#"{"spec":{"containers":[{"name":"c","image":"busybox:1.36","resources":{"limits":{"cpu":"3","memory":"100Mi"}}}]}}"#,
    ]);
    assert!(out.contains("forbidden"), "{out}");
    assert!(
        out.contains("maximum cpu usage per Container is 2, but limit is 3"),
        "{out}"
    );
    assert!(c.ok(&["get", "pods", "-o", "name"]).trim() == "pod/defaulted");
    // the LimitRange itself got upstream's defaults
    assert_eq!(
        c.jp(
            "limitrange/mylimits",
            "{.spec.limits[1].defaultRequest.cpu}"
        ),
        "200m"
    );
    // claims are held to a PersistentVolumeClaim item's storage bounds, also when resized
    c.apply(
        r#"
apiVersion: v1
kind: LimitRange
metadata: {name: storagelimits}
spec:
  limits:
  - type: PersistentVolumeClaim
    max: {storage: 2Gi}
    min: {storage: 1Gi}
"#,
    );
    let claim = |name: &str, size: &str| {
        format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}}}\n\
             spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: {size}}}}}}}\n"
        )
    };
    let out = c.kubectl_stdin(&["apply", "-f", "-"], &claim("big", "10Gi"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("persistentvolumeclaims \"big\" is forbidden: maximum storage usage per PersistentVolumeClaim is 2Gi, but request is 10Gi"),
        "{err}"
    );
    c.apply(&claim("fits", "1Gi"));
    let out = c.fails(&[
        "patch",
        "pvc/fits",
        "-p",
        r#"{"spec":{"resources":{"requests":{"storage":"5Gi"}}}}"#,
    ]);
    assert!(out.contains("maximum storage usage"), "{out}");
    assert_eq!(
        c.jp("pvc/fits", "{.spec.resources.requests.storage}"),
        "1Gi"
    );
    // a LimitRange whose bounds are out of order is refused
    let out = c.kubectl_stdin(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: LimitRange\nmetadata: {name: backwards}\n\
         spec: {limits: [{type: Container, min: {cpu: \"2\"}, max: {cpu: \"1\"}}]}\n",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("min value 2 is greater than max value 1"),
        "{err}"
    );
}

#[test]
fn resource_quotas_count_charge_and_give_back() {
    let c = Cluster::start();
    c.ok(&["create", "namespace", "q"]);
    c.ok(&[
        "-n",
        "q",
        "create",
        "quota",
        "objects",
        "--hard=count/deployments.apps=1,services.nodeports=1,pods=1,limits.memory=64Mi",
    ]);
    // the controller counts what the namespace already holds
    let used = || {
        c.ok(&[
            "-n",
            "q",
            "get",
            "resourcequota/objects",
            "-o",
            "jsonpath={.status.used}",
        ])
    };
    assert!(
        c.wait_for(10, || used().contains(r#""pods":"0""#)),
        "the quota's usage was never counted"
    );
    c.ok(&["-n", "q", "create", "deployment", "d1", "--image=busybox"]);
    let refused = c.fails(&["-n", "q", "create", "deployment", "d2", "--image=busybox"]);
    assert!(
        refused.contains(
            "deployments.apps \"d2\" is forbidden: exceeded quota: objects, requested: \
             count/deployments.apps=1, used: count/deployments.apps=1, limited: count/deployments.apps=1"
        ),
        "{refused}"
    );
    c.ok(&[
        "-n",
        "q",
        "create",
        "service",
        "clusterip",
        "inside",
        "--tcp=80:80",
    ]);
    c.ok(&[
        "-n",
        "q",
        "create",
        "service",
        "nodeport",
        "outside",
        "--tcp=80:80",
    ]);
    let refused = c.fails(&[
        "-n",
        "q",
        "create",
        "service",
        "nodeport",
        "more",
        "--tcp=81:81",
    ]);
    assert!(
        refused.contains("exceeded quota: objects, requested: services.nodeports=1"),
        "{refused}"
    );
    // a pod must state the memory limit the quota limits; one that does takes the only place
    let refused = c.fails(&[
        "-n",
        "q",
        "run",
        "bare",
        "--image=busybox",
        "--restart=Never",
    ]);
    assert!(
        refused.contains("failed quota: objects: must specify limits.memory for: bare"),
        "{refused}"
    );
    let sized = r#"{"spec":{"containers":[{"name":"c","image":"busybox","resources":{"limits":{"memory":"32Mi"}}}]}}"#;
    let run = |name: &str| {
        c.kubectl(&[
            "-n",
            "q",
            "run",
            name,
            "--image=busybox",
            "--restart=Never",
            &format!("--overrides={sized}"),
        ])
    };
    assert!(run("first").status.success());
    let second = run("second");
    assert!(
        String::from_utf8_lossy(&second.stderr)
            .contains("requested: pods=1, used: pods=1, limited: pods=1"),
        "{second:?}"
    );
    let described: Vec<String> = c
        .ok(&["-n", "q", "describe", "quota", "objects"])
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    for row in [
        "count/deployments.apps 1 1",
        "limits.memory 32Mi 64Mi",
        "pods 1 1",
        "services.nodeports 1 1",
    ] {
        assert!(
            described.iter().any(|l| l == row),
            "{row} not in {described:?}"
        );
    }
    // what is deleted is given back
    c.ok(&["-n", "q", "delete", "deployment", "d1"]);
    assert!(
        c.wait_for(30, || used().contains(r#""count/deployments.apps":"0""#)),
        "the deleted deployment still counts"
    );
    c.ok(&["-n", "q", "create", "deployment", "d2", "--image=busybox"]);
}
