//! Where a Service's traffic goes, as upstream's endpoints, EndpointSlice and EndpointSlice
//! mirroring controllers keep it. For a Service with a selector: an Endpoints object of the
//! Service's name (ready pods in `addresses`, the others in `notReadyAddresses`, all of them
//! ready with `publishNotReadyAddresses`; terminating pods left out) and EndpointSlices labelled
//! `kubernetes.io/service-name` (terminating pods kept with their serving condition, as kube-proxy
//! falls back to them). Named target ports are resolved per pod, and pods whose ports resolve
//! alike share a subset or a slice. For a Service without a selector, the Endpoints its user
//! writes are mirrored into EndpointSlices. Slices (and the Endpoints this controller writes)
//! are owned by their Service and go with it.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, ObjectReference, Pod,
    Service, ServicePort,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;

use crate::pods;
use crate::{Context, Result, drive, retry};

/// The label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming who manages a slice.
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const SLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";
const MIRROR_CONTROLLER: &str = "endpointslicemirroring-controller.k8s.io";
/// Endpoints with this label are not mirrored (the API server's own, for example).
const SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
/// At most this many endpoints in one slice, as upstream's default.
const MAX_PER_SLICE: usize = 100;

/// Runs the controller.
pub async fn run(ctx: Arc<Context>) {
    let inf = &ctx.informers;
    let services = inf.services.store();
    let slices = inf.endpointslices.store();
    let stream = Controller::for_shared_stream(inf.services.subscribe(), inf.services.store())
        .watches_shared_stream(inf.pods.subscribe(), move |pod: Arc<Pod>| {
            // the Services selecting the pod now, and those whose slices still list it
            let ns = pod.namespace().unwrap_or_default();
            let mut refs: Vec<ObjectRef<Service>> = services
                .state()
                .into_iter()
                .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
                .filter(|s| selector(s).is_some_and(|sel| selects(sel, &pod)))
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect();
            for slice in slices.state() {
                let lists_pod = slice.endpoints.iter().any(|e| {
                    e.target_ref.as_ref().and_then(|r| r.uid.as_deref()) == pod.uid().as_deref()
                });
                if lists_pod && let Some(svc) = slice.labels().get(SERVICE_NAME_LABEL) {
                    refs.push(ObjectRef::new(svc).within(&ns));
                }
            }
            refs
        })
        .watches_shared_stream(inf.endpoints.subscribe(), |ep: Arc<Endpoints>| {
            Some(ObjectRef::new(&ep.name_any()).within(&ep.namespace().unwrap_or_default()))
        })
        .watches_shared_stream(inf.endpointslices.subscribe(), |s: Arc<EndpointSlice>| {
            s.labels()
                .get(SERVICE_NAME_LABEL)
                .map(|svc| ObjectRef::new(svc).within(&s.namespace().unwrap_or_default()))
        })
        .run(reconcile, retry, ctx);
    drive("endpoints", stream).await;
}

fn selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())
}

fn selects(sel: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.labels();
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let external = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName");
    let groups = match (selector(&svc), external) {
        (_, true) => Vec::new(),
        (Some(sel), false) => {
            let pods: Vec<Arc<Pod>> = ctx
                .informers
                .pods
                .objects()
                .into_iter()
                .filter(|p| p.namespace().as_deref() == Some(ns.as_str()) && selects(sel, p))
                .collect();
            let groups = endpoints_of(&svc, &pods);
            write_endpoints(&ctx, &svc, &groups).await?;
            groups
        }
        (None, false) => {
            // the user's Endpoints, mirrored
            let mirrored = ctx
                .informers
                .endpoints
                .get(Some(&ns), &name)
                .filter(|ep| !ep.labels().contains_key(SKIP_MIRROR));
            let groups = mirrored.map(|ep| mirror(&ep)).unwrap_or_default();
            write_slices(&ctx, &svc, &groups, MIRROR_CONTROLLER).await?;
            return Ok(Action::await_change());
        }
    };
    write_slices(&ctx, &svc, &groups, SLICE_CONTROLLER).await?;
    Ok(Action::await_change())
}

/// One group of endpoints sharing their ports.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Group {
    /// (name, port, protocol) of each port.
    pub ports: Vec<(String, i32, String)>,
    /// The endpoints, by address.
    pub endpoints: Vec<Endpoint>,
}

