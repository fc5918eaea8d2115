//! Networking of a node: [`pod`] gives each pod's network namespace an address on the node's
//! bridge and a route out; [`proxy`] programs the kernel so that Service addresses and node
//! ports reach their endpoints; [`dns`] answers the cluster DNS names of Services and pods; [`policy`]
//! enforces NetworkPolicies on the node's pods.

pub mod dns;
pub mod ingress;
pub mod ipam;
pub mod pod;
pub mod policy;
pub mod proxy;
pub mod routes;

/// Removes the node's Service and NetworkPolicy rules, if there are any: they go with the agent
/// that programs them (pods and their addresses stay).
pub fn remove_rules() -> std::io::Result<()> {
    proxy::cleanup()?;
    policy::cleanup()
}
