//! The built-in Ingress controller (traefik's job in k3s). It watches the Ingresses of the
//! IngressClass `bosun`, the Services and EndpointSlices they lead to and their TLS Secrets,
//! merges them into the routes of a [`network::ingress::Ingress`] proxy on every change, and
//! publishes where they are served in each Ingress's `status.loadBalancer`.
//!
//! At start it makes sure of what k3s's traefik chart installs: the IngressClass `bosun`,
//! marked the default class, and the LoadBalancer Service `kube-system/bosun-ingress` (ports
//! 80 and 443) whose Endpoints are this server's proxy, so that every node's Service proxy
//! serves the Ingresses on its own addresses too. An Ingress's status copies that Service's
//! load balancer addresses, as traefik publishes its Service's.
//!
//! Unlike the workload controllers it runs on every server, not only the leader: each serves
//! the traffic that reaches it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use network::ingress::{Backend, Certificate, PathKind, PathRule, Routes, Rule};
use serde_json::json;
use tokio::sync::Notify;

/// The IngressClass bosun serves.
pub const CLASS: &str = "bosun";
/// Its `spec.controller`.
pub const CONTROLLER: &str = "bosun.dev/ingress-controller";
/// The Service in kube-system that exposes the proxy on every node.
pub const SERVICE: &str = "bosun-ingress";
/// The annotation that marks the default IngressClass.
const DEFAULT_CLASS: &str = "ingressclass.kubernetes.io/is-default-class";
/// The annotation older Ingresses name their class with.
const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// How long changes are gathered before the routes are rebuilt.
const GATHER: Duration = Duration::from_millis(20);

/// Where this server's proxy listens.
#[derive(Clone, Copy, Debug)]
pub struct Listen {
    /// The address other nodes reach this server at.
    pub address: Ipv4Addr,
    /// The HTTP port.
    pub http: u16,
    /// The HTTPS port.
    pub https: u16,
}

/// Runs the controller and the proxy until a watch or a listener ends.
pub async fn run(client: kube::Client, listen: Listen) -> anyhow::Result<()> {
    let proxy = network::ingress::Ingress::new().map_err(anyhow::Error::msg)?;
    let serve = {
        let any = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let (http, https) = (any(listen.http), any(listen.https));
        let p = proxy.clone();
        async move {
            tokio::try_join!(p.clone().serve_http(http), p.serve_https(https)).map_err(|e| {
                anyhow::anyhow!("the ingress proxy cannot serve on {http} and {https}: {e}")
            })
        }
    };
    let changed = Arc::new(Notify::new());
    let all = watcher::Config::default();
    let (ingresses, t1) = watch::<Ingress>(&client, all.clone(), &changed);
    let (classes, t2) = watch::<IngressClass>(&client, all.clone(), &changed);
    let (services, t3) = watch::<Service>(&client, all.clone(), &changed);
    let (slices, t4) = watch::<EndpointSlice>(&client, all.clone(), &changed);
    let tls = all.fields("type=kubernetes.io/tls");
    let (secrets, t5) = watch::<Secret>(&client, tls, &changed);
    let sync = async {
        install(&client, listen).await;
        for ready in [
            ingresses.wait_until_ready().await.is_ok(),
            classes.wait_until_ready().await.is_ok(),
            services.wait_until_ready().await.is_ok(),
            slices.wait_until_ready().await.is_ok(),
            secrets.wait_until_ready().await.is_ok(),
        ] {
            if !ready {
                return;
            }
        }
        loop {
            tokio::time::sleep(GATHER).await;
            let classes = classes.state();
            let ours: Vec<Arc<Ingress>> = ingresses
                .state()
                .into_iter()
                .filter(|i| is_ours(i, &classes))
                .collect();
            let services = services.state();
            let slices = slices.state();
            proxy.set_routes(routes(&ours, &services, &slices, &secrets.state()));
            publish(&client, &ours, &services).await;
            changed.notified().await;
        }
    };
    tokio::select! {
        r = serve => r.map(|_| ()),
        () = sync => anyhow::bail!("the ingress caches were never filled"),
        () = t1 => anyhow::bail!("the ingress watch ended"),
        () = t2 => anyhow::bail!("the ingress class watch ended"),
        () = t3 => anyhow::bail!("the service watch ended"),
        () = t4 => anyhow::bail!("the endpoint slice watch ended"),
        () = t5 => anyhow::bail!("the secret watch ended"),
    }
}

