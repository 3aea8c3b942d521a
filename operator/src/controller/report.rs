//! Reporting: the status a reconcile writes, computed from what it observed, and the one
//! function through which every status write goes.
//!
//! Each write is a merge patch of only the fields it names: the status in hand may be stale
//! (a `topicCreated` written earlier in the same reconcile, say), and a field left out stays
//! as the server holds it. With every write passing through `write_status`, there is one
//! place to read what the operator ever puts in a status, and no second way to put it.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::{json, Value};

use super::Context;
use crate::backend::BackendError;
use crate::conditions::{ConditionType, Reason};
use crate::crd::{CouponEvent, CouponEventStatus, Phase};
use crate::identity;
use crate::status::{next_status, not_ready_status, unavailable_status, Observation};

/// Writes `fields`, a JSON object of status fields, into the event's status as a merge patch:
/// those fields change, the others stay. Returns the object as the server stored it, so a
/// caller can see what the installed CRD kept.
pub(super) async fn write_status(api: &Api<CouponEvent>, event: &CouponEvent, fields: Value) -> Result<CouponEvent, kube::Error> {
    api.patch_status(&event.name_any(), &PatchParams::default(), &Patch::Merge(json!({ "status": fields }))).await
}

/// Writes what `observation` gives (`next_status`) when it differs from the status in hand,
/// then tells the user what changed: a refused spec once per reason and generation, a phase
/// change. `Some(action)` when the server dropped fields it was given: the CRD is outdated,
/// that is reported instead, and the reconcile goes no further.
pub(super) async fn report(
    event: &CouponEvent,
    ctx: &Context,
    api: &Api<CouponEvent>,
    now: Timestamp,
    observation: &Observation,
) -> Result<Option<Action>, kube::Error> {
    let previous = event.status.as_ref();
    // Through serde and back, so that what is compared is what the API server will hold
    // (times to the second, say): a status that differs only in its encoding is not written.
    let status = next_status(now, previous, observation);
    let status = serde_json::to_value(&status).ok().and_then(|v| serde_json::from_value(v).ok()).unwrap_or(status);
    if previous != Some(&status) {
        let written = serde_json::to_value(&status).unwrap_or_default();
        let answered = write_status(api, event, written.clone()).await?;
        let dropped = identity::dropped_fields(&written, &serde_json::to_value(&answered.status).unwrap_or_default());
        if !dropped.is_empty() {
            let dropped = dropped.into_iter().collect::<Vec<_>>().join(", ");
            return crd_outdated(event, answered.status.as_ref(), ctx, api, &dropped).await.map(Some);
        }
    }
    if let Err(refusal) = &observation.provisioned {
        // Once per reason and generation (the message may carry live counts).
        let already_reported =
            previous.is_some_and(|s| s.has_condition_at(ConditionType::Provisioned, false, refusal.reason, event.metadata.generation));
        if !already_reported {
            ctx.publish(event, EventType::Warning, refusal.reason.as_str(), "Provision", refusal.message.clone()).await;
        }
    }
    let phase = observation.phase;
    let previous_phase = previous.map(|s| s.phase);
    if previous_phase != Some(phase) && phase != Phase::Failed {
        let from = previous_phase.map(|p| format!("{p:?}")).unwrap_or_else(|| "new".into());
        ctx.publish(event, EventType::Normal, "PhaseChanged", "Reconcile", format!("{from} -> {phase:?}")).await;
    }
    Ok(None)
}

/// Redis or Kafka failed: `Ready=False` (`BackendUnavailable`) with the error, written once
/// per outage (the error policy retries the reconcile).
pub(super) async fn report_unavailable(event: &CouponEvent, ctx: &Context, error: &BackendError) {
    let previous = event.status.as_ref();
    if previous.is_some_and(|s| s.has_condition(ConditionType::Ready, Reason::BackendUnavailable)) {
        return;
    }
    let status = unavailable_status(ctx.now(), previous, event.metadata.generation, &error.to_string());
    let Some(namespace) = event.namespace() else { return };
    let api: Api<CouponEvent> = Api::namespaced(ctx.client.clone(), &namespace);
    // Only the conditions: the rest of the status in hand may be stale (a `topicCreated`
    // written earlier in this reconcile, say).
    if let Err(error) = write_status(&api, event, json!({ "conditions": status.conditions })).await {
        tracing::warn!(%error, "cannot write the status");
    }
}

/// The installed CRD drops status fields the operator writes (`dropped`): acting on what it
/// reads back could take this sale for another one, so the operator does nothing more with
/// the event than say so: `Ready=False` (`CrdOutdated`) and one Warning, and it looks again
/// later (a new CRD applied, it goes on by itself).
pub(super) async fn crd_outdated(
    event: &CouponEvent,
    current: Option<&CouponEventStatus>,
    ctx: &Context,
    api: &Api<CouponEvent>,
    dropped: &str,
) -> Result<Action, kube::Error> {
    let reported = current.is_some_and(|s| s.has_condition(ConditionType::Ready, Reason::CrdOutdated));
    if !reported {
        let message = format!(
            "the installed CouponEvent CRD drops the status field(s) {dropped} the operator writes (Helm does not upgrade CRDs): \
             apply this release's CRD (kubectl apply --server-side -f crds/); until then the operator does not act on this event"
        );
        ctx.publish(event, EventType::Warning, Reason::CrdOutdated.as_str(), "Reconcile", message.clone()).await;
        let status = not_ready_status(ctx.now(), current, event.metadata.generation, Reason::CrdOutdated, message);
        // Only the conditions, which every version of the CRD keeps.
        write_status(api, event, json!({ "conditions": status.conditions })).await?;
    }
    Ok(Action::requeue(Duration::from_secs(30)))
}