/// The Service's endpoints among `pods` (those it selects), grouped by resolved ports.
pub fn endpoints_of(svc: &Service, pods: &[Arc<Pod>]) -> Vec<Group> {
    let spec = svc.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let svc_ports = spec.ports.unwrap_or_default();
    let mut groups: BTreeMap<Vec<(String, i32, String)>, Vec<Endpoint>> = BTreeMap::new();
    for pod in pods {
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
        else {
            continue;
        };
        if pods::is_terminal(pod) {
            continue;
        }
        let ports: Vec<(String, i32, String)> =
            svc_ports.iter().filter_map(|p| resolve(p, pod)).collect();
        if ports.is_empty() && !svc_ports.is_empty() {
            continue;
        }
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let serving = pods::is_ready(pod) || publish_not_ready;
        let pod_spec = pod.spec.as_ref();
        let hostname = pod_spec
            .filter(|s| s.subdomain.as_deref() == Some(svc.name_any().as_str()))
            .and_then(|s| s.hostname.clone());
        groups.entry(ports).or_default().push(Endpoint {
            addresses: vec![ip],
            conditions: Some(EndpointConditions {
                ready: Some(serving && !terminating),
                serving: Some(serving),
                terminating: Some(terminating),
            }),
            hostname,
            node_name: pod_spec.and_then(|s| s.node_name.clone()),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                namespace: pod.namespace(),
                uid: pod.uid(),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    groups
        .into_iter()
        .map(|(ports, mut endpoints)| {
            endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
            Group { ports, endpoints }
        })
        .collect()
}

/// The port a Service port reaches on a pod: its number, or the pod's container port of that
/// name (and protocol); `None` when the pod has no such port.
fn resolve(p: &ServicePort, pod: &Pod) -> Option<(String, i32, String)> {
    let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
    let port = match &p.target_port {
        None => p.port,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(name)) => {
            pod.spec
                .as_ref()?
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|cp| {
                    cp.name.as_deref() == Some(name.as_str())
                        && cp.protocol.as_deref().unwrap_or("TCP") == protocol
                })?
                .container_port
        }
    };
    Some((p.name.clone().unwrap_or_default(), port, protocol))
}

/// A user's Endpoints as slice groups: each subset a group, ready addresses ready.
fn mirror(ep: &Endpoints) -> Vec<Group> {
    ep.subsets
        .iter()
        .flatten()
        .map(|s| {
            let ports = s
                .ports
                .iter()
                .flatten()
                .map(|p| {
                    (
                        p.name.clone().unwrap_or_default(),
                        p.port,
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    )
                })
                .collect();
            let endpoint = |a: &EndpointAddress, ready: bool| Endpoint {
                addresses: vec![a.ip.clone()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(ready),
                    terminating: Some(false),
                }),
                hostname: a.hostname.clone(),
                node_name: a.node_name.clone(),
                target_ref: a.target_ref.clone(),
                ..Default::default()
            };
            let endpoints = s
                .addresses
                .iter()
                .flatten()
                .map(|a| endpoint(a, true))
                .chain(
                    s.not_ready_addresses
                        .iter()
                        .flatten()
                        .map(|a| endpoint(a, false)),
                )
                .collect();
            Group { ports, endpoints }
        })
        .collect()
}

fn owner(svc: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc.name_any(),
        uid: svc.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn owned_by(meta: &ObjectMeta, svc: &Service) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| Some(&o.uid) == svc.metadata.uid.as_ref())
}

/// Labels of what this controller writes: the Service's own, and upstream's markers.
fn labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.labels().clone();
    let headless = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None");
    if headless {
        labels.insert("service.kubernetes.io/headless".into(), String::new());
    }
    labels
}

