//! Workload controllers drive real pods: Deployments roll out through ReplicaSets, ReplicaSets
//! keep their pods, and the garbage collector follows owners out in the background, the
//! foreground or not at all (orphan), all through the real kubectl.

mod common;

use common::Cluster;

fn deployment(name: &str, strategy: &str, value: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 2
  strategy: {{type: {strategy}}}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox:1.36
        command: ["sleep", "3600"]
        env: [{{name: VALUE, value: "{value}"}}]
"#
    )
}

#[test]
fn scenario_05_deployment() {
    Cluster::start_node().scenario("05-deployment");
}

#[test]
fn a_recreate_rollout_removes_every_old_pod_before_starting_new_ones() {
    let c = Cluster::start_node();
    c.apply(&deployment("re", "Recreate", "1"));
    c.ok(&["rollout", "status", "deployment/re", "--timeout=90s"]);
    let first = c.ok(&["get", "rs", "-l", "app=re", "-o", "name"]);
    c.apply(&deployment("re", "Recreate", "2"));
    c.ok(&["rollout", "status", "deployment/re", "--timeout=90s"]);
    let values = c.ok(&[
        "get",
        "pods",
        "-l",
        "app=re",
        "-o",
        "jsonpath={.items[*].spec.containers[0].env[0].value}",
    ]);
    assert_eq!(values, "2 2", "only new pods remain");
    assert_eq!(
        c.jp(first.trim(), "{.spec.replicas}"),
        "0",
        "the old ReplicaSet is scaled to zero"
    );
    let events = c.ok(&["describe", "deployment", "re"]);
    assert!(
        events.contains("Scaled down replica set") && events.contains("Scaled up replica set"),
        "{events}"
    );
    assert!(events.contains("NewReplicaSetAvailable"), "{events}");
}

#[test]
fn foreground_deletion_waits_for_the_dependents() {
    let c = Cluster::start_node();
    c.apply(&deployment("fg", "RollingUpdate", "1"));
    c.ok(&["rollout", "status", "deployment/fg", "--timeout=90s"]);
    c.ok(&[
        "delete",
        "deployment",
        "fg",
        "--cascade=foreground",
        "--timeout=90s",
    ]);
    // kubectl returned once the Deployment was gone, which the foreground finalizer holds back
    // until its ReplicaSet (and the ReplicaSet until its pods) is gone.
    assert_eq!(c.ok(&["get", "rs,pods", "-l", "app=fg", "-o", "name"]), "");
}

#[test]
fn scenario_09_jobs() {
    Cluster::start_node().scenario("09-jobs");
}

#[test]
fn an_indexed_job_runs_each_index_once() {
    let c = Cluster::start_node();
    c.apply(
        r#"
apiVersion: batch/v1
kind: Job
metadata: {name: idx}
spec:
  completions: 3
  parallelism: 3
  completionMode: Indexed
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: w
        image: busybox:1.36
        command: ["sh", "-c", "echo index=$JOB_COMPLETION_INDEX"]
"#,
    );
    c.ok(&[
        "wait",
        "--for=condition=complete",
        "job/idx",
        "--timeout=90s",
    ]);
    assert_eq!(c.jp("job/idx", "{.status.completedIndexes}"), "0-2");
    let mut logs: Vec<String> = (0..3)
        .map(|i| {
            let pod = c.ok(&[
                "get",
                "pods",
                "-l",
                &format!("batch.kubernetes.io/job-completion-index={i}"),
                "-o",
                "name",
            ]);
            c.ok(&["logs", pod.trim()]).trim().to_string()
        })
        .collect();
    logs.sort();
    assert_eq!(logs, ["index=0", "index=1", "index=2"]);
}

#[test]
fn scenario_10_workloads() {
    Cluster::start_node().scenario("10-workloads");
}

