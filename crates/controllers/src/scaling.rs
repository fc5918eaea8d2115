//! The HorizontalPodAutoscaler's arithmetic, pure, as upstream's replica calculator and
//! behaviors: a replica count from per-pod usage against a target (utilization of requests,
//! or an average value), with the 10% tolerance and upstream's handling of pods that are
//! unready, still starting or without metrics; then that count stabilized over past
//! recommendations and held to the scaling policies' rates and the min/max bounds.

use std::collections::HashMap;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// Ratios this close to 1 change nothing (`--horizontal-pod-autoscaler-tolerance`).
pub const TOLERANCE: f64 = 0.1;
/// How long after a pod starts its CPU samples may be skewed by start-up.
const CPU_INITIALIZATION: SignedDuration = SignedDuration::from_secs(300);
/// How long after start a pod that turned unready counts as never having been ready.
const INITIAL_READINESS_DELAY: SignedDuration = SignedDuration::from_secs(30);

/// What a pod looks like to the calculation.
#[derive(Debug, Clone)]
pub struct PodView {
    /// Its name.
    pub name: String,
    /// Deleting, or Failed: not counted at all.
    pub ignored: bool,
    /// Pending.
    pub pending: bool,
    /// When it started.
    pub started: Option<Timestamp>,
    /// Its Ready condition: status and last transition.
    pub ready: Option<(bool, Timestamp)>,
    /// Its containers' summed request of the resource, in thousandths; None when one has none.
    pub request: Option<i64>,
}

/// A pod's usage of a resource, in thousandths, and when and over what it was measured.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// The usage.
    pub value: i64,
    /// When it was measured.
    pub timestamp: Timestamp,
    /// Over how long.
    pub window: SignedDuration,
}

/// What a Resource metric aims at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A percentage of the pods' requests.
    Utilization(i64),
    /// An amount per pod, in thousandths.
    AverageValue(i64),
}

/// A replica count proposed for one metric, with the usage it saw: utilization (percent, for
/// Utilization targets) and the average per pod, in thousandths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proposal {
    /// The replicas.
    pub replicas: i32,
    /// The utilization seen, for Utilization targets.
    pub utilization: Option<i64>,
    /// The average usage per pod.
    pub average: i64,
}

/// The replicas one Resource metric asks for, as upstream's `GetResourceReplicas` and
/// `GetRawResourceReplicas`.
pub fn replicas(
    current: i32,
    target: Target,
    resource: &str,
    pods: &[PodView],
    samples: &HashMap<String, Sample>,
    now: Timestamp,
) -> Result<Proposal, String> {
    if pods.is_empty() {
        return Err("no pods returned by selector while calculating replica count".into());
    }
    let mut usable: HashMap<&str, i64> = HashMap::new();
    let (mut ready, mut unready, mut missing) = (0usize, Vec::new(), Vec::new());
    for p in pods {
        if p.ignored {
            continue;
        }
        if p.pending {
            unready.push(p);
            continue;
        }
        let Some(sample) = samples.get(&p.name) else {
            missing.push(p);
            continue;
        };
        if resource == "cpu" && !cpu_sample_counts(p, sample, now) {
            unready.push(p);
            continue;
        }
        ready += 1;
        usable.insert(&p.name, sample.value);
    }
    if usable.is_empty() {
        return Err("did not receive metrics for targeted pods (pods might be unready)".into());
    }
    let request = |name: &str| pods.iter().find(|p| p.name == name).and_then(|p| p.request);
    if let Target::Utilization(_) = target {
        for name in usable.keys() {
            if request(name).is_none() {
                return Err(format!("missing request for {resource} in pod {name}"));
            }
        }
    }
    // (ratio, utilization, average) of a set of usages
    let ratio = |usage: &HashMap<&str, i64>| -> (f64, Option<i64>, i64) {
        let total: i64 = usage.values().sum();
        let average = total / usage.len().max(1) as i64;
        match target {
            Target::Utilization(t) => {
                let requested: i64 = usage.keys().filter_map(|n| request(n)).sum();
                let utilization = if requested > 0 {
                    total * 100 / requested
                } else {
                    0
                };
                (utilization as f64 / t as f64, Some(utilization), average)
            }
            Target::AverageValue(t) => (average as f64 / t as f64, None, average),
        }
    };
    let (usage_ratio, utilization, average) = ratio(&usable);
    let proposal = |replicas| Proposal {
        replicas,
        utilization,
        average,
    };
    let scale_up_with_unready = !unready.is_empty() && usage_ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        if (1.0 - usage_ratio).abs() <= TOLERANCE {
            return Ok(proposal(current));
        }
        return Ok(proposal((usage_ratio * ready as f64).ceil() as i32));
    }
    // pods without metrics count as using what keeps the change smallest: their request (or
    // the target) when scaling down, nothing when scaling up
    for p in &missing {
        let value = if usage_ratio < 1.0 {
            match target {
                Target::Utilization(t) => p.request.unwrap_or(0) * t.max(100) / 100,
                Target::AverageValue(t) => t,
            }
        } else {
            0
        };
        if usage_ratio != 1.0 {
            usable.insert(&p.name, value);
        }
    }
    if scale_up_with_unready {
        for p in &unready {
            usable.insert(&p.name, 0);
        }
    }
    let (new_ratio, _, _) = ratio(&usable);
    if (1.0 - new_ratio).abs() <= TOLERANCE
        || (usage_ratio < 1.0 && new_ratio > 1.0)
        || (usage_ratio > 1.0 && new_ratio < 1.0)
    {
        return Ok(proposal(current));
    }
    let replicas = (new_ratio * usable.len() as f64).ceil() as i32;
    if (new_ratio < 1.0 && replicas > current) || (new_ratio > 1.0 && replicas < current) {
        return Ok(proposal(current));
    }
    Ok(proposal(replicas))
}

