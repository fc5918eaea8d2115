//! Links `bosun` as a position-dependent executable. Every container has a supervisor that is
//! this binary (`bosun shim`); in a position-independent one the loader writes ~0.9 MiB of
//! relocations into private pages of each process, which would be most of a supervisor's
//! memory. Position-dependent, those pages stay shared with the page cache, as Go builds
//! kubelet and containerd by default.
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
