//! The `eviction` subresource of pods (policy/v1 Eviction), as upstream's: a pod is deleted
//! only if the PodDisruptionBudget that selects it allows one more disruption, which the
//! eviction uses up (recorded in the budget's status) before the pod is deleted with the
//! eviction's DeleteOptions. A pod that is finished or not yet running is deleted without
//! asking the budget; one already being deleted is left as it is.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Value, json};

use api::selector::LabelSelector;
use api::{meta, registry};

use super::Ctx;
use crate::status::{ApiError, Result};
use crate::{State, codec};

/// How many times a budget update lost to a concurrent writer is tried again.
const RETRIES: usize = 5;

pub async fn evict(state: &Arc<State>, ctx: &Ctx, body: &[u8]) -> Result<Response> {
    let eviction = codec::decode(&codec::content_type(&ctx.headers), body)?;
    let named = meta::name(&eviction);
    if !named.is_empty() && named != ctx.info.name {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let opts =
        super::delete::options_from(ctx, eviction.get("deleteOptions").unwrap_or(&Value::Null))?;
    let ns = ctx.namespace();
    let (pod, _) = state.storage.get(ctx.rt, ns, &ctx.info.name).await?;
    let done = || {
        Ok(
            codec::json_response(StatusCode::CREATED, &crate::status::success(None))
                .into_response(),
        )
    };
    if meta::is_deleting(&pod) {
        return done();
    }
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !matches!(phase, "Succeeded" | "Failed" | "Pending") {
        use_up_disruption(state, ns, &pod, opts.dry_run).await?;
    }
    super::delete::delete_object(state, ctx.rt, ns, &ctx.info.name, &opts).await?;
    done()
}

/// Takes one allowed disruption from the budget that selects the pod, or refuses with 429.
async fn use_up_disruption(state: &State, ns: &str, pod: &Value, dry_run: bool) -> Result<()> {
    let rt = registry()
        .find("policy", "v1", "poddisruptionbudgets")
        .ok_or_else(|| ApiError::internal("poddisruptionbudgets are not registered"))?;
    let name = meta::name(pod).to_string();
    for _ in 0..RETRIES {
        let budgets: Vec<Value> = state
            .storage
            .list_in(rt, ns)
            .await?
            .into_iter()
            .filter(|b| {
                b.pointer("/spec/selector")
                    .and_then(|s| LabelSelector::from_json(s).ok())
                    .is_some_and(|s| !s.is_empty() && s.matches(pod))
            })
            .collect();
        let budget = match budgets.as_slice() {
            [] => return Ok(()),
            [one] => one.clone(),
            _ => {
                return Err(ApiError::internal(
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                ));
            }
        };
        let status = budget.get("status").cloned().unwrap_or(json!({}));
        let int = |k: &str| status.get(k).and_then(Value::as_i64).unwrap_or(0);
        let generation = meta::lookup(&budget, "metadata.generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let refuse = |message: String| {
            ApiError::too_many_requests(
                "Cannot evict pod as it would violate the pod's disruption budget.",
                Some(json!({"causes": [{"reason": "DisruptionBudget", "message": message}]})),
            )
        };
        if int("observedGeneration") < generation {
            return Err(refuse(format!(
                "The disruption budget {} is still being processed by the server.",
                meta::name(&budget)
            )));
        }
        if int("disruptionsAllowed") <= 0 {
            return Err(refuse(format!(
                "The disruption budget {} needs {} healthy pods and has {} currently",
                meta::name(&budget),
                int("desiredHealthy"),
                int("currentHealthy")
            )));
        }
        if dry_run {
            return Ok(());
        }
        let mut updated = budget.clone();
        updated["status"]["disruptionsAllowed"] = json!(int("disruptionsAllowed") - 1);
        if !updated["status"]["disruptedPods"].is_object() {
            updated["status"]["disruptedPods"] = json!({});
        }
        updated["status"]["disruptedPods"][&name] = json!(meta::now_timestamp());
        let rev = meta::meta_str(&budget, "resourceVersion")
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        match state.storage.update(rt, updated, rev).await {
            Ok(_) => return Ok(()),
            Err(e) if e.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::internal(
        "the disruption budget kept changing; try the eviction again",
    ))
}