/// Whether a pod's CPU sample is trusted, as upstream's `groupPods`: not while it is unready
/// or its sample may predate readiness in its first five minutes, nor when it turned unready
/// right at start.
fn cpu_sample_counts(p: &PodView, sample: &Sample, now: Timestamp) -> bool {
    let (Some(started), Some((ready, since))) = (p.started, p.ready) else {
        return false;
    };
    if started + CPU_INITIALIZATION > now {
        ready && sample.timestamp >= since + sample.window
    } else {
        ready || started + INITIAL_READINESS_DELAY <= since
    }
}

/// A scaling policy: so many pods or percent per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Pods (true) or Percent.
    pub pods: bool,
    /// The amount.
    pub value: i32,
    /// The period, in seconds.
    pub period_seconds: i32,
}

/// One direction's behavior (`scaleUp` or `scaleDown`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// How far back recommendations are looked at.
    pub stabilization_seconds: i64,
    /// `Max`, `Min` or `Disabled`.
    pub select: String,
    /// The policies.
    pub policies: Vec<Policy>,
}

impl Rules {
    /// Upstream's default scale-up behavior: no stabilization, at most 4 pods or double (the
    /// larger) every 15 s.
    pub fn default_up() -> Self {
        Self {
            stabilization_seconds: 0,
            select: "Max".into(),
            policies: vec![
                Policy {
                    pods: true,
                    value: 4,
                    period_seconds: 15,
                },
                Policy {
                    pods: false,
                    value: 100,
                    period_seconds: 15,
                },
            ],
        }
    }

    /// Upstream's default scale-down behavior: five minutes' stabilization, then any amount
    /// every 15 s.
    pub fn default_down() -> Self {
        Self {
            stabilization_seconds: 300,
            select: "Max".into(),
            policies: vec![Policy {
                pods: false,
                value: 100,
                period_seconds: 15,
            }],
        }
    }
}

/// An autoscaler's memory: its past recommendations and the scalings it made.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// Recommendations, with when they were made.
    pub recommendations: Vec<(Timestamp, i32)>,
    /// Replicas added (positive) or removed (negative), with when.
    pub changes: Vec<(Timestamp, i32)>,
}

/// The outcome of normalizing: the replicas, and the AbleToScale and ScalingLimited reasons
/// and messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    /// The replicas to scale to.
    pub replicas: i32,
    /// The stabilization's reason and message (AbleToScale).
    pub stabilized: (&'static str, &'static str),
    /// Whether the bounds or rates limited the count, with reason and message (ScalingLimited).
    pub limited: (bool, &'static str, &'static str),
}

