//! Reporting: the status a reconcile writes, computed from what it observed, and the one
//! function through which every status write goes.
//!
//! Each write is a merge patch of only the fields it names: a field left out stays as the
//! server holds it. A write computed from the status in hand (the whole status, or its
//! conditions, whose list a merge patch replaces whole) carries the resourceVersion that
//! status was read at: when another writer came in between (a former leader's last write, a
//! status written earlier in this reconcile, a reflector cache behind the server), the
//! server answers 409 and the status is computed again from what the server holds, instead
//! of overwriting it. With every write passing through here, there is one place to read what
//! the operator ever puts in a status, and no second way to put it.

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
use crate::status::{next_status, not_ready_status, unavailable_status, Observation, ScaleReport};

/// Writes `fields`, a JSON object of status fields, into the event's status as a merge patch:
/// those fields change, the others stay. Only for fields whose value does not depend on the
/// status in hand (a flag, the incarnation). Returns the object as the server stored it, so
/// a caller can see what the installed CRD kept.
pub(super) async fn write_status(api: &Api<CouponEvent>, event: &CouponEvent, fields: Value) -> Result<CouponEvent, kube::Error> {
    api.patch_status(&event.name_any(), &PatchParams::default(), &Patch::Merge(json!({ "status": fields }))).await
}