#[test]
fn a_daemon_set_follows_node_labels_and_rolls_out() {
    let c = Cluster::start_node();
    c.ok(&["label", "node", common::NODE, "bosun-test-disk=ssd"]);
    c.apply(
        r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      nodeSelector: {bosun-test-disk: ssd}
      terminationGracePeriodSeconds: 1
      containers: [{name: a, image: "busybox:1.36", command: ["sleep", "3600"]}]
"#,
    );
    let status = c.ok(&["rollout", "status", "ds/agent", "--timeout=90s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    assert_eq!(
        c.ok(&[
            "get",
            "pods",
            "-l",
            "app=agent",
            "-o",
            "jsonpath={.items[*].spec.nodeName}"
        ]),
        common::NODE
    );
    c.ok(&["set", "env", "ds/agent", "V=2"]);
    c.ok(&["rollout", "status", "ds/agent", "--timeout=90s"]);
    let history = c.ok(&["rollout", "history", "ds/agent"]);
    assert!(history.contains("\n2 "), "{history}");
    c.ok(&["label", "node", common::NODE, "bosun-test-disk-"]);
    assert!(
        c.wait_for(60, || c
            .ok(&["get", "pods", "-l", "app=agent", "-o", "name"])
            .is_empty()),
        "the pod leaves the unlabelled node"
    );
    assert_eq!(c.jp("ds/agent", "{.status.desiredNumberScheduled}"), "0");
}

#[test]
fn a_stateful_set_starts_in_order_and_scales_down_from_the_top() {
    let c = Cluster::start_node();
    c.apply(
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 3
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: db, image: "busybox:1.36", command: ["sleep", "3600"]}]
"#,
    );
    c.ok(&["rollout", "status", "sts/db", "--timeout=90s"]);
    let created: Vec<String> = (0..3)
        .map(|i| c.jp(&format!("pod/db-{i}"), "{.metadata.creationTimestamp}"))
        .collect();
    let ready0 = c.jp(
        "pod/db-0",
        r#"{.status.conditions[?(@.type=="Ready")].lastTransitionTime}"#,
    );
    assert!(created[1] >= ready0, "db-1 started before db-0 was ready");
    assert_eq!(c.jp("pod/db-2", "{.spec.hostname}"), "db-2");
    assert_eq!(c.jp("pod/db-2", "{.spec.subdomain}"), "db");
    c.ok(&["scale", "sts", "db", "--replicas=1"]);
    assert!(
        c.wait_for(60, || c.ok(&[
            "get",
            "pods",
            "-l",
            "app=db",
            "-o",
            "jsonpath={.items[*].metadata.name}"
        ]) == "db-0"),
        "db-1 and db-2 removed"
    );
    let events = c.ok(&["describe", "sts", "db"]);
    assert!(
        events.contains("delete Pod db-2 in StatefulSet db successful"),
        "{events}"
    );
}

#[test]
fn a_silent_node_turns_unknown_is_tainted_and_its_pods_are_evicted() {
    let c = Cluster::start();
    c.apply("apiVersion: v1\nkind: Node\nmetadata: {name: ghost}\n");
    let pod = |name: &str, tolerations: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: ghost\n  tolerations: {tolerations}\n  containers: [{{name: c, image: busybox:1.36}}]\n"
        )
    };
    c.apply(&pod(
        "doomed",
        "[{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 1}]",
    ));
    c.apply(&pod("patient", "[]"));
    assert_eq!(
        c.jp(
            "pod/patient",
            r#"{.spec.tolerations[?(@.key=="node.kubernetes.io/unreachable")].tolerationSeconds}"#
        ),
        "300",
        "the default toleration is added at admission"
    );
    assert!(
        c.wait_for(90, || c.jp(
            "node/ghost",
            r#"{.status.conditions[?(@.type=="Ready")].status}"#
        ) == "Unknown"),
        "the node turns Unknown after 40 s of silence"
    );
    assert!(
        c.wait_for(20, || c
            .jp("node/ghost", "{.spec.taints[*].key}")
            .contains("node.kubernetes.io/unreachable")),
        "the node is tainted unreachable"
    );
    assert!(
        c.wait_for(20, || !c
            .jp("pod/doomed", "{.metadata.deletionTimestamp}")
            .is_empty()),
        "the pod that tolerates 1 s is evicted"
    );
    assert_eq!(c.jp("pod/patient", "{.metadata.deletionTimestamp}"), "");
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=doomed",
    ]);
    assert!(events.contains("TaintManagerEviction"), "{events}");
}

