//! Networking of a node: [`pod`] gives each pod's network namespace an address on the node's
//! bridge and a route out. Service proxying and cluster DNS come with their issue.

pub mod ipam;
pub mod pod;