/// Writes `fields` computed from the status as it was at `resource_version`: refused (409)
/// if the object changed since.
async fn write_status_read_at(
    api: &Api<CouponEvent>,
    event: &CouponEvent,
    resource_version: Option<&str>,
    fields: Value,
) -> Result<CouponEvent, kube::Error> {
    let patch = json!({ "metadata": { "resourceVersion": resource_version }, "status": fields });
    api.patch_status(&event.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await
}

/// How often a status computed from a stale copy is computed again after a 409 before the
/// reconcile gives up (and is retried by the error policy).
const STATUS_CONFLICT_RETRIES: usize = 3;

fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

/// The object as the server holds it now, if it is still the same object.
async fn reread(api: &Api<CouponEvent>, event: &CouponEvent) -> Result<Option<CouponEvent>, kube::Error> {
    Ok(api.get_opt(&event.name_any()).await?.filter(|fresh| fresh.metadata.uid == event.metadata.uid))
}

/// Writes what `compute` makes of the status as the server holds it (`None`: nothing to
/// write), starting from the object in hand: a 409 (the object changed since it was read)
/// reads it again and computes again, a few times. Returns the status the write was computed
/// from and the server's answer (`None` when nothing was written, or the object is gone).
async fn write_computed(
    api: &Api<CouponEvent>,
    event: &CouponEvent,
    compute: impl Fn(Option<&CouponEventStatus>) -> Option<Value>,
) -> Result<(Option<CouponEventStatus>, Option<CouponEvent>), kube::Error> {
    let mut previous = event.status.clone();
    let mut read_at = event.metadata.resource_version.clone();
    let mut conflicts = 0;
    loop {
        let Some(fields) = compute(previous.as_ref()) else { return Ok((previous, None)) };
        match write_status_read_at(api, event, read_at.as_deref(), fields).await {
            Ok(answered) => return Ok((previous, Some(answered))),
            Err(error) if is_conflict(&error) && conflicts < STATUS_CONFLICT_RETRIES => {
                conflicts += 1;
                tracing::debug!(event = %event.name_any(), "status changed since it was read; computing it again");
                let Some(fresh) = reread(api, event).await? else { return Ok((previous, None)) };
                previous = fresh.status;
                read_at = fresh.metadata.resource_version;
            }
            Err(error) => return Err(error),
        }
    }
}

/// A status as the API server will hold it (times to the second, say), so that a status
/// that differs only in its encoding is not written.
fn as_stored(status: CouponEventStatus) -> CouponEventStatus {
    serde_json::to_value(&status).ok().and_then(|v| serde_json::from_value(v).ok()).unwrap_or(status)
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
    let compute = |previous: Option<&CouponEventStatus>| {
        let status = as_stored(next_status(now, previous, observation));
        (previous != Some(&status)).then(|| serde_json::to_value(&status).unwrap_or_default())
    };
    // Exported from the status this look computes, before the write (which may fail).
    export_open_unready(ctx, event, observation.phase, &as_stored(next_status(now, event.status.as_ref(), observation)));
    let (previous, answered) = write_computed(api, event, compute).await?;
    // The status as written (or as it stands, when nothing needed writing), from the status
    // the last write was computed from.
    let status = as_stored(next_status(now, previous.as_ref(), observation));
    if let Some(answered) = answered {
        let written = serde_json::to_value(&status).unwrap_or_default();
        let dropped = identity::dropped_fields(&written, &serde_json::to_value(&answered.status).unwrap_or_default());
        if !dropped.is_empty() {
            let dropped = dropped.into_iter().collect::<Vec<_>>().join(", ");
            return crd_outdated(&answered, answered.status.as_ref(), ctx, api, &dropped).await.map(Some);
        }
    }
    let previous = previous.as_ref();
    if let Err(refusal) = &observation.provisioned {
        // Once per reason and generation (the message may carry live counts).
        let already_reported =
            previous.is_some_and(|s| s.has_condition_at(ConditionType::Provisioned, false, refusal.reason, event.metadata.generation));
        if !already_reported {
            ctx.publish(event, EventType::Warning, refusal.reason.as_str(), "Provision", refusal.message.clone()).await;
        }
    }
    let short_warm_up = |s: &CouponEventStatus| s.has_condition(ConditionType::WarmUp, Reason::ShortWarmUp);
    if short_warm_up(&status) && !previous.is_some_and(short_warm_up) {
        let message = status.conditions_of(ConditionType::WarmUp).next().map(|c| c.message.clone()).unwrap_or_default();
        ctx.publish(event, EventType::Warning, Reason::ShortWarmUp.as_str(), "Reconcile", message).await;
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
pub(super) async fn report_unavailable(event: &CouponEvent, ctx: &Context, error: &BackendError, scaling: Option<&ScaleReport>) {
    let Some(namespace) = event.namespace() else { return };
    let api: Api<CouponEvent> = Api::namespaced(ctx.client.clone(), &namespace);
    let now = ctx.now();
    let message = error.to_string();
    let compute = |previous: Option<&CouponEventStatus>| {
        let status = unavailable_status(now, previous, event.metadata.generation, &message, scaling);
        let find = |s: &CouponEventStatus| s.conditions.iter().find(|c| c.type_ == ConditionType::Scaling.as_str()).cloned();
        let already = previous.is_some_and(|s| s.has_condition(ConditionType::Ready, Reason::BackendUnavailable));
        // Once per outage (and when scaling changed meanwhile). Only the conditions: the
        // rest of the status is not this write's to decide.
        (!(already && previous.map(find) == Some(find(&status)))).then(|| json!({ "conditions": status.conditions }))
    };
    if let Err(error) = write_computed(&api, event, compute).await {
        tracing::warn!(%error, "cannot write the status");
    }
    // Open by the clock: this write keeps the last phase, which may still be `WarmingUp`.
    let status = event.status.as_ref();
    let spec = status.and_then(|s| s.last_accepted_spec.as_ref()).unwrap_or(&event.spec);
    let (issued, persisted) = status.map(|s| (s.issued, s.persisted)).unwrap_or_default();
    let open = crate::schedule::phase(now, spec, issued, persisted) == Phase::Open;
    ctx.metrics.set_open_unready(&object_label(event), open, !spec.paused);
}

/// Exports whether the event, in `phase`, is open and not ready to sell by `status`: not
/// `Ready`, or its Deployments short of available replicas; a paused sale never counts (it
/// does not sell on purpose).
fn export_open_unready(ctx: &Context, event: &CouponEvent, phase: Phase, status: &CouponEventStatus) {
    let paused = status.has_condition(ConditionType::Ready, Reason::Paused);
    let ready = status.is_true(ConditionType::Ready);
    let short_of_replicas = status.has_condition(ConditionType::Scaling, Reason::NotReady);
    ctx.metrics.set_open_unready(&object_label(event), phase == Phase::Open, !paused && (!ready || short_of_replicas));
}

/// The `event` label of the operator's per-event metrics: `<namespace>/<name>`.
pub(super) fn object_label(event: &CouponEvent) -> String {
    format!("{}/{}", event.namespace().unwrap_or_default(), event.name_any())
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
        let now = ctx.now();
        // Only the conditions, which every version of the CRD keeps.
        let compute = |previous: Option<&CouponEventStatus>| {
            let status = not_ready_status(now, previous, event.metadata.generation, Reason::CrdOutdated, message.clone());
            Some(json!({ "conditions": status.conditions }))
        };
        write_computed(api, event, compute).await?;
    }
    Ok(Action::requeue(Duration::from_secs(30)))
}
