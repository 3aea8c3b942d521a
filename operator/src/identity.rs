//! Which sale an object is, kept where the API server cannot drop it.
//!
//! The event's records and rows carry an incarnation (the object's UID at its first
//! provisioning). It used to live only in `status.incarnation`; a cluster whose CRD is older
//! than the operator (Helm never upgrades `crds/`) prunes that field, and an operator that
//! reads it back as missing takes its own sale for an earlier object's, closes it and starts
//! a new one: the limit handed out twice. So the incarnation is also written to an annotation
//! before anything is provisioned (metadata is never pruned), and read from there first; and
//! a status field the operator wrote that does not come back means the CRD is outdated: the
//! operator then refuses to act on the event (`Ready=False`, `CrdOutdated`, one Warning).

use std::collections::BTreeSet;

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::{json, Value};

use crate::conditions::{ConditionType, Reason};
use crate::crd::CouponEvent;

/// The annotation holding the incarnation the event's records carry.
pub const INCARNATION_ANNOTATION: &str = "coupons.fcfs.dev/incarnation";

/// The annotation naming the topic the operator created for this event: the one topic
/// `onDelete: Delete` may delete (with `spec.exclusiveTopic`), recorded where pruning cannot
/// drop it, and only for the topic it names (an edited topic is not the one created).
pub const TOPIC_CREATED_ANNOTATION: &str = "coupons.fcfs.dev/topic-created";

/// Whether the operator recorded creating `topic` for this object: the annotation, or the
/// status flag of an object provisioned before the annotation existed.
pub fn created_topic(event: &CouponEvent, topic: &str) -> bool {
    let annotation = event.metadata.annotations.as_ref().and_then(|a| a.get(TOPIC_CREATED_ANNOTATION));
    match annotation {
        Some(created) => created == topic,
        None => event.status.as_ref().is_some_and(|s| s.topic_created),
    }
}

/// Records that the operator created `topic` for this object (only to this object: its UID
/// is the precondition).
pub async fn record_topic_created(api: &Api<CouponEvent>, event: &CouponEvent, topic: &str) -> Result<(), kube::Error> {
    annotate(api, event, TOPIC_CREATED_ANNOTATION, topic).await
}

/// Sets one annotation of this object: a merge patch of metadata with the object's UID as
/// precondition, so it never lands on another object of the same name.
async fn annotate(api: &Api<CouponEvent>, event: &CouponEvent, annotation: &str, value: &str) -> Result<(), kube::Error> {
    let patch = json!({ "metadata": { "uid": event.uid(), "annotations": { annotation: value } } });
    api.patch(&event.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

/// The annotation naming the occurrence of a recurring event last provisioned (its start in
/// seconds since the epoch), written before Redis is: whether a missing Redis state was lost
/// (and is restored from SQL) or is a new occurrence's must not depend on a status write
/// that may have failed.
pub const OCCURRENCE_ANNOTATION: &str = "coupons.fcfs.dev/occurrence";

/// The occurrence the annotation records, if any.
pub fn provisioned_occurrence(event: &CouponEvent) -> Option<i64> {
    event.metadata.annotations.as_ref()?.get(OCCURRENCE_ANNOTATION)?.parse().ok()
}

/// Records that the occurrence starting `occurrence` is being provisioned.
pub async fn record_occurrence(api: &Api<CouponEvent>, event: &CouponEvent, occurrence: i64) -> Result<(), kube::Error> {
    annotate(api, event, OCCURRENCE_ANNOTATION, &occurrence.to_string()).await
}

/// The annotation naming the incarnation whose Redis state `ttlAfterFinished` released
/// (empty for an event keyed without one), written before the state is removed: without it,
/// the next look would take the missing state for a lost one and restore it from SQL.
pub const RELEASED_ANNOTATION: &str = "coupons.fcfs.dev/released";

/// The incarnation whose state was released (`Some("")`: the one without an incarnation).
pub fn released(event: &CouponEvent) -> Option<&str> {
    event.metadata.annotations.as_ref()?.get(RELEASED_ANNOTATION).map(String::as_str)
}

/// Records that the state of `incarnation` is being released.
pub async fn record_released(api: &Api<CouponEvent>, event: &CouponEvent, incarnation: Option<&str>) -> Result<(), kube::Error> {
    annotate(api, event, RELEASED_ANNOTATION, incarnation.unwrap_or_default()).await
}

/// Removes the record of a release: the state is there again, or is to be.
pub async fn clear_released(api: &Api<CouponEvent>, event: &CouponEvent) -> Result<(), kube::Error> {
    let patch = json!({ "metadata": { "uid": event.uid(), "annotations": { RELEASED_ANNOTATION: null } } });
    api.patch(&event.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

/// Condition reason while the installed CRD drops what the operator writes.
pub const CRD_OUTDATED: &str = Reason::CrdOutdated.as_str();

/// The incarnation recorded in the annotation, if any.
pub fn annotated(event: &CouponEvent) -> Option<&str> {
    event.metadata.annotations.as_ref()?.get(INCARNATION_ANNOTATION).map(String::as_str)
}

/// Writes the annotation (a merge patch of metadata, only to this object: its UID is the
/// precondition) when it does not say `incarnation` already: missing, removed, or copied
/// from another object. Returns whether it wrote.
pub async fn record(api: &Api<CouponEvent>, event: &CouponEvent, incarnation: Option<&str>) -> Result<bool, kube::Error> {
    let Some(incarnation) = incarnation else { return Ok(false) };
    if annotated(event) == Some(incarnation) {
        return Ok(false);
    }
    annotate(api, event, INCARNATION_ANNOTATION, incarnation).await?;
    Ok(true)
}

/// The status fields the operator wrote that the server's answer lacks: the CRD prunes them.
pub fn dropped_fields(written: &Value, answered: &Value) -> BTreeSet<String> {
    let Some(written) = written.as_object() else { return BTreeSet::new() };
    written
        .iter()
        .filter(|(key, value)| !value.is_null() && answered.get(key.as_str()).is_none_or(Value::is_null))
        .map(|(key, _)| key.clone())
        .collect()
}

/// The stored object shows a pruned status: it carries the annotation and its status says
/// it was provisioned (a status written with the incarnation beside it), yet the status has
/// no incarnation. (An event never provisioned, its status only saying why, has none to lose.)
pub fn status_pruned(event: &CouponEvent) -> bool {
    let Some(status) = event.status.as_ref() else { return false };
    let provisioned = status.last_accepted_spec.is_some() || status.is_true(ConditionType::Provisioned);
    let trusted = annotated(event).is_some_and(|a| Some(a) == event.metadata.uid.as_deref());
    trusted && provisioned && status.incarnation.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_fields_are_the_written_ones_missing_from_the_answer() {
        let written = json!({"phase": "Open", "incarnation": "u-1", "issued": 3, "gone": null});
        let answered = json!({"phase": "Open", "issued": 3});
        assert_eq!(dropped_fields(&written, &answered), BTreeSet::from(["incarnation".to_owned()]));
        assert!(dropped_fields(&written, &json!({"phase": "Open", "incarnation": "u-1", "issued": 3})).is_empty());
    }
}
