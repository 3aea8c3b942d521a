//! Deployments under an autoscaler: the operator does not fight it over the replicas (each
//! would undo the other every few seconds); it raises the autoscaler's minimum to the
//! window's replicas for the window and puts the original back afterwards.
//!
//! The original minimum (and maximum, raised too when below the window's replicas) is kept
//! in annotations on the object the operator changed, written in the same patch as the new
//! minimum, so a restart or a new leader restores exactly what was there. For an autoscaler
//! KEDA made for a ScaledObject, the ScaledObject is changed (KEDA would put its own minimum
//! back on the autoscaler).

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::Context;

/// The minimum the autoscaler had before the operator raised it.
pub const ORIGINAL_MIN_ANNOTATION: &str = "coupons.fcfs.dev/original-min-replicas";
/// The maximum it had, when the operator raised that too.
pub const ORIGINAL_MAX_ANNOTATION: &str = "coupons.fcfs.dev/original-max-replicas";

/// What was done, for a Kubernetes Event.
pub(super) struct Held {
    pub reason: &'static str,
    pub text: String,
}

/// Holds the minimum of `hpa` (the autoscaler of a Deployment) at `target` while the window
/// wants more than `idle`, and restores it after.
pub(super) async fn hold_minimum(
    ctx: &Context,
    hpa: &HorizontalPodAutoscaler,
    target: i32,
    idle: i32,
) -> Result<Option<Held>, kube::Error> {
    let namespace = hpa.namespace().unwrap_or_default();
    if let Some(owner) = hpa.owner_references().iter().find(|o| o.kind == "ScaledObject" && o.api_version.starts_with("keda.sh/")) {
        return hold_keda_minimum(ctx, &namespace, &owner.name, target, idle).await;
    }
    let spec = hpa.spec.clone().unwrap_or_default();
    let (min, max) = (spec.min_replicas.unwrap_or(1), spec.max_replicas);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = minimum_patch(hpa.annotations(), min, max, target, idle, "minReplicas", "maxReplicas");
    apply(
        patch,
        |patch| async move { hpas.patch(&hpa.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await.map(|_| ()) },
        hpa.name_any(),
        target,
    )
    .await
}

/// The same for a KEDA ScaledObject (`spec.minReplicaCount`, `spec.maxReplicaCount`).
async fn hold_keda_minimum(ctx: &Context, namespace: &str, name: &str, target: i32, idle: i32) -> Result<Option<Held>, kube::Error> {
    let resource = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject"), "scaledobjects");
    let scaled_objects: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), namespace, &resource);
    let Some(scaled_object) = scaled_objects.get_opt(name).await? else { return Ok(None) };
    let number = |field: &str, default: i64| scaled_object.data["spec"][field].as_i64().unwrap_or(default) as i32;
    // KEDA's defaults: no minimum, at most 100.
    let (min, max) = (number("minReplicaCount", 0), number("maxReplicaCount", 100));
    let patch = minimum_patch(scaled_object.annotations(), min, max, target, idle, "minReplicaCount", "maxReplicaCount");
    let what = format!("ScaledObject {name}");
    apply(
        patch,
        |patch| async move { scaled_objects.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await.map(|_| ()) },
        what,
        target,
    )
    .await
}

async fn apply<F, Fut>(patch: Option<(serde_json::Value, bool)>, write: F, what: String, target: i32) -> Result<Option<Held>, kube::Error>
where
    F: FnOnce(serde_json::Value) -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let Some((patch, raising)) = patch else { return Ok(None) };
    write(patch).await?;
    Ok(Some(if raising {
        Held { reason: "MinimumRaised", text: format!("minimum of {what} raised to {target} for the window") }
    } else {
        Held { reason: "MinimumRestored", text: format!("minimum of {what} restored after the window") }
    }))
}

/// The merge patch that holds the minimum (`Some((patch, true))`), restores it
/// (`Some((patch, false))`), or nothing when it is as it should be. Pure.
pub fn minimum_patch(
    annotations: &std::collections::BTreeMap<String, String>,
    min: i32,
    max: i32,
    target: i32,
    idle: i32,
    min_field: &str,
    max_field: &str,
) -> Option<(serde_json::Value, bool)> {
    let recorded_min = annotations.get(ORIGINAL_MIN_ANNOTATION).and_then(|v| v.parse::<i32>().ok());
    let recorded_max = annotations.get(ORIGINAL_MAX_ANNOTATION).and_then(|v| v.parse::<i32>().ok());
    if target > idle {
        if min >= target {
            return None;
        }
        let original_min = recorded_min.unwrap_or(min);
        let original_max = recorded_max.unwrap_or(max);
        let patch = json!({
            "metadata": { "annotations": {
                ORIGINAL_MIN_ANNOTATION: original_min.to_string(),
                ORIGINAL_MAX_ANNOTATION: original_max.to_string(),
            } },
            "spec": { min_field: target, max_field: max.max(target) },
        });
        return Some((patch, true));
    }
    let original_min = recorded_min?;
    let original_max = recorded_max.unwrap_or(max);
    let patch = json!({
        "metadata": { "annotations": { ORIGINAL_MIN_ANNOTATION: null, ORIGINAL_MAX_ANNOTATION: null } },
        "spec": { min_field: original_min, max_field: original_max },
    });
    Some((patch, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_is_raised_for_the_window_and_the_original_put_back() {
        let none = Default::default();
        let (raise, raising) = minimum_patch(&none, 1, 5, 10, 1, "minReplicas", "maxReplicas").unwrap();
        assert!(raising);
        assert_eq!(raise["spec"], json!({"minReplicas": 10, "maxReplicas": 10}));
        assert_eq!(raise["metadata"]["annotations"][ORIGINAL_MIN_ANNOTATION], "1");
        assert_eq!(raise["metadata"]["annotations"][ORIGINAL_MAX_ANNOTATION], "5");
        // Raised already: nothing; an original recorded earlier is never overwritten.
        let recorded: std::collections::BTreeMap<String, String> =
            [(ORIGINAL_MIN_ANNOTATION.to_owned(), "1".to_owned()), (ORIGINAL_MAX_ANNOTATION.to_owned(), "5".to_owned())].into();
        assert!(minimum_patch(&recorded, 10, 10, 10, 1, "minReplicas", "maxReplicas").is_none());
        let (again, _) = minimum_patch(&recorded, 4, 10, 10, 1, "minReplicas", "maxReplicas").unwrap();
        assert_eq!(again["metadata"]["annotations"][ORIGINAL_MIN_ANNOTATION], "1");
        // After the window: the original back, the record gone.
        let (restore, raising) = minimum_patch(&recorded, 10, 10, 1, 1, "minReplicas", "maxReplicas").unwrap();
        assert!(!raising);
        assert_eq!(restore["spec"], json!({"minReplicas": 1, "maxReplicas": 5}));
        assert!(restore["metadata"]["annotations"][ORIGINAL_MIN_ANNOTATION].is_null());
        // Never raised: nothing to restore.
        assert!(minimum_patch(&none, 1, 5, 1, 1, "minReplicas", "maxReplicas").is_none());
    }
}
