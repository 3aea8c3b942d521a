//! Admission: whether a reconcile may act on the event at all, who the sale is, and whether
//! the spec as it stands may be put in effect.
//!
//! All of it comes before anything is provisioned. An installed CRD that prunes what the
//! operator writes would make it take its own sale for an earlier object's (and hand the
//! limit out twice), so that is probed first; the incarnation is recorded where pruning
//! cannot drop it; and a spec that is invalid, or that edits a field fixed once accepted, is
//! refused here without touching Redis or Kafka.

use std::ops::ControlFlow;

use coupon_core::event::split_occurrence;
use coupon_core::redis::keyspace::EventCounters;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use serde_json::json;

use super::provision::provisioned_before;
use super::{report, Context};
use crate::conditions::{ConditionType, Reason};
use crate::crd::{CouponEvent, CouponEventSpec};
use crate::identity;
use crate::lifecycle;
use crate::status::Refusal;

/// What admission decided for a reconcile that goes on.
pub(super) struct Admission {
    /// This reconcile wrote the incarnation annotation: the object in hand predates it.
    pub recorded_now: bool,
    /// The spec in effect before this reconcile (`None`: never accepted).
    pub accepted_before: Option<CouponEventSpec>,
    /// Why the spec as it stands is refused before anything is provisioned.
    pub refused: Option<Refusal>,
}

/// `Continue` with what admission decided, or `Break` with when to look again: the installed
/// CRD drops what the operator writes, which is reported and nothing acted on.
pub(super) async fn admit(
    event: &CouponEvent,
    ctx: &Context,
    api: &Api<CouponEvent>,
) -> Result<ControlFlow<Action, Admission>, kube::Error> {
    if identity::status_pruned(event) {
        // The status lost the incarnation: the CRD may be outdated. Written again, does it
        // stay? (It does once the new CRD is applied.)
        let answered = report::write_status(api, event, json!({ "incarnation": identity::annotated(event) })).await?;
        if answered.status.as_ref().is_none_or(|s| s.incarnation.is_none()) {
            return report::crd_outdated(&answered, answered.status.as_ref(), ctx, api, "incarnation").await.map(ControlFlow::Break);
        }
    }
    // Who this sale is, where pruning cannot drop it, before anything is provisioned.
    let recorded_now = identity::record(api, event, incarnation(event)).await?;
    let accepted_before = accepted_before(event);
    let immutable = accepted_before.as_ref().and_then(|accepted| lifecycle::changed_immutable(accepted, &event.spec));
    // A warm-up under today's minimum that an earlier version accepted stays accepted.
    let validated = match (event.spec.validate(), &accepted_before) {
        (Err(crate::crd::SpecError::WarmUp(_)), Some(accepted)) if accepted.schedule.warm_up == event.spec.schedule.warm_up => {
            let mut relaxed = event.spec.clone();
            relaxed.schedule.warm_up = None;
            relaxed.validate()
        }
        (validated, _) => validated,
    };
    let refused = match (validated, immutable) {
        (Err(invalid), _) => Some(Refusal { reason: Reason::InvalidSpec, message: invalid.to_string() }),
        (Ok(()), Some(message)) => Some(Refusal { reason: Reason::ImmutableField, message }),
        (Ok(()), None) => rival(event, &ctx.events.state()).map(|other| Refusal {
            reason: Reason::EventIdInUse,
            message: format!(
                "CouponEvent {} keeps its sale under the same key ({}); this one is provisioned once it is gone",
                other.name_any(),
                key_name(event)
            ),
        }),
    };
    Ok(ControlFlow::Continue(Admission { recorded_now, accepted_before, refused }))
}

/// The spec in effect before this reconcile. A status written before `lastAcceptedSpec`
/// existed counts the current spec as accepted if it was provisioned for this generation,
/// so an upgrade never turns a live event `Failed`.
fn accepted_before(event: &CouponEvent) -> Option<CouponEventSpec> {
    let previous = event.status.as_ref();
    previous.and_then(|s| s.last_accepted_spec.clone()).or_else(|| {
        previous
            .filter(|s| s.observed_generation == event.metadata.generation && s.is_true(ConditionType::Provisioned))
            .map(|_| event.spec.clone())
    })
}

/// Redis says who the sale is when its state (`counters`, this object's) carries this
/// object's UID: a record that an outdated CRD pruned or a user removed or edited is written
/// back from it. Returns that incarnation.
pub(super) async fn record_from_redis(
    api: &Api<CouponEvent>,
    event: &CouponEvent,
    admission: &Admission,
    counters: Option<&EventCounters>,
) -> Result<Option<String>, kube::Error> {
    let known = counters.and_then(|c| keyed_with_uid(c, event)).map(str::to_owned);
    if let Some(uid) = known.as_deref() {
        // (Not again when this reconcile wrote it at its start: the object in hand predates that.)
        if !(admission.recorded_now && incarnation(event) == Some(uid)) {
            identity::record(api, event, Some(uid)).await?;
        }
    }
    Ok(known)
}