#[test]
fn the_controllers_run_under_a_renewed_leader_lease() {
    let c = Cluster::start();
    let lease = "lease/kube-controller-manager";
    assert!(
        c.wait_for(30, || !c
            .ok(&[
                "-n",
                "kube-system",
                "get",
                lease,
                "-o",
                "jsonpath={.spec.holderIdentity}"
            ])
            .is_empty()),
        "the lease is taken"
    );
    let renewed = || {
        c.ok(&[
            "-n",
            "kube-system",
            "get",
            lease,
            "-o",
            "jsonpath={.spec.renewTime}",
        ])
    };
    let first = renewed();
    assert!(
        c.wait_for(10, || renewed() != first),
        "the lease is renewed"
    );
}

#[test]
fn drain_evicts_only_what_the_disruption_budget_allows() {
    let c = Cluster::start_node();
    c.apply(&deployment("guarded", "RollingUpdate", "1"));
    c.ok(&["rollout", "status", "deployment/guarded", "--timeout=90s"]);
    c.apply(
        "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: guard}\nspec:\n  minAvailable: 2\n  selector: {matchLabels: {app: guarded}}\n",
    );
    assert!(
        c.wait_for(30, || c.jp("pdb/guard", "{.status.currentHealthy}") == "2"),
        "the budget counts the healthy pods"
    );
    assert_eq!(c.jp("pdb/guard", "{.status.disruptionsAllowed}"), "0");
    let drain = |timeout: &str| {
        c.kubectl(&[
            "drain",
            common::NODE,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            &format!("--timeout={timeout}"),
        ])
    };
    let out = drain("5s");
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("disruption budget"), "{text}");
    assert_eq!(
        c.jp(&format!("node/{}", common::NODE), "{.spec.unschedulable}"),
        "true"
    );
    let running = || {
        c.ok(&[
            "get",
            "pods",
            "-l",
            "app=guarded",
            "--field-selector=status.phase=Running",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
    };
    assert_eq!(running().split(' ').count(), 2, "nothing was evicted");

    c.ok(&[
        "patch",
        "pdb",
        "guard",
        "--type=merge",
        "-p",
        r#"{"spec":{"minAvailable":1}}"#,
    ]);
    assert!(
        c.wait_for(30, || c.jp("pdb/guard", "{.status.disruptionsAllowed}")
            == "1"),
        "the budget allows one disruption"
    );
    let out = drain("10s");
    assert!(!out.status.success(), "the second pod stays protected");
    let pending = c.ok(&[
        "get",
        "pods",
        "-l",
        "app=guarded",
        "--field-selector=status.phase=Pending",
        "-o",
        "name",
    ]);
    assert!(
        !pending.is_empty(),
        "the replacement waits for a schedulable node"
    );
    c.ok(&["uncordon", common::NODE]);
    c.ok(&["rollout", "status", "deployment/guarded", "--timeout=90s"]);
}

#[test]
fn priority_preempts_and_pod_affinity_keeps_pods_apart() {
    let c = Cluster::start_node();
    let node = c.ok(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"]);
    // Each pod asks for three quarters of the node's cpu, so two never fit together.
    let cpu = c.ok(&[
        "get",
        "node",
        &node,
        "-o",
        "jsonpath={.status.allocatable.cpu}",
    ]);
    let millis: i64 = cpu.trim().parse::<i64>().expect("whole cpus") * 750;
    let pod = |name: &str, class: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  priorityClassName: {class}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: busybox:1.36\n    command: [sleep, '3600']\n    resources: {{requests: {{cpu: {millis}m}}}}\n"
        )
    };
    c.ok(&["create", "priorityclass", "low", "--value=10"]);
    c.ok(&["create", "priorityclass", "high", "--value=1000"]);
    // a priority class the pod names must exist; the system classes always do
    assert!(
        c.fails(&[
            "run",
            "x",
            "--image=busybox:1.36",
            "--overrides",
            r#"{"spec":{"priorityClassName":"nope"}}"#
        ])
        .contains("no PriorityClass with name nope was found")
    );
    c.ok(&[
        "get",
        "priorityclass",
        "system-node-critical",
        "system-cluster-critical",
    ]);
    c.apply(&pod("low", "low"));
    c.ok(&["wait", "--for=condition=Ready", "pod/low", "--timeout=60s"]);
    assert_eq!(c.jp("pod/low", "{.spec.priority}"), "10");
    c.apply(&pod("high", "high"));
    c.ok(&["wait", "--for=condition=Ready", "pod/high", "--timeout=90s"]);
    assert!(
        c.wait_for(30, || !c
            .ok(&["get", "pods", "-o", "name"])
            .contains("pod/low")),
        "the low-priority pod was preempted"
    );
    let events = c.ok(&[
        "get",
        "events",
        "--field-selector",
        "reason=Preempted",
        "-o",
        "jsonpath={.items[*].message}",
    ]);
    assert!(events.contains(&format!("on node {node}")), "{events}");
    // and a pod of lower priority waits rather than preempting it back
    c.apply(&pod("later", "low"));
    let waits = c.wait_for(20, || {
        c.jp(
            "pod/later",
            "{.status.conditions[?(@.type==\"PodScheduled\")].message}",
        ) == "0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
    });
    assert!(waits, "{}", c.ok(&["describe", "pod", "later"]));
    c.ok(&["delete", "pod", "high", "later", "--wait=false"]);

    // Required anti-affinity on the hostname: one replica per node, the second waits.
    c.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: apart}