/// A cache of the `K`s `config` selects, and the task keeping it, which wakes `changed` on
/// every change.
fn watch<K>(
    client: &kube::Client,
    config: watcher::Config,
    changed: &Arc<Notify>,
) -> (Store<K>, impl Future<Output = ()> + use<K>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(Api::<K>::all(client.clone()), config))
        .default_backoff();
    let changed = changed.clone();
    let task = async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {
            changed.notify_one();
        }
    };
    (reader, task)
}

/// Creates the IngressClass and the Service when missing and points the Service's Endpoints
/// at this server, retrying until the API takes them.
async fn install(client: &kube::Client, listen: Listen) {
    let class = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": CLASS, "annotations": {DEFAULT_CLASS: "true"}},
        "spec": {"controller": CONTROLLER},
    });
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": "kube-system",
                     "labels": {"app.kubernetes.io/name": SERVICE}},
        "spec": {
            "type": "LoadBalancer",
            "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": listen.http},
                {"name": "https", "port": 443, "protocol": "TCP", "targetPort": listen.https},
            ],
        },
    });
    let endpoints = json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": SERVICE, "namespace": "kube-system",
                     "labels": {"app.kubernetes.io/name": SERVICE}},
        "subsets": [{
            "addresses": [{"ip": listen.address.to_string()}],
            "ports": [
                {"name": "http", "port": listen.http, "protocol": "TCP"},
                {"name": "https", "port": listen.https, "protocol": "TCP"},
            ],
        }],
    });
    loop {
        let done = async {
            create_missing::<IngressClass>(Api::all(client.clone()), class.clone()).await?;
            let services = Api::namespaced(client.clone(), "kube-system");
            create_missing::<Service>(services, service.clone()).await?;
            let api: Api<Endpoints> = Api::namespaced(client.clone(), "kube-system");
            api.patch(
                SERVICE,
                &PatchParams::apply("bosun-ingress").force(),
                &Patch::Apply(&endpoints),
            )
            .await?;
            Ok::<_, kube::Error>(())
        };
        match done.await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "installing the ingress class and service failed; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

async fn create_missing<K>(api: Api<K>, obj: serde_json::Value) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(obj).map_err(kube::Error::SerdeError)?;
    match api.create(&PostParams::default(), &obj).await {
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        r => r.map(|_| ()),
    }
}

/// Whether the Ingress is this controller's: its class (by name or by the older annotation) is
/// one of ours, or it names none and the default class is ours.
pub fn is_ours(ing: &Ingress, classes: &[Arc<IngressClass>]) -> bool {
    let ours = |c: &IngressClass| {
        c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(CONTROLLER)
    };
    let named = ing
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.clone())
        .or_else(|| ing.annotations().get(CLASS_ANNOTATION).cloned());
    match named {
        Some(name) => classes.iter().any(|c| c.name_any() == name && ours(c)),
        None => classes
            .iter()
            .filter(|c| c.annotations().get(DEFAULT_CLASS).map(String::as_str) == Some("true"))
            .max_by_key(|c| c.metadata.creation_timestamp.clone().map(|t| t.0))
            .is_some_and(|c| ours(c)),
    }
}

