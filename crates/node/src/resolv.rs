//! A pod's /etc/resolv.conf as kubelet writes it from the pod's `dnsPolicy`: `ClusterFirst`
//! (the default) names the cluster DNS with the search path `NS.svc.DOMAIN svc.DOMAIN DOMAIN`
//! (then the node's) and `ndots:5`; `Default` is the node's own configuration; `None` is only
//! what `dnsConfig` says, which the other policies are merged with (nameservers and searches
//! added, options overridden by name).

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;

/// At most this many nameservers, as the C library reads.
const MAX_NAMESERVERS: usize = 3;
/// At most this many search domains, as kubelet allows.
const MAX_SEARCHES: usize = 32;

/// The resolv.conf of `pod` on a node whose own is `host`.
pub fn resolv_conf(pod: &Pod, host: &str, cluster_dns: Ipv4Addr, domain: &str) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let host_network = spec.host_network == Some(true);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let (host_servers, host_searches, host_options) = parse(host);
    let (mut servers, mut searches, mut options) = match policy {
        "None" => (Vec::new(), Vec::new(), Vec::new()),
        "ClusterFirst" if !host_network => cluster(pod, cluster_dns, domain, host_searches),
        "ClusterFirstWithHostNet" => cluster(pod, cluster_dns, domain, host_searches),
        // Default, and ClusterFirst in the node's network
        _ => (host_servers, host_searches, host_options),
    };
    if let Some(cfg) = &spec.dns_config {
        servers.extend(cfg.nameservers.iter().flatten().cloned());
        searches.extend(cfg.searches.iter().flatten().cloned());
        for o in cfg.options.iter().flatten() {
            let Some(name) = &o.name else { continue };
            let option = match &o.value {
                Some(v) => format!("{name}:{v}"),
                None => name.clone(),
            };
            options.retain(|x: &String| x.split(':').next() != Some(name.as_str()));
            options.push(option);
        }
    }
    let mut seen = std::collections::HashSet::new();
    searches.retain(|s| seen.insert(s.clone()));
    servers.truncate(MAX_NAMESERVERS);
    searches.truncate(MAX_SEARCHES);
    let mut out = String::new();
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    for s in &servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

type Conf = (Vec<String>, Vec<String>, Vec<String>);

fn cluster(pod: &Pod, dns: Ipv4Addr, domain: &str, host_searches: Vec<String>) -> Conf {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut searches = vec![
        format!("{ns}.svc.{domain}"),
        format!("svc.{domain}"),
        domain.to_string(),
    ];
    searches.extend(host_searches);
    (vec![dns.to_string()], searches, vec!["ndots:5".into()])
}

/// Nameservers (those a pod can reach: not the node's loopback), search domains and options.
fn parse(text: &str) -> Conf {
    let (mut servers, mut searches, mut options) = (Vec::new(), Vec::new(), Vec::new());
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(ip) = words.next()
                    && !ip.starts_with("127.")
                    && ip != "::1"
                {
                    servers.push(ip.to_string());
                }
            }
            Some("search" | "domain") => {
                searches = words.map(str::to_string).collect();
            }
            Some("options") => options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    (servers, searches, options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec}),
        )
        .expect("pod")
    }

    const HOST: &str =
        "nameserver 127.0.0.53\nnameserver 192.168.1.1\nsearch corp.example\noptions edns0\n";
    const DNS: Ipv4Addr = Ipv4Addr::new(10, 43, 0, 10);

    #[test]
    fn cluster_first_names_the_cluster_dns_and_search_path() {
        let conf = resolv_conf(&pod(json!({"containers": []})), HOST, DNS, "cluster.local");
        assert_eq!(
            conf,
            "search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\nnameserver 10.43.0.10\noptions ndots:5\n"
        );
    }

    #[test]
    fn default_is_the_nodes_and_none_only_dns_config() {
        let conf = resolv_conf(
            &pod(json!({"containers": [], "dnsPolicy": "Default"})),
            HOST,
            DNS,
            "cluster.local",
        );
        assert_eq!(
            conf,
            "search corp.example\nnameserver 192.168.1.1\noptions edns0\n"
        );
        let conf = resolv_conf(
            &pod(json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {
                "nameservers": ["1.2.3.4"], "searches": ["a.example"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}})),
            HOST,
            DNS,
            "cluster.local",
        );
        assert_eq!(
            conf,
            "search a.example\nnameserver 1.2.3.4\noptions ndots:2 edns0\n"
        );
    }

    #[test]
    fn dns_config_options_override_by_name() {
        let conf = resolv_conf(
            &pod(
                json!({"containers": [], "dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}}),
            ),
            HOST,
            DNS,
            "cluster.local",
        );
        assert!(conf.ends_with("options ndots:1\n"), "{conf}");
    }
}
