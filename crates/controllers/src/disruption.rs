//! The disruption controller: keeps each PodDisruptionBudget's status, which the eviction
//! subresource reads, as upstream's. Expected pods are the replicas of the selected pods'
//! controllers (ReplicaSet, StatefulSet, ReplicationController), or the pods themselves when
//! only an integer minAvailable is given or no controller is known; desired healthy pods come
//! from minAvailable or maxUnavailable (percentages rounded up); disruptions allowed are the
//! healthy (Ready) pods beyond that, less evictions not yet seen through. Evictions recorded in
//! `disruptedPods` are forgotten once their pod is going or after two minutes.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;

use crate::pods::{self, controller_of};
use crate::{Context, Result, drive, retry};

/// How long an eviction counts against the budget before the pod is seen going.
const DELETION_TIMEOUT_SECONDS: i64 = 120;

/// Runs the disruption controller.
pub async fn run(ctx: Arc<Context>) {
    let budgets = ctx.informers.budgets.clone();
    let store = budgets.store();
    let stream = Controller::for_shared_stream(budgets.subscribe(), budgets.store())
        .watches_shared_stream(ctx.informers.pods.subscribe(), move |pod: Arc<Pod>| {
            store
                .state()
                .into_iter()
                .filter(|b| b.namespace() == pod.namespace())
                .filter(|b| {
                    b.spec
                        .as_ref()
                        .and_then(|s| s.selector.as_ref())
                        .and_then(pods::selector)
                        .is_some_and(|s| !s.is_empty() && pods::selects(&s, &pod.metadata))
                })
                .map(|b| ObjectRef::from_obj(b.as_ref()))
                .collect::<Vec<_>>()
        })
        .run(reconcile, retry, ctx);
    drive("disruption", stream).await;
}

/// desiredHealthy for a budget over `expected` pods.
pub fn desired_healthy(
    min_available: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    expected: i32,
) -> i32 {
    match (min_available, max_unavailable) {
        (Some(min), _) => crate::rollout::scaled(min, expected, true),
        (None, Some(max)) => (expected - crate::rollout::scaled(max, expected, true)).max(0),
        (None, None) => expected,
    }
}

async fn reconcile(pdb: Arc<PodDisruptionBudget>, ctx: Arc<Context>) -> Result<Action> {
    let ns = pdb.namespace().unwrap_or_default();
    let spec = pdb.spec.clone().unwrap_or_default();
    let selector = spec
        .selector
        .as_ref()
        .and_then(pods::selector)
        .filter(|s| !s.is_empty());
    let selected: Vec<Arc<Pod>> = ctx
        .informers
        .pods
        .objects()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
        .filter(|p| {
            selector
                .as_ref()
                .is_some_and(|s| pods::selects(s, &p.metadata))
        })
        .collect();
    let healthy = selected
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && pods::is_ready(p))
        .count();
    let healthy = i32::try_from(healthy).unwrap_or(i32::MAX);

    // Expected pods: the scale of their controllers, unless an integer minAvailable suffices.
    let integer_min = matches!(spec.min_available, Some(IntOrString::Int(_)));
    let mut scales: BTreeMap<String, i32> = BTreeMap::new();
    let mut uncontrolled = 0;
    for p in &selected {
        match controller_of(&p.metadata) {
            Some(r) if !integer_min => {
                let replicas = match r.kind.as_str() {
                    "ReplicaSet" => ctx
                        .informers
                        .replicasets
                        .store()
                        .get(&ObjectRef::new(&r.name).within(&ns))
                        .and_then(|rs| rs.spec.as_ref().and_then(|s| s.replicas)),
                    "StatefulSet" => ctx
                        .informers
                        .statefulsets
                        .store()
                        .get(&ObjectRef::new(&r.name).within(&ns))
                        .and_then(|s| s.spec.as_ref().and_then(|s| s.replicas)),
                    _ => None,
                };
                match replicas {
                    Some(n) => {
                        scales.insert(r.uid.clone(), n);
                    }
                    None => uncontrolled += 1,
                }
            }
            _ => uncontrolled += 1,
        }
    }
    let expected = scales.values().sum::<i32>() + uncontrolled;
    let desired = desired_healthy(
        spec.min_available.as_ref(),
        spec.max_unavailable.as_ref(),
        expected,
    );

    // Evictions not yet seen through still count.
    let now = Timestamp::now();
    let by_name: HashMap<String, &Arc<Pod>> = selected.iter().map(|p| (p.name_any(), p)).collect();
    let disrupted: BTreeMap<String, Time> = pdb
        .status
        .as_ref()
        .and_then(|s| s.disrupted_pods.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|(name, at)| {
            by_name
                .get(name)
                .is_some_and(|p| p.metadata.deletion_timestamp.is_none())
                && now.as_second() - at.0.as_second() < DELETION_TIMEOUT_SECONDS
        })
        .collect();
    let pending = i32::try_from(disrupted.len()).unwrap_or(0);
    let allowed = (healthy - desired - pending).max(0);

    let previous = pdb
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "DisruptionAllowed"));
    let (state, reason, message) = if allowed > 0 {
        ("True", "SufficientPods", "")
    } else {
        ("False", "InsufficientPods", "")
    };
    let condition = Condition {
        type_: "DisruptionAllowed".into(),
        status: state.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: pdb.metadata.generation,
        last_transition_time: previous
            .filter(|c| c.status == state)
            .map_or(Time(now), |c| c.last_transition_time.clone()),
    };
    let status = PodDisruptionBudgetStatus {
        observed_generation: pdb.metadata.generation,
        current_healthy: healthy,
        desired_healthy: desired,
        expected_pods: expected,
        disruptions_allowed: allowed,
        disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
        conditions: Some(vec![condition]),
    };
    if pdb.status.as_ref() != Some(&status) {
        let api: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &ns);
        crate::write_status(&api, &pdb.name_any(), &status, &["disruptedPods"]).await?;
    }
    Ok(Action::requeue(Duration::from_secs(if pending > 0 {
        10
    } else {
        300
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_healthy_from_min_available_or_max_unavailable() {
        let int = IntOrString::Int;
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(desired_healthy(Some(&int(2)), None, 3), 2);
        assert_eq!(desired_healthy(Some(&pct("50%")), None, 3), 2);
        assert_eq!(desired_healthy(None, Some(&int(1)), 3), 2);
        assert_eq!(desired_healthy(None, Some(&pct("50%")), 3), 1);
        assert_eq!(desired_healthy(None, None, 3), 3);
    }
}