/// The proxy's routes for `ingresses`: their rules merged, the oldest one's default backend,
/// and the certificates of their TLS entries.
pub fn routes(
    ingresses: &[Arc<Ingress>],
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    secrets: &[Arc<Secret>],
) -> Routes {
    let services: BTreeMap<(String, String), &Service> = services
        .iter()
        .map(|s| {
            (
                (s.namespace().unwrap_or_default(), s.name_any()),
                s.as_ref(),
            )
        })
        .collect();
    let mut slices_of: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        if let Some(svc) = s.labels().get("kubernetes.io/service-name") {
            slices_of
                .entry((s.namespace().unwrap_or_default(), svc.clone()))
                .or_default()
                .push(s);
        }
    }
    let backend = |ns: &str, b: &IngressBackend| -> Option<Backend> {
        let svc = b.service.as_ref()?;
        let key = (ns.to_string(), svc.name.clone());
        let port = svc.port.as_ref()?;
        let name = format!(
            "{ns}/{}:{}",
            svc.name,
            port.number
                .map_or_else(|| port.name.clone().unwrap_or_default(), |n| n.to_string())
        );
        // a missing Service or port is a backend without endpoints: its requests get 503
        let spec_port = services
            .get(&key)
            .and_then(|s| s.spec.as_ref())
            .into_iter()
            .flat_map(|s| s.ports.iter().flatten())
            .find(|p| {
                port.number.is_some_and(|n| n == p.port)
                    || port.name.is_some() && port.name == p.name
            });
        let Some(spec_port) = spec_port else {
            return Some(Backend {
                name,
                endpoints: Vec::new(),
            });
        };
        let port_name = spec_port.name.clone().unwrap_or_default();
        let mut endpoints: Vec<SocketAddr> = slices_of
            .get(&key)
            .into_iter()
            .flatten()
            .flat_map(|s| {
                let target = s
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.clone().unwrap_or_default() == port_name)
                    .and_then(|p| p.port);
                s.endpoints
                    .iter()
                    .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
                    .flat_map(move |e| {
                        e.addresses.iter().filter_map(move |a| {
                            Some(SocketAddr::new(
                                a.parse().ok()?,
                                u16::try_from(target?).ok()?,
                            ))
                        })
                    })
            })
            .collect();
        endpoints.sort();
        endpoints.dedup();
        Some(Backend { name, endpoints })
    };
    let mut ingresses: Vec<&Arc<Ingress>> = ingresses.iter().collect();
    ingresses.sort_by_key(|i| {
        (
            i.metadata.creation_timestamp.clone().map(|t| t.0),
            i.namespace(),
            i.name_any(),
        )
    });
    let mut routes = Routes::default();
    for ing in ingresses {
        let ns = ing.namespace().unwrap_or_default();
        let Some(spec) = &ing.spec else { continue };
        if routes.default_backend.is_none() {
            routes.default_backend = spec.default_backend.as_ref().and_then(|b| backend(&ns, b));
        }
        for rule in spec.rules.iter().flatten() {
            let paths = rule
                .http
                .iter()
                .flat_map(|h| h.paths.iter())
                .filter_map(|p| {
                    Some(PathRule {
                        path: p
                            .path
                            .clone()
                            .filter(|p| !p.is_empty())
                            .unwrap_or_else(|| "/".into()),
                        kind: if p.path_type == "Exact" {
                            PathKind::Exact
                        } else {
                            PathKind::Prefix
                        },
                        backend: backend(&ns, &p.backend)?,
                    })
                })
                .collect();
            routes.rules.push(Rule {
                host: rule.host.clone().unwrap_or_default(),
                paths,
            });
        }
        for tls in spec.tls.iter().flatten() {
            let Some(name) = &tls.secret_name else {
                continue;
            };
            let Some(secret) = secrets
                .iter()
                .find(|s| s.namespace().as_deref() == Some(&ns) && s.name_any() == *name)
            else {
                continue;
            };
            let data = secret.data.as_ref();
            let field = |k: &str| data.and_then(|d| d.get(k)).map(|b| b.0.as_slice());
            let (Some(crt), Some(key)) = (field("tls.crt"), field("tls.key")) else {
                continue;
            };
            match Certificate::from_pem(tls.hosts.clone().unwrap_or_default(), crt, key) {
                Ok(c) => routes.certificates.push(c),
                Err(e) => {
                    tracing::warn!(secret = %format!("{ns}/{name}"), error = %e, "ingress TLS secret unusable")
                }
            }
        }
    }
    routes
}

