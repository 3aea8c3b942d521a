//! Scaling: an event's Deployments set to the largest request of the events sharing them,
//! and the Warnings about Deployments the operator does not scale.
//!
//! Several events may name one Deployment, so a scale is never decided from one event
//! alone: every other event is read from the controller's cache as the scheduler sees it
//! (`schedule::EventState`), and `schedule::desired_replicas` decides for all of them.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::Context;
use crate::conditions::{ConditionType, Reason};
use crate::crd::{CouponEvent, CouponEventSpec, OnDelete, Phase};
use crate::schedule::{self, DeploymentKey, EventState, Need};
use crate::status::{ScaleReport, SCALABLE_LABEL};

/// Scales this event's Deployments to the largest request of the events sharing them; a
/// Deployment no remaining event asks for goes to this event's idle count. Only Deployments
/// that opted in (`SCALABLE_LABEL`) and that no HorizontalPodAutoscaler drives are touched.
/// Returns what was found about them.
pub(super) async fn scale(event: &CouponEvent, this: EventState<'_>, ctx: &Context, now: Timestamp) -> Result<ScaleReport, kube::Error> {
    let _one_at_a_time = ctx.scaling.lock().await;
    let others = other_events(&ctx.events.state(), event);
    let mut states: Vec<EventState<'_>> =
        others.iter().map(|(namespace, spec, need)| EventState { namespace, spec, need: *need }).collect();
    let namespace = this.namespace.to_owned();
    let spec = this.spec;
    states.push(this);
    let desired = schedule::desired_replicas(now, &states);
    let idle_of = |name: &str| {
        [(&spec.api, spec.api_idle_replicas()), (&spec.consumer, spec.consumer_idle_replicas())]
            .iter()
            .filter(|(w, _)| w.deployment == name)
            .map(|(_, idle)| *idle)
            .max()
            .unwrap_or(0)
    };
    let mut names = vec![spec.api.deployment.as_str(), spec.consumer.deployment.as_str()];
    names.dedup();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let autoscalers: Api<HorizontalPodAutoscaler> = Api::namespaced(ctx.client.clone(), &namespace);
    let autoscaled = autoscalers.list(&ListParams::default()).await?;
    let mut report = ScaleReport::default();
    for name in names {
        let key = DeploymentKey { namespace: namespace.clone(), name: name.to_owned() };
        let target = desired.get(&key).copied().unwrap_or_else(|| idle_of(name));
        let deployment = match deployments.get_opt(name).await? {
            Some(deployment) => deployment,
            None => {
                // Reported by the caller (the `Ready` condition and one Warning).
                report.missing.push(name.to_owned());
                continue;
            }
        };
        if deployment.labels().get(SCALABLE_LABEL).map(String::as_str) != Some("true") {
            report.not_opted_in.push(name.to_owned());
            continue;
        }
        let driver = autoscaled
            .items
            .iter()
            .find(|hpa| hpa.spec.as_ref().is_some_and(|s| s.scale_target_ref.kind == "Deployment" && s.scale_target_ref.name == name));
        if let Some(hpa) = driver {
            report.autoscaled.push((name.to_owned(), hpa.name_any()));
            continue;
        }
        let current = deployment.spec.and_then(|s| s.replicas).unwrap_or(1);
        if current != target {
            deployments.patch_scale(name, &PatchParams::default(), &Patch::Merge(json!({ "spec": { "replicas": target } }))).await?;
            ctx.metrics.scalings.inc();
            ctx.publish(
                event,
                EventType::Normal,
                "Scaled",
                &format!("Scale {name}"),
                format!("Deployment {name} scaled from {current} to {target}"),
            )
            .await;
        }
    }
    Ok(report)
}

/// One Warning per kind of Deployment the operator could not scale, when the status does not
/// say so already (the `Ready` and `Scaling` conditions carry it from then on).
pub(super) async fn warn_unscaled(event: &CouponEvent, ctx: &Context, namespace: &str, scaling: &ScaleReport) {
    let previous = event.status.as_ref();
    let already_missing = previous.is_some_and(|s| s.has_condition(ConditionType::Ready, Reason::DeploymentNotFound));
    if !scaling.missing.is_empty() && !already_missing {
        let message = format!("Deployment {} not found in {namespace}: the event has no pods to serve it", scaling.missing.join(", "));
        ctx.publish(event, EventType::Warning, Reason::DeploymentNotFound.as_str(), "Scale", message).await;
    }
    let scaling_reported = |reason: Reason| previous.is_some_and(|s| s.has_condition(ConditionType::Scaling, reason));
    if !scaling.not_opted_in.is_empty() && !scaling_reported(Reason::NotOptedIn) {
        let message = format!(
            "Deployment {} lacks the label {SCALABLE_LABEL}=\"true\": the operator does not scale it",
            scaling.not_opted_in.join(", ")
        );
        ctx.publish(event, EventType::Warning, Reason::NotOptedIn.as_str(), "Scale", message).await;
    }
    if !scaling.autoscaled.is_empty() && !scaling_reported(Reason::Autoscaled) {
        let which: Vec<String> = scaling.autoscaled.iter().map(|(d, h)| format!("{d} by HorizontalPodAutoscaler {h}")).collect();
        let message = format!("left to its autoscaler: {}", which.join(", "));
        ctx.publish(event, EventType::Warning, Reason::Autoscaled.as_str(), "Scale", message).await;
    }
}

