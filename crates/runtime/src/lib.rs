//! The container runtime of a node. Today: [`images`], the node's content-addressed image store
//! (import of OCI and docker archives, unpacked layers ready for overlayfs, listing, removal
//! with garbage collection) and [`reference`], image names as docker and Kubernetes read them.
//! Containers (namespaces, cgroups, rootfs, supervision, exec) come next.

pub mod images;
pub mod reference;
