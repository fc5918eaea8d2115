//! Resources that are answered, not stored: access reviews (`kubectl auth can-i`), the self
//! subject review (`kubectl auth whoami`), token reviews, and the TokenRequest subresource of
//! service accounts (`kubectl create token`).

use std::sync::Arc;

use axum::response::Response;
use http::StatusCode;
use serde_json::{Value, json};

use super::Ctx;
use crate::State;
use crate::authn::UserInfo;
use crate::authz::{self, Attributes};
use crate::codec;
use crate::status::{ApiError, Result};

fn attributes(spec: &Value, namespace: &str) -> Attributes {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    if let Some(r) = spec.get("resourceAttributes") {
        let ns = s(r, "namespace");
        Attributes {
            verb: s(r, "verb"),
            group: s(r, "group"),
            resource: s(r, "resource"),
            subresource: s(r, "subresource"),
            namespace: if ns.is_empty() {
                namespace.to_string()
            } else {
                ns
            },
            name: s(r, "name"),
            path: String::new(),
        }
    } else {
        let r = spec
            .get("nonResourceAttributes")
            .cloned()
            .unwrap_or(Value::Null);
        Attributes {
            verb: s(&r, "verb"),
            path: s(&r, "path"),
            ..Default::default()
        }
    }
}

fn subject(spec: &Value) -> UserInfo {
    let mut groups: Vec<String> = spec
        .get("groups")
        .and_then(Value::as_array)
        .map(|g| {
            g.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let name = spec
        .get("user")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if !groups.iter().any(|g| g == "system:authenticated") && !name.is_empty() {
        groups.push("system:authenticated".into());
    }
    UserInfo { name, groups }
}

/// POST of a review resource.
pub async fn create(state: &Arc<State>, ctx: &Ctx, body: &[u8]) -> Result<Response> {
    let mut review = codec::decode_as(&codec::content_type(&ctx.headers), body, Some(ctx.rt))?;
    let spec = review.get("spec").cloned().unwrap_or(json!({}));
    let status = match ctx.rt.kind {
        "SelfSubjectReview" => {
            json!({"userInfo": {"username": ctx.user.name, "groups": ctx.user.groups}})
        }
        "TokenReview" => {
            let token = spec.get("token").and_then(Value::as_str).unwrap_or("");
            match crate::authn::from_token(state, token).await {
                Some(user) => {
                    json!({"authenticated": true, "user": {"username": user.name, "groups": user.groups}})
                }
                None => json!({"authenticated": false, "error": "invalid bearer token"}),
            }
        }
        "SelfSubjectRulesReview" => {
            let ns = spec.get("namespace").and_then(Value::as_str).unwrap_or("");
            let rules = authz::rules_for(&state.storage, &ctx.user, ns).await?;
            let (non_resource, resource): (Vec<Value>, Vec<Value>) = rules
                .iter()
                .cloned()
                .partition(|r| r.get("nonResourceURLs").is_some());
            let mut status = json!({"resourceRules": resource, "nonResourceRules": non_resource, "incomplete": false});
            if crate::node_authz::node_name(&ctx.user).is_some() {
                // as upstream's Node authorizer: what a node may do depends on the pods bound
                // to it, so its rules are not listed
                status["incomplete"] = json!(true);
                status["evaluationError"] =
                    json!("node authorizer does not support user rule resolution");
            }
            status
        }
        _ => {
            let user = if ctx.rt.kind == "SelfSubjectAccessReview" {
                ctx.user.clone()
            } else {
                subject(&spec)
            };
            let attrs = attributes(&spec, &ctx.info.namespace);
            let allowed = authz::allowed(&state.storage, &user, &attrs).await?;
            let mut st = json!({"allowed": allowed});
            if allowed {
                st["reason"] = json!("allowed by RBAC");
            }
            st
        }
    };
    review["status"] = status;
    review["apiVersion"] = json!(ctx.rt.api_version());
    review["kind"] = json!(ctx.rt.kind);
    if review.get("metadata").is_none() {
        review["metadata"] = json!({});
    }
    Ok(codec::json_response(StatusCode::CREATED, &review))
}

/// POST serviceaccounts/NAME/token: a TokenRequest.
pub async fn token(state: &Arc<State>, ctx: &Ctx, body: &[u8]) -> Result<Response> {
    let media = codec::content_type(&ctx.headers);
    let mut request = if media == "application/vnd.kubernetes.protobuf" {
        crate::protobuf::decode(body, "io.k8s.api.authentication.v1.TokenRequest").map_err(|e| {
            ApiError::bad_request(format!("unable to decode the protobuf body: {e}"))
        })?
    } else {
        codec::decode(&media, body)?
    };
    let (sa, _) = state
        .storage
        .get(ctx.rt, ctx.namespace(), &ctx.info.name)
        .await?;
    let uid = api::meta::meta_str(&sa, "uid").unwrap_or("").to_string();
    let spec = request.get("spec").cloned().unwrap_or(json!({}));
    let seconds = spec
        .get("expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(3600);
    if seconds < 600 {
        let err = api::validation::FieldError::invalid(
            "spec.expirationSeconds",
            json!(seconds),
            "may not specify a duration less than 10 minutes",
        );
        return Err(ApiError::invalid(ctx.rt, &ctx.info.name, &[err]));
    }
    let audiences: Vec<String> = match spec.get("audiences").and_then(Value::as_array) {
        Some(a) if !a.is_empty() => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => vec![crate::tokens::ISSUER.to_string()],
    };
    let bound = spec.get("boundObjectRef").filter(|b| !b.is_null());
    let pod = bound_pod(state, ctx, bound).await?;
    crate::node_restriction::admit_token(&ctx.user, ctx.rt, &ctx.info.name, bound, pod.as_ref())?;
    let pod = pod.as_ref().map(|p| {
        (
            api::meta::name(p),
            api::meta::meta_str(p, "uid").unwrap_or(""),
        )
    });
    let (token, exp) = state
        .tokens
        .issue(
            ctx.namespace(),
            &ctx.info.name,
            &uid,
            &audiences,
            seconds,
            pod,
        )
        .map_err(ApiError::internal)?;
    let expiry = chrono::DateTime::from_timestamp(exp, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    request["apiVersion"] = json!("authentication.k8s.io/v1");
    request["kind"] = json!("TokenRequest");
    request["metadata"] =
        json!({"name": ctx.info.name, "namespace": ctx.namespace(), "creationTimestamp": null});
    request["spec"] = json!({"audiences": audiences, "expirationSeconds": seconds, "boundObjectRef": spec.get("boundObjectRef")});
    request["status"] = json!({"token": token, "expirationTimestamp": expiry});
    Ok(codec::json_response(StatusCode::CREATED, &request))
}

/// The pod a TokenRequest's `boundObjectRef` names, checked as upstream does: it exists, runs
/// as the service account, and has the uid given.
async fn bound_pod(state: &Arc<State>, ctx: &Ctx, bound: Option<&Value>) -> Result<Option<Value>> {
    let Some(bound) = bound else {
        return Ok(None);
    };
    let kind = bound.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind != "Pod" {
        return Err(ApiError::bad_request(format!(
            "cannot bind token to object of type {kind}"
        )));
    }
    let name = bound.get("name").and_then(Value::as_str).unwrap_or("");
    let rt = api::registry()
        .find("", "v1", "pods")
        .ok_or_else(|| ApiError::internal("pods are not registered"))?;
    let (pod, _) = state.storage.get(rt, ctx.namespace(), name).await?;
    let account = pod["spec"]["serviceAccountName"].as_str().unwrap_or("");
    if account != ctx.info.name {
        return Err(ApiError::bad_request(format!(
            "cannot bind token for serviceaccount {:?} to pod running with different serviceaccount name.",
            ctx.info.name
        )));
    }
    let uid = api::meta::meta_str(&pod, "uid").unwrap_or("").to_string();
    if let Some(want) = bound
        .get("uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        && want != uid
    {
        let why = format!(
            "the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
        );
        return Err(ApiError::conflict_because(rt, name, &why));
    }
    Ok(Some(pod))
}