/// Every other event as the scheduler sees it: its namespace, the spec in effect, and what
/// it needs. One that waits for coupons to be written with nothing open (a deleted `Retain`
/// event, a re-used name waiting for the earlier object's) needs its consumer kept up
/// (`Need::Drain`); a deleting one nothing; one whose spec was never accepted its idle count.
fn other_events(all: &[Arc<CouponEvent>], this: &CouponEvent) -> Vec<(String, CouponEventSpec, Need)> {
    all.iter()
        .filter(|e| !(e.name_any() == this.name_any() && e.namespace() == this.namespace()))
        .map(|e| {
            let status = e.status.clone().unwrap_or_default();
            let spec = status.last_accepted_spec.clone().unwrap_or_else(|| e.spec.clone());
            let deleting = e.metadata.deletion_timestamp.is_some();
            let waiting = status.has_condition(ConditionType::Ready, Reason::PreviousEventDraining);
            let need = if waiting || (deleting && spec.on_delete == OnDelete::Retain) {
                Need::Drain
            } else if deleting {
                Need::Nothing
            } else if status.last_accepted_spec.is_none() && (status.phase == Phase::Failed || spec.validate().is_err()) {
                Need::Idle
            } else {
                Need::Window { issued: status.issued, persisted: status.persisted }
            };
            (e.namespace().unwrap_or_default(), spec, need)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use super::*;
    use crate::crd::{CouponEventStatus, Schedule, Workload};

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn event(name: &str, status: Option<CouponEventStatus>, deleting: bool, on_delete: OnDelete) -> Arc<CouponEvent> {
        let spec = CouponEventSpec {
            event_id: None,
            exclusive_topic: false,
            limit: 100,
            per_user_limit: 1,
            topic: "coupon_create".into(),
            partitions: 3,
            shards: 1,
            schedule: Schedule {
                start: Time(t("2026-11-27T10:00:00Z")),
                end: Time(t("2026-11-27T10:30:00Z")),
                warm_up: None,
                cool_down: None,
            },
            api: Workload { deployment: "coupon-api".into(), replicas: 10, idle_replicas: Some(0) },
            consumer: Workload { deployment: "coupon-consumer".into(), replicas: 2, idle_replicas: Some(0) },
            on_delete,
            paused: false,
        };
        let mut event = CouponEvent::new(name, spec);
        event.metadata.namespace = Some("shop".into());
        event.metadata.deletion_timestamp = deleting.then(|| Time(t("2026-11-27T10:05:00Z")));
        event.status = status;
        Arc::new(event)
    }

    /// Accepted (with `onDelete: on_delete`), and `Ready` with `ready_reason`.
    fn accepted(issued: i64, persisted: i64, ready_reason: &str, on_delete: OnDelete) -> CouponEventStatus {
        let spec = event("x", None, false, on_delete).spec.clone();
        let ready = Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: ready_reason.into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(t("2026-11-27T10:00:00Z")),
        };
        CouponEventStatus { issued, persisted, last_accepted_spec: Some(spec), conditions: vec![ready], ..Default::default() }
    }

    #[test]
    fn other_events_say_what_each_needs() {
        let this = event("this", None, false, OnDelete::Retain);
        let never_accepted = CouponEventStatus { phase: Phase::Failed, ..Default::default() };
        let all = vec![
            this.clone(),
            event("live", Some(accepted(7, 3, "Provisioned", OnDelete::Retain)), false, OnDelete::Retain),
            event("retained", Some(accepted(7, 3, "Provisioned", OnDelete::Retain)), true, OnDelete::Retain),
            event("deleted", Some(accepted(7, 3, "Provisioned", OnDelete::Delete)), true, OnDelete::Delete),
            // What decides is the accepted spec, not an edit of it.
            event("edited", Some(accepted(7, 3, "Provisioned", OnDelete::Retain)), true, OnDelete::Delete),
            event("waiting", Some(accepted(0, 0, "PreviousEventDraining", OnDelete::Delete)), false, OnDelete::Delete),
            event("refused", Some(never_accepted), false, OnDelete::Retain),
        ];
        let others = other_events(&all, &this);
        assert!(others.iter().all(|(namespace, _, _)| namespace == "shop"));
        let needs: Vec<Need> = others.into_iter().map(|(_, _, need)| need).collect();
        // `this` left out; the others in order.
        assert_eq!(needs, vec![Need::Window { issued: 7, persisted: 3 }, Need::Drain, Need::Nothing, Need::Drain, Need::Drain, Need::Idle]);
    }
}
