//! Cluster DNS, as CoreDNS's kubernetes plugin answers it: under the cluster domain
//! (`cluster.local`), `svc.ns.svc` is a Service's ClusterIP (or, headless, its ready endpoints'
//! addresses), `host.svc.ns.svc` one endpoint of a headless Service by hostname (or dashed
//! address), `_port._proto.svc.ns.svc` SRV records of named ports, an ExternalName Service a
//! CNAME (followed when it points into the cluster), `a-b-c-d.ns.pod` a pod address, and
//! `d.c.b.a.in-addr.arpa` the name of a Service or endpoint address. Other names under the domain
//! are NXDOMAIN with the zone's SOA; names outside it are forwarded to the node's resolvers.
//! Messages are encoded and decoded with `hickory-proto`; the UDP and TCP loops are small and
//! our own, as forwarding relays the resolvers' answers byte for byte.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// How long answers may be cached, as CoreDNS's kubernetes plugin's default.
const TTL: u32 = 5;

/// A Service as DNS sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceEntry {
    /// Its ClusterIP; `None` for headless and ExternalName Services.
    pub cluster_ip: Option<Ipv4Addr>,
    /// The name an ExternalName Service points at.
    pub external_name: Option<String>,
    /// Its named ports: (name, lowercase protocol, port).
    pub ports: Vec<(String, String, u16)>,
    /// Its ready endpoints (for headless Services): hostname, if any, and address.
    pub endpoints: Vec<(Option<String>, Ipv4Addr)>,
}

/// What the cluster DNS knows: Services by (namespace, name).
#[derive(Debug, Clone, Default)]
pub struct Zone {
    /// The Services.
    pub services: HashMap<(String, String), ServiceEntry>,
}

/// The cluster DNS server of a node.
pub struct Dns {
    domain: String,
    zone: RwLock<Arc<Zone>>,
    upstreams: Vec<SocketAddr>,
}

enum Outcome {
    Answer(Message),
    Forward,
}

impl Dns {
    /// A server for `domain` (e.g. `cluster.local`) forwarding other names to `upstreams`.
    pub fn new(domain: &str, upstreams: Vec<SocketAddr>) -> Self {
        Self {
            domain: domain.trim_end_matches('.').to_lowercase(),
            zone: RwLock::new(Arc::new(Zone::default())),
            upstreams,
        }
    }

    /// The nameservers of a resolv.conf, on port 53.
    pub fn upstreams_from(resolv_conf: &str) -> Vec<SocketAddr> {
        resolv_conf
            .lines()
            .filter_map(|l| l.trim().strip_prefix("nameserver"))
            .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
            .collect()
    }

    /// Replaces what the server knows.
    pub fn set_zone(&self, zone: Zone) {
        *self.zone.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(zone);
    }