/// Writes the Service's Endpoints: ready addresses and not-ready ones per group of ports.
async fn write_endpoints(ctx: &Context, svc: &Service, groups: &[Group]) -> Result<()> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let subsets: Vec<EndpointSubset> = groups
        .iter()
        .filter_map(|g| {
            let address = |e: &Endpoint| EndpointAddress {
                ip: e.addresses[0].clone(),
                hostname: e.hostname.clone(),
                node_name: e.node_name.clone(),
                target_ref: e.target_ref.clone(),
            };
            let live = g
                .endpoints
                .iter()
                .filter(|e| e.conditions.as_ref().and_then(|c| c.terminating) != Some(true));
            let ready = |e: &&Endpoint| e.conditions.as_ref().and_then(|c| c.ready) == Some(true);
            let addresses: Vec<EndpointAddress> = live.clone().filter(ready).map(address).collect();
            let not_ready: Vec<EndpointAddress> = live.filter(|e| !ready(e)).map(address).collect();
            if addresses.is_empty() && not_ready.is_empty() {
                return None;
            }
            Some(EndpointSubset {
                addresses: (!addresses.is_empty()).then_some(addresses),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!g.ports.is_empty()).then(|| {
                    g.ports
                        .iter()
                        .map(|(name, port, protocol)| CorePort {
                            name: (!name.is_empty()).then(|| name.clone()),
                            port: *port,
                            protocol: Some(protocol.clone()),
                            app_protocol: None,
                        })
                        .collect()
                }),
            })
        })
        .collect();
    let subsets = (!subsets.is_empty()).then_some(subsets);
    let api: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    let current = ctx.informers.endpoints.get(Some(&ns), &name);
    let labels = labels(svc);
    match current {
        Some(cur) if cur.subsets == subsets && cur.metadata.labels.as_ref() == Some(&labels) => {
            Ok(())
        }
        Some(cur) => {
            let mut ep = (*cur).clone();
            ep.subsets = subsets;
            ep.metadata.labels = Some(labels);
            if !owned_by(&ep.metadata, svc) {
                ep.metadata
                    .owner_references
                    .get_or_insert_with(Vec::new)
                    .push(OwnerReference {
                        controller: None,
                        block_owner_deletion: None,
                        ..owner(svc)
                    });
            }
            api.replace(&name, &PostParams::default(), &ep).await?;
            Ok(())
        }
        None => {
            let ep = Endpoints {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(ns),
                    labels: Some(labels),
                    owner_references: Some(vec![OwnerReference {
                        controller: None,
                        block_owner_deletion: None,
                        ..owner(svc)
                    }]),
                    ..Default::default()
                },
                subsets,
            };
            crate::create_in_namespace(&api, &ep).await
        }
    }
}

