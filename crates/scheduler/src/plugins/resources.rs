//! NodeResourcesFit and NodeResourcesBalancedAllocation: what a pod requests (cpu, memory,
//! ephemeral-storage, the pod itself, and extended resources such as `nvidia.com/gpu` or
//! hugepages), whether a node still has it, and how full the node would be.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// What upstream counts for a container that requests no cpu, when scoring (not filtering).
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// What upstream counts for a container that requests no memory, when scoring.
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// What a pod asks for, or what a node has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in millicores.
    pub milli_cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Ephemeral storage in bytes.
    pub ephemeral_storage: i64,
    /// Pods.
    pub pods: i64,
    /// Every other resource (extended resources, hugepages), in its units.
    pub scalar: BTreeMap<String, i64>,
}

impl Resources {
    fn of(map: Option<&BTreeMap<String, Quantity>>) -> Self {
        let mut r = Self::default();
        for (name, q) in map.into_iter().flatten() {
            r.set(name, &q.0);
        }
        r
    }

    fn set(&mut self, name: &str, quantity: &str) {
        let units = || api::quantity::units(quantity).unwrap_or(0);
        match name {
            "cpu" => self.milli_cpu = api::quantity::milli(quantity).unwrap_or(0),
            "memory" => self.memory = units(),
            "ephemeral-storage" => self.ephemeral_storage = units(),
            "pods" => self.pods = units(),
            other => {
                self.scalar.insert(other.to_string(), units());
            }
        }
    }

    /// Adds `other` to this.
    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu += other.milli_cpu;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        self.pods += other.pods;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    /// Takes `other` away from this.
    pub fn sub(&mut self, other: &Resources) {
        self.milli_cpu -= other.milli_cpu;
        self.memory -= other.memory;
        self.ephemeral_storage -= other.ephemeral_storage;
        self.pods -= other.pods;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }

    /// The larger of each resource.
    fn max(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }
}

/// A container's requests; a resource with a limit and no request is requested at its limit,
/// as defaulting makes it.
fn container_requests(c: &Container) -> Resources {
    let r = c.resources.as_ref();
    let mut out = Resources::of(r.and_then(|r| r.limits.as_ref()));
    for (name, q) in r.and_then(|r| r.requests.as_ref()).into_iter().flatten() {
        out.set(name, &q.0);
    }
    out
}

/// What a pod requests, as upstream computes it: the sum of its containers, or its largest
/// init container if that is more (they run one at a time, before the others), plus the pod's
/// overhead; `pods` is 1.
pub fn pod_requests(pod: &Pod) -> Resources {
    let Some(spec) = pod.spec.as_ref() else {
        return Resources::default();
    };
    let mut sum = Resources::default();
    for c in &spec.containers {
        sum.add(&container_requests(c));
    }
    for c in spec.init_containers.iter().flatten() {
        sum.max(&container_requests(c));
    }
    sum.add(&Resources::of(spec.overhead.as_ref()));
    sum.pods = 1;
    sum
}

/// The cpu (millicores) and memory (bytes) a pod counts for when nodes are scored: requests,
/// with upstream's defaults standing in for containers that request none, so that pods without
/// requests still spread.
pub fn non_zero_requests(pod: &Pod) -> (i64, i64) {
    let Some(spec) = pod.spec.as_ref() else {
        return (0, 0);
    };
    let of = |c: &Container| {
        let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
        let get = |k: &str| requests.and_then(|m| m.get(k)).or_else(|| limits?.get(k));
        (
            get("cpu")
                .and_then(|q| api::quantity::milli(&q.0).ok())
                .unwrap_or(DEFAULT_MILLI_CPU_REQUEST),
            get("memory")
                .and_then(|q| api::quantity::units(&q.0).ok())
                .unwrap_or(DEFAULT_MEMORY_REQUEST),
        )
    };
    let (mut cpu, mut memory) = (0, 0);
    for c in &spec.containers {
        let (c, m) = of(c);
        cpu += c;
        memory += m;
    }
    for c in spec.init_containers.iter().flatten() {
        let (c, m) = of(c);
        cpu = cpu.max(c);
        memory = memory.max(m);
    }
    (cpu, memory)
}

/// What a node can hold.
pub fn allocatable(node: &Node) -> Resources {
    Resources::of(node.status.as_ref().and_then(|s| s.allocatable.as_ref()))
}

/// NodeResourcesFit's filter: every resource the pod wants that the node no longer has, in
/// upstream's words ("Too many pods", "Insufficient cpu", "Insufficient nvidia.com/gpu").
pub fn insufficient(want: &Resources, used: &Resources, have: &Resources) -> Vec<String> {
    let mut reasons = Vec::new();
    if used.pods + 1 > have.pods {
        reasons.push("Too many pods".to_string());
    }
    let short = |w: i64, u: i64, h: i64| w > 0 && w > h - u;
    if short(want.milli_cpu, used.milli_cpu, have.milli_cpu) {
        reasons.push("Insufficient cpu".to_string());
    }
    if short(want.memory, used.memory, have.memory) {
        reasons.push("Insufficient memory".to_string());
    }
    if short(
        want.ephemeral_storage,
        used.ephemeral_storage,
        have.ephemeral_storage,
    ) {
        reasons.push("Insufficient ephemeral-storage".to_string());
    }
    for (name, w) in &want.scalar {
        let u = used.scalar.get(name).copied().unwrap_or(0);
        let h = have.scalar.get(name).copied().unwrap_or(0);
        if short(*w, u, h) {
            reasons.push(format!("Insufficient {name}"));
        }
    }
    reasons
}

fn fraction(requested: i64, capacity: i64) -> f64 {
    if capacity <= 0 {
        return 1.0;
    }
    (requested as f64 / capacity as f64).min(1.0)
}

/// NodeResourcesFit's LeastAllocated score, 0-100: the node left with the most free cpu and
/// memory (equally weighted) after the pod scores highest. `requested` includes the pod.
pub fn least_allocated(requested: (i64, i64), have: &Resources) -> i64 {
    let free = |u: i64, cap: i64| {
        if cap <= 0 {
            0
        } else {
            ((cap - u).max(0) * super::MAX_NODE_SCORE) / cap
        }
    };
    (free(requested.0, have.milli_cpu) + free(requested.1, have.memory)) / 2
}

/// NodeResourcesBalancedAllocation, 0-100: the node whose cpu and memory would be used in the
/// most equal shares scores highest (one minus the standard deviation of the two fractions).
pub fn balanced_allocation(requested: (i64, i64), have: &Resources) -> i64 {
    let cpu = fraction(requested.0, have.milli_cpu);
    let memory = fraction(requested.1, have.memory);
    let std = (cpu - memory).abs() / 2.0;
    ((1.0 - std) * super::MAX_NODE_SCORE as f64) as i64
}