/// Stabilizes a desired count over the recent recommendations and holds it to the policies'
/// rates and to `min..=max`, as upstream's `normalizeDesiredReplicasWithBehaviors`; records the
/// recommendation.
pub fn normalize(
    history: &mut History,
    up: &Rules,
    down: &Rules,
    (min, max): (i32, i32),
    current: i32,
    desired: i32,
    now: Timestamp,
) -> Normalized {
    let up_cutoff = now - SignedDuration::from_secs(up.stabilization_seconds);
    let down_cutoff = now - SignedDuration::from_secs(down.stabilization_seconds);
    let (mut up_rec, mut down_rec) = (desired, desired);
    for &(at, rec) in &history.recommendations {
        if at > up_cutoff {
            up_rec = up_rec.min(rec);
        }
        if at > down_cutoff {
            down_rec = down_rec.max(rec);
        }
    }
    let keep = up_cutoff.min(down_cutoff);
    history.recommendations.retain(|(at, _)| *at > keep);
    history.recommendations.push((now, desired));
    let stabilized_count = current.max(up_rec).min(down_rec);
    let stabilized = if stabilized_count == desired {
        ("ReadyForNewScale", "recommended size matches current size")
    } else if stabilized_count < desired {
        (
            "ScaleUpStabilized",
            "recent recommendations were lower than current one, applying the lowest recent recommendation",
        )
    } else {
        (
            "ScaleDownStabilized",
            "recent recommendations were higher than current one, applying the highest recent recommendation",
        )
    };
    let longest = up
        .policies
        .iter()
        .chain(&down.policies)
        .map(|p| p.period_seconds)
        .max()
        .unwrap_or(0);
    history
        .changes
        .retain(|(at, _)| *at > now - SignedDuration::from_secs(longest as i64));
    let changed = |period: i32, growing: bool| -> i32 {
        let since = now - SignedDuration::from_secs(period as i64);
        history
            .changes
            .iter()
            .filter(|(at, c)| *at > since && (*c > 0) == growing)
            .map(|(_, c)| c.abs())
            .sum()
    };
    let within = (
        "DesiredWithinRange",
        "the desired count is within the acceptable range",
    );
    let (replicas, reason, message) = if stabilized_count > current {
        let limit = rate_limit(up, current, &changed, true).max(current);
        let (allowed, reason, message) = if max > limit {
            (
                limit,
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate",
            )
        } else {
            (
                max,
                "TooManyReplicas",
                "the desired replica count is more than the maximum replica count",
            )
        };
        if stabilized_count > allowed {
            (allowed, reason, message)
        } else {
            (stabilized_count, within.0, within.1)
        }
    } else if stabilized_count < current {
        let limit = rate_limit(down, current, &changed, false).min(current);
        let (allowed, reason, message) = if min < limit {
            (
                limit,
                "ScaleDownLimit",
                "the desired replica count is decreasing faster than the maximum scale rate",
            )
        } else {
            (
                min,
                "TooFewReplicas",
                "the desired replica count is less than the minimum replica count",
            )
        };
        if stabilized_count < allowed {
            (allowed, reason, message)
        } else {
            (stabilized_count, within.0, within.1)
        }
    } else {
        (stabilized_count, within.0, within.1)
    };
    Normalized {
        replicas,
        stabilized,
        limited: (replicas != stabilized_count, reason, message),
    }
}

/// How far one direction's policies let the count go now, as upstream's
/// `calculateScaleUpLimitWithScalingRules` and `calculateScaleDownLimitWithBehaviors`: each
/// policy counts from the replicas at the start of its period (`changed(period, growing)` is
/// what was added or removed since), and `Max` takes the largest change, `Min` the smallest.
fn rate_limit(
    rules: &Rules,
    current: i32,
    changed: &dyn Fn(i32, bool) -> i32,
    growing: bool,
) -> i32 {
    if rules.select == "Disabled" {
        return current;
    }
    let proposals = rules.policies.iter().map(|p| {
        let start = current - changed(p.period_seconds, true) + changed(p.period_seconds, false);
        match (p.pods, growing) {
            (true, true) => start + p.value,
            (true, false) => start - p.value,
            (false, true) => (start as f64 * (1.0 + p.value as f64 / 100.0)).ceil() as i32,
            (false, false) => (start as f64 * (1.0 - p.value as f64 / 100.0)) as i32,
        }
    });
    // the largest change is the highest count going up and the lowest going down
    if (rules.select != "Min") == growing {
        proposals.max().unwrap_or(i32::MIN)
    } else {
        proposals.min().unwrap_or(i32::MAX)
    }
}

