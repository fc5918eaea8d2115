//! The container runtime of a node:
//!
//! - [`images`]: the node's content-addressed image store (import of OCI and docker archives,
//!   unpacked layers ready for overlayfs, listing, removal with garbage collection), and
//!   [`reference`], image names as docker and Kubernetes read them; [`pull`] fetches images
//!   from registries.
//! - [`container`]: containers created from images, started under a supervisor ([`shim`]) that
//!   outlives the agent, read back, signalled and removed; [`bundle`] writes their OCI runtime
//!   spec and [`rootfs`] their overlayfs root; [`exec`] runs more processes in them;
//!   [`cri_log`] is the format of their logs; [`terminal`] gives them and exec'd processes
//!   terminals.
//! - [`sandbox`]: the namespaces the containers of one pod share; [`cgroups`] removes a pod's
//!   cgroups once its containers are gone.

pub mod bundle;
pub mod cgroups;
pub mod container;
pub mod cri_log;
pub mod exec;
pub mod images;
pub mod pull;
pub mod reference;
pub mod rootfs;
pub mod sandbox;
pub mod shim;
pub mod terminal;