    /// Serves DNS on `addr` over UDP and TCP until an error stops a socket.
    pub async fn serve(self: Arc<Self>, addr: SocketAddr) -> std::io::Result<()> {
        let udp = Arc::new(UdpSocket::bind(addr).await?);
        let tcp = TcpListener::bind(addr).await?;
        let udp_loop = {
            let dns = self.clone();
            async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let (n, peer) = udp.recv_from(&mut buf).await?;
                    let query = buf[..n].to_vec();
                    match dns.answer(&query) {
                        Some(reply) => {
                            let _ = udp.send_to(&reply, peer).await;
                        }
                        None => {
                            let (dns, udp) = (dns.clone(), udp.clone());
                            tokio::spawn(async move {
                                if let Some(reply) = dns.forward(&query).await {
                                    let _ = udp.send_to(&reply, peer).await;
                                }
                            });
                        }
                    }
                }
            }
        };
        let tcp_loop = async move {
            loop {
                let (mut conn, _) = tcp.accept().await?;
                let dns = self.clone();
                tokio::spawn(async move {
                    loop {
                        let mut len = [0u8; 2];
                        if conn.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if conn.read_exact(&mut query).await.is_err() {
                            return;
                        }
                        let reply = match dns.answer(&query) {
                            Some(r) => r,
                            None => match dns.forward(&query).await {
                                Some(r) => r,
                                None => return,
                            },
                        };
                        let Ok(n) = u16::try_from(reply.len()) else {
                            return;
                        };
                        if conn.write_all(&n.to_be_bytes()).await.is_err()
                            || conn.write_all(&reply).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        };
        tokio::select! {
            r = udp_loop => r,
            r = tcp_loop => r,
        }
    }

    /// The reply to a query in wire format, or `None` when it is for the node's resolvers.
    pub fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let request = match Message::from_vec(query) {
            Ok(m) => m,
            Err(_) => {
                // too broken to answer: a FORMERR needs at least the id
                let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
                let mut m = Message::new(id, MessageType::Response, OpCode::Query);
                m.metadata.response_code = ResponseCode::FormErr;
                return m.to_vec().ok();
            }
        };
        match self.resolve(&request) {
            Outcome::Forward => None,
            Outcome::Answer(m) => m.to_vec().ok(),
        }
    }

    fn resolve(&self, request: &Message) -> Outcome {
        let mut reply = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
        reply.metadata.recursion_desired = request.metadata.recursion_desired;
        reply.metadata.recursion_available = true;
        reply.queries = request.queries.clone();
        let Some(q) = request.queries.first() else {
            reply.metadata.response_code = ResponseCode::FormErr;
            return Outcome::Answer(reply);
        };
        let name = q.name().to_ascii().to_lowercase();
        let name = name.trim_end_matches('.');
        let zone = self.zone.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(addr) = name.strip_suffix(".in-addr.arpa") {
            let Some(target) = reverse(&zone, addr, &self.domain) else {
                return Outcome::Forward;
            };
            reply.metadata.authoritative = true;
            if q.query_type() == RecordType::PTR {
                reply.add_answer(record(q.name().clone(), RData::PTR(PTR(fqdn(&target)))));
            }
            return Outcome::Answer(reply);
        }
        let Some(local) = name
            .strip_suffix(&self.domain)
            .filter(|rest| rest.is_empty() || rest.ends_with('.'))
            .map(|rest| rest.trim_end_matches('.'))
        else {
            return Outcome::Forward;
        };
        reply.metadata.authoritative = true;
        match self.lookup(&zone, local, q.query_type(), 0) {
            Some(records) => {
                reply.add_answers(records.into_iter().map(|(owner, rdata)| {
                    record(owner.unwrap_or_else(|| q.name().clone()), rdata)
                }));
                if reply.answers.is_empty() {
                    reply.add_authority(self.soa());
                }
            }
            None => {
                reply.metadata.response_code = ResponseCode::NXDomain;
                reply.add_authority(self.soa());
            }
        }
        Outcome::Answer(reply)
    }

    /// The records of `local` (the name less the domain) for `qtype`: `None` when the name
    /// does not exist, empty when it exists without such records. An owner of `None` is the
    /// queried name.
    fn lookup(
        &self,
        zone: &Zone,
        local: &str,
        qtype: RecordType,
        depth: u8,
    ) -> Option<Vec<(Option<Name>, RData)>> {
        let labels: Vec<&str> = if local.is_empty() {
            Vec::new()
        } else {
            local.split('.').collect()
        };
        let a = |ip: Ipv4Addr| {
            if qtype == RecordType::A || qtype == RecordType::ANY {
                vec![(None, RData::A(A(ip)))]
            } else {
                Vec::new()
            }
        };
        let service = |ns: &str, svc: &str| zone.services.get(&(ns.to_string(), svc.to_string()));
        match labels.as_slice() {
            [] | ["svc"] | ["pod"] => Some(Vec::new()),
            [ns, "svc"] | [ns, "pod"] => zone.services.keys().any(|(n, _)| n == ns).then(Vec::new),
            [ip, _ns, "pod"] => parse_dashed(ip).map(a),
            [svc, ns, "svc"] => {
                let entry = service(ns, svc)?;
                let own = fqdn(&format!("{svc}.{ns}.svc.{}", self.domain));
                if let Some(target) = &entry.external_name {
                    let mut out = vec![(None, RData::CNAME(CNAME(fqdn(target))))];
                    let target = target.trim_end_matches('.').to_lowercase();
                    if let Some(inside) = target.strip_suffix(&format!(".{}", self.domain))
                        && depth < 8
                        && qtype != RecordType::CNAME
                    {
                        let chased = self.lookup(zone, inside, qtype, depth + 1);
                        out.extend(
                            chased.into_iter().flatten().map(|(owner, r)| {
                                (Some(owner.unwrap_or_else(|| fqdn(&target))), r)
                            }),
                        );
                    }
                    return Some(out);
                }
                if qtype == RecordType::SRV {
                    return Some(self.srv(entry, svc, ns, &own, None));
                }
                match entry.cluster_ip {
                    Some(ip) => Some(a(ip)),
                    None => Some(entry.endpoints.iter().flat_map(|(_, ip)| a(*ip)).collect()),
                }
            }
            [port, proto, svc, ns, "svc"] if port.starts_with('_') && proto.starts_with('_') => {
                let entry = service(ns, svc)?;
                let own = fqdn(&format!("{svc}.{ns}.svc.{}", self.domain));
                let wanted = (&port[1..], &proto[1..]);
                let records = self.srv(entry, svc, ns, &own, Some(wanted));
                if records.is_empty() {
                    return None;
                }
                Some(if qtype == RecordType::SRV {
                    records
                } else {
                    Vec::new()
                })
            }
            [host, svc, ns, "svc"] => {
                let entry = service(ns, svc)?;
                let (_, ip) = entry
                    .endpoints
                    .iter()
                    .find(|(h, ip)| endpoint_label(h.as_deref(), *ip) == *host)?;
                Some(a(*ip))
            }
            _ => None,
        }
    }

    /// SRV records of a Service's ports (those matching `wanted` (name, protocol), if given).
    fn srv(
        &self,
        entry: &ServiceEntry,
        svc: &str,
        ns: &str,
        own: &Name,
        wanted: Option<(&str, &str)>,
    ) -> Vec<(Option<Name>, RData)> {
        let mut out = Vec::new();
        for (name, proto, port) in &entry.ports {
            if name.is_empty() || wanted.is_some_and(|(n, p)| n != name || p != proto) {
                continue;
            }
            if entry.cluster_ip.is_some() {
                out.push((None, RData::SRV(SRV::new(0, 100, *port, own.clone()))));
            } else {
                for (host, ip) in &entry.endpoints {
                    let target = fqdn(&format!(
                        "{}.{svc}.{ns}.svc.{}",
                        endpoint_label(host.as_deref(), *ip),
                        self.domain
                    ));
                    out.push((None, RData::SRV(SRV::new(0, 100, *port, target))));
                }
            }
        }
        out
    }

    fn soa(&self) -> Record {
        let domain = fqdn(&self.domain);
        record(
            domain.clone(),
            RData::SOA(SOA::new(
                fqdn(&format!("ns.dns.{}", self.domain)),
                fqdn(&format!("hostmaster.{}", self.domain)),
                1,
                7200,
                1800,
                86400,
                TTL,
            )),
        )
    }

    /// Relays a query to the node's resolvers, the first that answers.
    async fn forward(&self, query: &[u8]) -> Option<Vec<u8>> {
        for upstream in &self.upstreams {
            let bind: SocketAddr = if upstream.is_ipv4() {
                "0.0.0.0:0".parse().ok()?
            } else {
                "[::]:0".parse().ok()?
            };
            let Ok(sock) = UdpSocket::bind(bind).await else {
                continue;
            };
            if sock.send_to(query, upstream).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; 4096];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await
            {
                buf.truncate(n);
                return Some(buf);
            }
        }
        None
    }
}