/// Records a scaling from `from` to `to` replicas, which later rate limits count.
pub fn record_change(history: &mut History, from: i32, to: i32, now: Timestamp) {
    if from != to {
        history.changes.push((now, to - from));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("time")
    }

    fn pod(name: &str, request: i64) -> PodView {
        PodView {
            name: name.into(),
            ignored: false,
            pending: false,
            started: Some(t(-3600)),
            ready: Some((true, t(-3500))),
            request: Some(request),
        }
    }

    fn sample(value: i64) -> Sample {
        Sample {
            value,
            timestamp: t(-5),
            window: SignedDuration::from_secs(10),
        }
    }

    #[test]
    fn utilization_scales_by_the_ratio_beyond_the_tolerance() {
        let pods = [pod("a", 100)];
        let busy = HashMap::from([("a".to_string(), sample(200))]);
        let p = replicas(1, Target::Utilization(50), "cpu", &pods, &busy, t(0)).expect("replicas");
        assert_eq!(
            p,
            Proposal {
                replicas: 4,
                utilization: Some(200),
                average: 200
            }
        );
        // 54% of a 50% target is within the tolerance
        let near = HashMap::from([("a".to_string(), sample(54))]);
        let p = replicas(1, Target::Utilization(50), "cpu", &pods, &near, t(0)).expect("replicas");
        assert_eq!(p.replicas, 1);
        let pods = [pod("a", 100), pod("b", 100), pod("c", 100)];
        let idle: HashMap<String, Sample> =
            ["a", "b", "c"].map(|n| (n.to_string(), sample(1))).into();
        let p = replicas(3, Target::Utilization(50), "cpu", &pods, &idle, t(0)).expect("replicas");
        assert_eq!(p.replicas, 1);
        let p =
            replicas(3, Target::AverageValue(500), "cpu", &pods, &idle, t(0)).expect("replicas");
        assert_eq!((p.replicas, p.average), (1, 1));
    }

    #[test]
    fn missing_and_unready_pods_damp_the_change() {
        // scaling down, a pod without metrics counts as using its whole request
        let pods = [pod("a", 100), pod("b", 100)];
        let one = HashMap::from([("a".to_string(), sample(10))]);
        let p = replicas(2, Target::Utilization(50), "cpu", &pods, &one, t(0)).expect("replicas");
        assert_eq!(p.replicas, 2);
        // scaling up, an unready pod counts as using nothing
        let mut starting = pod("b", 100);
        starting.ready = Some((false, t(-1)));
        starting.started = Some(t(-10));
        let pods = [pod("a", 100), starting];
        let hot = HashMap::from([
            ("a".to_string(), sample(300)),
            ("b".to_string(), sample(300)),
        ]);
        let p = replicas(2, Target::Utilization(50), "cpu", &pods, &hot, t(0)).expect("replicas");
        assert_eq!(p.replicas, 6);
        assert_eq!(
            replicas(1, Target::Utilization(50), "cpu", &[], &hot, t(0)).expect_err("no pods"),
            "no pods returned by selector while calculating replica count"
        );
    }

    #[test]
    fn behaviors_stabilize_and_limit_the_rate() {
        let mut h = History::default();
        let (up, down) = (Rules::default_up(), Rules::default_down());
        // up: at most max(1 + 4, 2 * 1) = 5 per 15 s; then the max bound
        let n = normalize(&mut h, &up, &down, (1, 10), 1, 9, t(0));
        assert_eq!(n.replicas, 5);
        assert_eq!(
            n.limited,
            (
                true,
                "ScaleUpLimit",
                "the desired replica count is increasing faster than the maximum scale rate"
            )
        );
        record_change(&mut h, 1, 5, t(0));
        let n = normalize(&mut h, &up, &down, (1, 10), 5, 9, t(5));
        assert_eq!(n.replicas, 5, "the period's budget is spent");
        let n = normalize(&mut h, &up, &down, (1, 3), 1, 9, t(100));
        assert_eq!((n.replicas, n.limited.1), (3, "TooManyReplicas"));
        // down: the highest recommendation of the last five minutes holds
        let n = normalize(&mut h, &up, &down, (1, 10), 5, 2, t(120));
        assert_eq!(n.replicas, 5);
        assert_eq!(n.stabilized.0, "ScaleDownStabilized");
        let instant = Rules {
            stabilization_seconds: 0,
            ..Rules::default_down()
        };
        let mut h = History::default();
        let n = normalize(&mut h, &up, &instant, (1, 10), 3, 0, t(0));
        assert_eq!((n.replicas, n.limited.1), (1, "TooFewReplicas"));
    }
}