/// The key this object's sale is kept under in its namespace: its `eventId`, else its name.
pub(super) fn key_name(event: &CouponEvent) -> String {
    event.spec.event_id.clone().unwrap_or_else(|| event.name_any())
}

/// The other live (not deleting) CouponEvents of the namespace that keep their sale under
/// this one's key (its `eventId`, or its name).
fn others_with_key<'a>(event: &'a CouponEvent, others: &'a [std::sync::Arc<CouponEvent>]) -> impl Iterator<Item = &'a CouponEvent> + 'a {
    let key = key_name(event);
    others.iter().map(|o| o.as_ref()).filter(move |other| {
        other.namespace() == event.namespace()
            && other.metadata.uid != event.metadata.uid
            && other.metadata.deletion_timestamp.is_none()
            && key_name(other) == key
    })
}

/// Another live CouponEvent of the namespace keeping its sale under the same key as this
/// one, and ahead of it: two objects must never drive one sale (each would provision its own
/// spec). Ahead is the one accepted already, then the one created first (then by name): an
/// order both objects compute alike, so exactly one of them goes on.
fn rival<'a>(event: &'a CouponEvent, others: &'a [std::sync::Arc<CouponEvent>]) -> Option<&'a CouponEvent> {
    let rank = |e: &CouponEvent| {
        let accepted = e.status.as_ref().is_some_and(|s| s.last_accepted_spec.is_some());
        (!accepted, e.metadata.creation_timestamp.clone().map(|t| t.0), e.name_any())
    };
    others_with_key(event, others).find(|other| rank(other) < rank(event))
}

/// Whether another live object of the namespace keeps its sale under this one's key: then
/// what Redis holds under it is that object's sale, which this one's clean-up leaves alone.
pub(super) fn key_held_by_another(event: &CouponEvent, others: &[std::sync::Arc<CouponEvent>]) -> bool {
    others_with_key(event, others).next().is_some()
}

/// The incarnation this object's event carries in its key: the annotation written before
/// its first provisioning, trusted only when it names this object's UID or what its status
/// recorded (a user may edit it, or copy it from an exported object; not the status); for an
/// object provisioned before the annotation existed, the one its status recorded (none for
/// an event provisioned before incarnations existed, whose rows are keyed by name alone);
/// else its UID.
pub(super) fn incarnation(event: &CouponEvent) -> Option<&str> {
    if event.spec.event_id.is_some() {
        // The user's own identity: the key `<namespace>/<eventId>` alone names the sale,
        // whichever object carries it, so a re-created object continues it.
        return None;
    }
    let uid = event.metadata.uid.as_deref();
    let recorded = event.status.as_ref().and_then(|s| s.incarnation.as_deref());
    if let Some(annotated) = identity::annotated(event).filter(|a| Some(*a) == uid || Some(*a) == recorded) {
        return Some(annotated);
    }
    if provisioned_before(event) {
        recorded
    } else {
        uid
    }
}

/// Whether Redis' state under the object's name is this object's: it carries this object's
/// incarnation, or its UID (UIDs are never reused, so state keyed with it is this object's
/// whatever an outdated CRD or an edited annotation left of the record). For a recurring
/// event, of any of its occurrences (`occurrence_of_ours` tells which).
pub(super) fn owns(counters: &EventCounters, event: &CouponEvent) -> bool {
    base_incarnation(counters) == incarnation(event) || keyed_with_uid(counters, event).is_some()
}

/// Redis' incarnation when it is this object's UID (of any occurrence): then Redis says who
/// the sale is, whatever the object's own record of it (pruned by an outdated CRD, removed or
/// edited) says. Returns the UID.
pub(super) fn keyed_with_uid<'a>(counters: &'a EventCounters, event: &CouponEvent) -> Option<&'a str> {
    base_incarnation(counters).filter(|i| Some(*i) == event.metadata.uid.as_deref())
}

/// The object's part of Redis' incarnation, without the occurrence of a recurring event.
fn base_incarnation(counters: &EventCounters) -> Option<&str> {
    counters.incarnation.as_deref().and_then(|i| split_occurrence(i).0)
}

/// The occurrence Redis holds of this object's recurring event (its start, in seconds since
/// the epoch), when Redis' state is this object's and names one.
pub(super) fn occurrence_of_ours(counters: &EventCounters, event: &CouponEvent) -> Option<i64> {
    owns(counters, event).then(|| counters.incarnation.as_deref().and_then(|i| split_occurrence(i).1)).flatten()
}