spec:
  replicas: 2
  selector: {matchLabels: {app: apart}}
  template:
    metadata: {labels: {app: apart}}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: apart}}
            topologyKey: kubernetes.io/hostname
      containers:
      - name: main
        image: busybox:1.36
        command: [sleep, '3600']
"#,
    );
    let one_waits = c.wait_for(60, || {
        let msgs = c.ok(&[
            "get",
            "pods",
            "-l",
            "app=apart",
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName}|{.status.conditions[?(@.type==\"PodScheduled\")].message}{\"\\n\"}{end}",
        ]);
        msgs.lines().filter(|l| l.starts_with(&format!("{node}|"))).count() == 1
            && msgs.lines().any(|l| {
                l.starts_with("|0/1 nodes are available: 1 node(s) didn't match pod anti-affinity rules.")
            })
    });
    assert!(one_waits, "{}", c.ok(&["get", "pods", "-o", "wide"]));
    // An extended resource no node has keeps a pod pending, said so.
    c.ok(&[
        "run",
        "gpu",
        "--image=busybox:1.36",
        "--overrides",
        r#"{"spec":{"containers":[{"name":"gpu","image":"busybox:1.36","resources":{"limits":{"nvidia.com/gpu":"1"}}}]}}"#,
    ]);
    assert!(c.wait_for(20, || {
        c.jp(
            "pod/gpu",
            "{.status.conditions[?(@.type==\"PodScheduled\")].message}",
        )
        .starts_with("0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")
    }));
}

#[test]
fn a_replication_controller_keeps_its_replicas() {
    let c = Cluster::start_node();
    c.apply(
        r#"
apiVersion: v1
kind: ReplicationController
metadata: {name: legacy}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: legacy}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: main
        image: busybox:1.36
        command: [sleep, '3600']
"#,
    );
    // the selector defaults to the template's labels
    assert_eq!(c.jp("rc/legacy", "{.spec.selector.app}"), "legacy");
    let ready = |n: &str| c.jp("rc/legacy", "{.status.readyReplicas}") == n;
    assert!(
        c.wait_for(60, || ready("2")),
        "{}",
        c.ok(&["describe", "rc", "legacy"])
    );
    let owner = c.ok(&[
        "get",
        "pods",
        "-l",
        "app=legacy",
        "-o",
        "jsonpath={.items[0].metadata.ownerReferences[0].kind}",
    ]);
    assert_eq!(owner, "ReplicationController");
    c.ok(&["scale", "rc", "legacy", "--replicas=1"]);
    assert!(c.wait_for(30, || {
        c.ok(&["get", "pods", "-l", "app=legacy", "-o", "name"])
            .lines()
            .count()
            == 1
    }));
    assert!(
        c.ok(&["describe", "rc", "legacy"])
            .contains("SuccessfulDelete")
    );
    c.ok(&["delete", "rc", "legacy", "--timeout=60s"]);
    assert!(c.wait_for(30, || {
        c.ok(&["get", "pods", "-l", "app=legacy", "-o", "name"])
            .is_empty()
    }));
}