fn record(name: Name, rdata: RData) -> Record {
    Record::from_rdata(name, TTL, rdata)
}

fn fqdn(name: &str) -> Name {
    let mut n = Name::from_ascii(name.trim_end_matches('.')).unwrap_or_else(|_| Name::root());
    n.set_fqdn(true);
    n
}

/// An endpoint's label: its hostname, or its address with dashes.
fn endpoint_label(hostname: Option<&str>, ip: Ipv4Addr) -> String {
    hostname
        .map(str::to_string)
        .unwrap_or_else(|| ip.to_string().replace('.', "-"))
}

fn parse_dashed(label: &str) -> Option<Ipv4Addr> {
    label.replace('-', ".").parse().ok()
}

/// The name of a reversed address (`d.c.b.a`): a Service's, or a headless endpoint's.
fn reverse(zone: &Zone, reversed: &str, domain: &str) -> Option<String> {
    let mut octets: Vec<&str> = reversed.split('.').collect();
    octets.reverse();
    let ip: Ipv4Addr = octets.join(".").parse().ok()?;
    for ((ns, svc), entry) in &zone.services {
        if entry.cluster_ip == Some(ip) {
            return Some(format!("{svc}.{ns}.svc.{domain}"));
        }
        if let Some((host, _)) = entry.endpoints.iter().find(|(_, e)| *e == ip) {
            let label = endpoint_label(host.as_deref(), ip);
            return Some(format!("{label}.{svc}.{ns}.svc.{domain}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;

    fn dns() -> Dns {
        let dns = Dns::new("cluster.local", vec![]);
        let mut zone = Zone::default();
        zone.services.insert(
            ("default".into(), "web".into()),
            ServiceEntry {
                cluster_ip: Some(Ipv4Addr::new(10, 43, 0, 7)),
                ports: vec![("http".into(), "tcp".into(), 80)],
                ..Default::default()
            },
        );
        zone.services.insert(
            ("default".into(), "db".into()),
            ServiceEntry {
                ports: vec![("pg".into(), "tcp".into(), 5432)],
                endpoints: vec![
                    (Some("db-0".into()), Ipv4Addr::new(10, 42, 0, 5)),
                    (None, Ipv4Addr::new(10, 42, 0, 6)),
                ],
                ..Default::default()
            },
        );
        zone.services.insert(
            ("default".into(), "alias".into()),
            ServiceEntry {
                external_name: Some("web.default.svc.cluster.local".into()),
                ..Default::default()
            },
        );
        dns.set_zone(zone);
        dns
    }

    fn ask(dns: &Dns, name: &str, qtype: RecordType) -> Option<Message> {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
        dns.answer(&m.to_vec().expect("encode"))
            .map(|r| Message::from_vec(&r).expect("decode"))
    }

    fn addresses(m: &Message) -> Vec<String> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn services_answer_with_their_cluster_ip_or_endpoints() {
        let d = dns();
        let m = ask(&d, "web.default.svc.cluster.local.", RecordType::A).expect("answered");
        assert_eq!(addresses(&m), ["10.43.0.7"]);
        assert!(m.metadata.authoritative);
        let m = ask(&d, "db.default.svc.cluster.local.", RecordType::A).expect("answered");
        assert_eq!(addresses(&m), ["10.42.0.5", "10.42.0.6"]);
        let m = ask(&d, "db-0.db.default.svc.cluster.local.", RecordType::A).expect("answered");
        assert_eq!(addresses(&m), ["10.42.0.5"]);
        let m =
            ask(&d, "10-42-0-6.db.default.svc.cluster.local.", RecordType::A).expect("answered");
        assert_eq!(addresses(&m), ["10.42.0.6"]);
        let m = ask(&d, "10-1-2-3.default.pod.cluster.local.", RecordType::A).expect("answered");
        assert_eq!(addresses(&m), ["10.1.2.3"]);
    }

    #[test]
    fn missing_names_are_nxdomain_and_other_types_nodata() {
        let d = dns();
        let m = ask(&d, "nope.default.svc.cluster.local.", RecordType::A).expect("answered");
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(m.authorities.len(), 1, "SOA in authority");
        let m = ask(&d, "web.default.svc.cluster.local.", RecordType::AAAA).expect("answered");
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert!(
            ask(&d, "example.com.", RecordType::A).is_none(),
            "forwarded"
        );
    }

    #[test]
    fn srv_cname_and_ptr_records() {
        let d = dns();
        let m = ask(
            &d,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        )
        .expect("answered");
        match &m.answers[0].data {
            RData::SRV(srv) => {
                assert_eq!(srv.port, 80);
                assert_eq!(srv.target.to_ascii(), "web.default.svc.cluster.local.");
            }
            other => panic!("not SRV: {other:?}"),
        }
        let m = ask(
            &d,
            "_pg._tcp.db.default.svc.cluster.local.",
            RecordType::SRV,
        )
        .expect("answered");
        assert_eq!(m.answers.len(), 2);
        let m = ask(&d, "alias.default.svc.cluster.local.", RecordType::A).expect("answered");
        assert!(matches!(&m.answers[0].data, RData::CNAME(_)));
        assert_eq!(addresses(&m), ["10.43.0.7"]);
        let m = ask(&d, "7.0.43.10.in-addr.arpa.", RecordType::PTR).expect("answered");
        match &m.answers[0].data {
            RData::PTR(p) => assert_eq!(p.0.to_ascii(), "web.default.svc.cluster.local."),
            other => panic!("not PTR: {other:?}"),
        }
    }
}
