//! Rollout arithmetic of Deployments, pure and as upstream's `deployment/util` does it:
//! maxSurge rounds percentages up and maxUnavailable down, both zero means one unavailable;
//! how far a new ReplicaSet may grow in a rolling update; how old ReplicaSets shrink; how a
//! scale change during a rollout is shared out in proportion.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// maxSurge and maxUnavailable when a Deployment leaves them out.
const DEFAULT_PERCENT: &str = "25%";

/// An int-or-percent resolved against `total` (percentages rounded up or down); a malformed
/// percentage counts as zero (validation refuses it).
pub fn scaled(value: &IntOrString, total: i32, round_up: bool) -> i32 {
    match value {
        IntOrString::Int(i) => *i,
        IntOrString::String(s) => {
            let Some(pct) = s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) else {
                return 0;
            };
            let product = pct * i64::from(total);
            let v = if round_up {
                (product + 99).div_euclid(100)
            } else {
                product.div_euclid(100)
            };
            i32::try_from(v).unwrap_or(i32::MAX)
        }
    }
}

/// maxSurge and maxUnavailable as numbers of pods for `desired` replicas; when both come out
/// zero, one pod may be unavailable so that the rollout can proceed.
pub fn fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> (i32, i32) {
    let default = IntOrString::String(DEFAULT_PERCENT.into());
    let surge = scaled(max_surge.unwrap_or(&default), desired, true);
    let unavailable = scaled(max_unavailable.unwrap_or(&default), desired, false);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// How many replicas the new ReplicaSet of a rolling update may have now: as many more as the
/// surge allows over all ReplicaSets' sizes, but no more than the Deployment wants.
pub fn new_replicas(desired: i32, max_surge: i32, all_sizes: i32, new_size: i32) -> i32 {
    let max_total = desired + max_surge;
    if all_sizes >= max_total {
        return new_size;
    }
    let up = (max_total - all_sizes).min(desired - new_size);
    new_size + up.max(0)
}

/// How many old pods a rolling update may remove now without going under the minimum
/// available, counting the new ReplicaSet's unavailable pods as already missing.
pub fn max_scaled_down(
    all_sizes: i32,
    desired: i32,
    max_unavailable: i32,
    new_size: i32,
    new_available: i32,
) -> i32 {
    let min_available = desired - max_unavailable;
    let new_unavailable = new_size - new_available;
    all_sizes - min_available - new_unavailable
}

/// One active ReplicaSet in a proportional scale: its size and the Deployment size (plus
/// surge) it was last sized for (its max-replicas annotation).
#[derive(Debug, Clone, Copy)]
pub struct Share {
    /// spec.replicas.
    pub size: i32,
    /// The `deployment.kubernetes.io/max-replicas` annotation, if valid.
    pub max_replicas: Option<i32>,
}

/// Shares `to_add` replicas (negative to remove) out over `sets` (sorted largest first) in
/// proportion to their sizes, leftovers going to the first, as upstream's `scale`.
/// `allowed` is the Deployment's replicas plus surge; `status_replicas` its last status.
pub fn proportional(sets: &[Share], to_add: i32, allowed: i32, status_replicas: i32) -> Vec<i32> {
    let mut added = 0;
    let mut sizes: Vec<i32> = sets
        .iter()
        .map(|s| {
            if to_add == 0 || s.size == 0 || to_add == added {
                return s.size;
            }
            let fraction = if allowed == 0 {
                -s.size
            } else {
                let annotated = s.max_replicas.unwrap_or(status_replicas);
                if annotated == 0 {
                    0
                } else {
                    let target = f64::from(s.size) * f64::from(allowed) / f64::from(annotated);
                    // Sizes are far below 2^31; the rounding is upstream's.
                    #[allow(clippy::cast_possible_truncation)]
                    let target = target.round() as i32;
                    target - s.size
                }
            };
            let remaining = to_add - added;
            let p = if to_add > 0 {
                fraction.min(remaining)
            } else {
                fraction.max(remaining)
            };
            added += p;
            s.size + p
        })
        .collect();
    if let Some(first) = sizes.first_mut()
        && to_add != 0
    {
        *first = (*first + to_add - added).max(0);
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pct(s: &str) -> IntOrString {
        IntOrString::String(s.into())
    }

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        assert_eq!(fenceposts(None, None, 10), (3, 2));
        assert_eq!(fenceposts(None, None, 3), (1, 0));
        assert_eq!(fenceposts(Some(&pct("0%")), Some(&pct("0%")), 3), (0, 1));
        assert_eq!(
            fenceposts(Some(&IntOrString::Int(2)), Some(&IntOrString::Int(0)), 5),
            (2, 0)
        );
        assert_eq!(scaled(&pct("33%"), 10, true), 4);
        assert_eq!(scaled(&pct("33%"), 10, false), 3);
        assert_eq!(scaled(&pct("x%"), 10, false), 0);
    }

    #[test]
    fn the_new_replica_set_grows_within_the_surge() {
        // 3 wanted, surge 1: the new set starts at 1 while the old still has 3.
        assert_eq!(new_replicas(3, 1, 3, 0), 1);
        // Already at 3 + 1 pods in all: no growth.
        assert_eq!(new_replicas(3, 1, 4, 1), 1);
        // Never beyond what the Deployment wants.
        assert_eq!(new_replicas(3, 10, 3, 2), 3);
    }

    #[test]
    fn old_pods_go_only_as_far_as_availability_allows() {
        // 3 wanted, 0 may be unavailable, 4 pods, new one not yet available: none may go.
        assert_eq!(max_scaled_down(4, 3, 0, 1, 0), 0);
        // Once it is available one old pod may go.
        assert_eq!(max_scaled_down(4, 3, 0, 1, 1), 1);
    }

    #[test]
    fn scaling_mid_rollout_is_shared_in_proportion() {
        // Upstream's example: 10 replicas, surge 3, sets of 8 (new) and 5 (old), scaled to 15:
        // allowed 18, 5 to add, shared 3 and 2.
        let sets = [
            Share {
                size: 8,
                max_replicas: Some(13),
            },
            Share {
                size: 5,
                max_replicas: Some(13),
            },
        ];
        assert_eq!(proportional(&sets, 5, 18, 13), vec![11, 7]);
        // Scaled down to 0 everything goes.
        assert_eq!(proportional(&sets, -13, 0, 13), vec![0, 0]);
        // Leftovers from rounding go to the first.
        let three = [Share {
            size: 1,
            max_replicas: Some(3),
        }; 3];
        assert_eq!(proportional(&three, 1, 4, 3), vec![2, 1, 1]);
    }
}