/// Writes the Service's slices (managed by `managed_by`): one per group, split at
/// [`MAX_PER_SLICE`] endpoints, reusing the slices it has and deleting those left over.
async fn write_slices(
    ctx: &Context,
    svc: &Service,
    groups: &[Group],
    managed_by: &str,
) -> Result<()> {
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let mut labels = labels(svc);
    labels.insert(SERVICE_NAME_LABEL.into(), name.clone());
    labels.insert(MANAGED_BY.into(), managed_by.into());
    let mut wanted: Vec<(Vec<EndpointPort>, Vec<Endpoint>)> = Vec::new();
    for g in groups {
        let ports: Vec<EndpointPort> = g
            .ports
            .iter()
            .map(|(name, port, protocol)| EndpointPort {
                name: Some(name.clone()),
                port: Some(*port),
                protocol: Some(protocol.clone()),
                app_protocol: None,
            })
            .collect();
        for chunk in g.endpoints.chunks(MAX_PER_SLICE) {
            wanted.push((ports.clone(), chunk.to_vec()));
        }
    }
    // a Service with a selector but no endpoint still has one, empty, slice
    if wanted.is_empty() && managed_by == SLICE_CONTROLLER && selector(svc).is_some() {
        wanted.push((Vec::new(), Vec::new()));
    }
    let mut existing: Vec<Arc<EndpointSlice>> = ctx
        .informers
        .endpointslices
        .objects()
        .into_iter()
        .filter(|s| s.namespace().as_deref() == Some(ns.as_str()))
        .filter(|s| s.labels().get(SERVICE_NAME_LABEL) == Some(&name))
        .filter(|s| owned_by(&s.metadata, svc))
        .collect();
    existing.sort_by_key(|s| s.name_any());
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let uid = svc.uid().unwrap_or_default();
    let count = wanted.len();
    for (i, (ports, endpoints)) in wanted.into_iter().enumerate() {
        let ports = (!ports.is_empty()).then_some(ports);
        match existing.get(i) {
            Some(cur)
                if cur.endpoints == endpoints
                    && cur.ports == ports
                    && cur.metadata.labels.as_ref() == Some(&labels) => {}
            Some(cur) => {
                let mut slice = (**cur).clone();
                slice.endpoints = endpoints;
                slice.ports = ports;
                slice.metadata.labels = Some(labels.clone());
                api.replace(&cur.name_any(), &PostParams::default(), &slice)
                    .await?;
            }
            None => {
                let slice = EndpointSlice {
                    metadata: ObjectMeta {
                        name: Some(slice_name(&name, &uid, i)),
                        namespace: Some(ns.clone()),
                        labels: Some(labels.clone()),
                        owner_references: Some(vec![owner(svc)]),
                        ..Default::default()
                    },
                    address_type: "IPv4".into(),
                    endpoints,
                    ports,
                };
                crate::create_in_namespace(&api, &slice).await?;
            }
        }
    }
    for extra in existing.iter().skip(count) {
        match api
            .delete(&extra.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A slice's name: the Service's, with a suffix fixed by the Service's uid and the slice's
/// place, so that a retry never makes a second slice for the same endpoints.
fn slice_name(service: &str, uid: &str, i: usize) -> String {
    let hash = uid.bytes().fold(i as u64 + 1469598103934665603, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(1099511628211)
    });
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String = (0..5)
        .map(|k| ALPHABET[((hash >> (k * 8)) % ALPHABET.len() as u64) as usize] as char)
        .collect();
    let base: String = service.chars().take(63 - 6).collect();
    format!("{base}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, ip: &str, ready: bool, ports: serde_json::Value) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": ports}]},
                "status": {"phase": "Running", "podIP": ip,
                           "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
            }))
            .expect("pod"),
        )
    }

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "ns", "uid": "s1"}, "spec": spec}),
        )
        .expect("service")
    }

    #[test]
    fn named_target_ports_resolve_per_pod_and_group_alike_pods() {
        let svc = service(json!({"selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "web"}]}));
        let pods = [
            pod(
                "a",
                "10.0.0.2",
                true,
                json!([{"name": "web", "containerPort": 8080}]),
            ),
            pod(
                "b",
                "10.0.0.3",
                false,
                json!([{"name": "web", "containerPort": 8080}]),
            ),
            pod(
                "c",
                "10.0.0.4",
                true,
                json!([{"name": "web", "containerPort": 9090}]),
            ),
            pod(
                "d",
                "10.0.0.5",
                true,
                json!([{"name": "other", "containerPort": 1}]),
            ),
        ];
        let groups = endpoints_of(&svc, &pods);
        assert_eq!(groups.len(), 2, "{groups:?}");
        assert_eq!(groups[0].ports, vec![("http".into(), 8080, "TCP".into())]);
        assert_eq!(groups[0].endpoints.len(), 2);
        let b = &groups[0].endpoints[1];
        assert_eq!(b.addresses, vec!["10.0.0.3".to_string()]);
        assert_eq!(b.conditions.as_ref().and_then(|c| c.ready), Some(false));
        assert_eq!(groups[1].ports[0].1, 9090);
    }

    #[test]
    fn terminating_pods_serve_but_are_not_ready_and_publish_not_ready_counts_all() {
        let mut gone = (*pod("a", "10.0.0.2", true, json!([]))).clone();
        gone.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        let svc = service(json!({"selector": {"app": "web"}, "ports": [{"port": 80}]}));
        let groups = endpoints_of(&svc, &[Arc::new(gone)]);
        let c = groups[0].endpoints[0]
            .conditions
            .clone()
            .expect("conditions");
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(false), Some(true), Some(true))
        );
        let svc = service(
            json!({"selector": {"app": "web"}, "publishNotReadyAddresses": true, "ports": [{"port": 80}]}),
        );
        let groups = endpoints_of(&svc, &[pod("b", "10.0.0.3", false, json!([]))]);
        assert_eq!(
            groups[0].endpoints[0]
                .conditions
                .as_ref()
                .and_then(|c| c.ready),
            Some(true)
        );
    }

    #[test]
    fn slice_names_are_stable_and_distinct() {
        assert_eq!(slice_name("web", "u1", 0), slice_name("web", "u1", 0));
        assert_ne!(slice_name("web", "u1", 0), slice_name("web", "u1", 1));
        assert!(slice_name("web", "u1", 0).starts_with("web-"));
    }
}