/// Writes the ingress Service's load balancer addresses into the status of each Ingress that
/// does not show them yet.
async fn publish(client: &kube::Client, ingresses: &[Arc<Ingress>], services: &[Arc<Service>]) {
    let addresses: Vec<serde_json::Value> = services
        .iter()
        .find(|s| s.namespace().as_deref() == Some("kube-system") && s.name_any() == SERVICE)
        .and_then(|s| s.status.as_ref()?.load_balancer.as_ref()?.ingress.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.ip)
        .map(|ip| json!({"ip": ip}))
        .collect();
    for ing in ingresses {
        let current: Vec<serde_json::Value> = ing
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref()?.ingress.clone())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|i| i.ip)
            .map(|ip| json!({"ip": ip}))
            .collect();
        if current == addresses {
            continue;
        }
        let api: Api<Ingress> =
            Api::namespaced(client.clone(), &ing.namespace().unwrap_or_default());
        let patch = json!({"status": {"loadBalancer": {"ingress": addresses}}});
        if let Err(e) = api
            .patch_status(
                &ing.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            tracing::warn!(ingress = %ing.name_any(), error = %e, "updating the ingress status failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj<K: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<K> {
        Arc::new(serde_json::from_value(v).expect("object"))
    }

    fn class(name: &str, controller: &str, default: bool) -> Arc<IngressClass> {
        obj(json!({
            "metadata": {"name": name, "annotations": {DEFAULT_CLASS: default.to_string()}},
            "spec": {"controller": controller},
        }))
    }

    #[test]
    fn ingresses_of_our_class_or_of_the_default_one_are_ours() {
        let classes = [
            class("bosun", CONTROLLER, true),
            class("nginx", "k8s.io/ingress-nginx", false),
        ];
        let ing = |spec: serde_json::Value, annotations: serde_json::Value| -> Arc<Ingress> {
            obj(json!({"metadata": {"name": "i", "annotations": annotations}, "spec": spec}))
        };
        assert!(is_ours(
            &ing(json!({"ingressClassName": "bosun"}), json!({})),
            &classes
        ));
        assert!(is_ours(&ing(json!({}), json!({})), &classes));
        assert!(!is_ours(
            &ing(json!({"ingressClassName": "nginx"}), json!({})),
            &classes
        ));
        assert!(!is_ours(
            &ing(json!({}), json!({CLASS_ANNOTATION: "nginx"})),
            &classes
        ));
        assert!(is_ours(
            &ing(json!({}), json!({CLASS_ANNOTATION: "bosun"})),
            &classes
        ));
        let not_default = [class("bosun", CONTROLLER, false)];
        assert!(!is_ours(&ing(json!({}), json!({})), &not_default));
    }

    #[test]
    fn backends_are_the_ready_endpoints_of_the_service_port() {
        let svc: Arc<Service> = obj(json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "web"}, {"name": "admin", "port": 81}]},
        }));
        let slice: Arc<EndpointSlice> = obj(json!({
            "metadata": {"name": "web-x", "namespace": "ns", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "admin", "port": 9090}],
            "endpoints": [
                {"addresses": ["10.42.0.5"], "conditions": {"ready": true}},
                {"addresses": ["10.42.0.6"], "conditions": {"ready": false}},
                {"addresses": ["10.42.0.4"]},
            ],
        }));
        let ing: Arc<Ingress> = obj(json!({
            "metadata": {"name": "i", "namespace": "ns"},
            "spec": {
                "defaultBackend": {"service": {"name": "web", "port": {"name": "admin"}}},
                "rules": [{"host": "a.example.com", "http": {"paths": [
                    {"path": "/app", "pathType": "Exact", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
                    {"pathType": "ImplementationSpecific", "backend": {"service": {"name": "missing", "port": {"number": 80}}}},
                ]}}],
            },
        }));
        let r = routes(&[ing], &[svc], &[slice], &[]);
        let eps = |b: &Backend| {
            b.endpoints
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        let app = r.route("a.example.com", "/app").expect("route");
        assert_eq!(app.name, "ns/web:80");
        assert_eq!(eps(app), ["10.42.0.4:8080", "10.42.0.5:8080"]);
        assert_eq!(
            eps(r.route("other", "/").expect("default")),
            ["10.42.0.4:9090", "10.42.0.5:9090"]
        );
        // a rule without a path is a prefix "/"; a missing Service has no endpoints
        let missing = r.route("a.example.com", "/x").expect("route");
        assert_eq!(missing.name, "ns/missing:80");
        assert!(missing.endpoints.is_empty());
    }
}
