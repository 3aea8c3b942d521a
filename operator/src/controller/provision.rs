//! Provisioning: the event's Kafka topic and Redis configuration, put in place on every
//! reconcile, and the retirement of an earlier object's state under a re-used name.
//!
//! Both are cheap when already in place, and doing them every time puts back a topic someone
//! deleted and a configuration lost with Redis. What the live state refuses (a limit below
//! the coupons issued, an earlier object's sale still draining) becomes a `Refusal`, not an
//! error: the event stays as it is and its status says why.

use coupon_core::event::{occurrence_incarnation, EventId, InvalidConfig};
use coupon_core::redis::keyspace::{EventCounters, Retirement};
use kube::runtime::events::EventType;
use kube::Api;
use serde_json::json;

use super::admit::{incarnation, keyed_with_uid, occurrence_of_ours, owns, Admission};
use super::{report, Context};
use crate::backend::BackendError;
use crate::conditions::{ConditionType, Reason};
use crate::crd::{CouponEvent, CouponEventSpec};
use crate::identity;
use crate::status::Refusal;

/// How provisioning fails (a refusal is not a failure).
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// Recording `topicCreated` failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Redis or Kafka failed: the event is reported unavailable.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Provisions the admitted spec; refused (by admission or by the live state), keeps the
/// accepted spec's topic and configuration in place instead (a topic deleted or a Redis that
/// lost its state meanwhile is put back). Returns whether a topic was created now, and
/// whether the spec is in effect.
pub(super) async fn provision_admitted(
    event: &CouponEvent,
    admission: &Admission,
    id: &EventId,
    ctx: &Context,
) -> Result<(bool, Result<(), Refusal>), ProvisionError> {
    let mut created_now = false;
    let outcome = match &admission.refused {
        Some(refusal) => Err(refusal.clone()),
        None => {
            let (created, outcome) = provision(event, &event.spec, id, ctx).await?;
            created_now |= created;
            outcome
        }
    };
    // Another object holds the key: nothing of this one's is provisioned, not even what it
    // had accepted (that would rewrite the other's sale).
    let rival = matches!(&outcome, Err(refusal) if refusal.reason == crate::conditions::Reason::EventIdInUse);
    if outcome.is_err() && !rival {
        if let Some(accepted) = admission.accepted_before.as_ref() {
            let (created, _) = provision(event, accepted, id, ctx).await?;
            created_now |= created;
        }
    }
    Ok((created_now, outcome))
}

/// Topic and Redis configuration for `spec`. A spec the live state refuses becomes a
/// `Refusal`. Returns whether the topic was created now, and the outcome.
async fn provision(
    event: &CouponEvent,
    spec: &CouponEventSpec,
    id: &EventId,
    ctx: &Context,
) -> Result<(bool, Result<(), Refusal>), ProvisionError> {
    // The live-state check first, so that a refused spec touches neither Redis nor Kafka.
    // With Redis' counters lost, the last issued count the status saw stands in for them.
    let mut counters = ctx.backend.counters(id).await?;
    // The window provisioned: the one window, or the occurrence in effect.
    let now = ctx.now();
    let Some(window) = spec.schedule.window_at(now) else {
        // A recurrence that is over provisions nothing more; an occurrence still open under
        // a spec that ended the recurrence (an `until` moved back) closes now.
        super::occurrence::close_after_the_last(event, spec, id, ctx, counters.as_ref()).await?;
        return Ok((false, Ok(())));
    };
    // The incarnation to provision with: Redis' own when its state carries this object's UID
    // (the object's record of it may be lost or edited), else the object's; for a recurring
    // event, with the occurrence after it.
    let known = counters.as_ref().and_then(|c| keyed_with_uid(c, event)).map(str::to_owned);
    let object_incarnation = known.as_deref().or(incarnation(event));
    let recurring = spec.schedule.recurrence.is_some();
    let incarnation_now = match recurring {
        true => Some(occurrence_incarnation(object_incarnation, window.id())),
        false => object_incarnation.map(str::to_owned),
    };
    if let Some(theirs) = counters.as_ref().filter(|c| !owns(c, event)) {
        if let Err(waiting) = retire_previous(event, spec, id, ctx, theirs, Previous::OtherObject).await? {
            return Ok((false, Err(waiting)));
        }
        counters = None;
    }
    // Another occurrence of this event (the one before, or one an edit of the recurrence
    // moved): finished and written, it makes way for this one, which starts from zero.
    let mut new_occurrence = false;
    if let Some(ours) = counters.as_ref().filter(|c| c.incarnation != incarnation_now) {
        if recurring || occurrence_of_ours(ours, event).is_some() {
            if let Err(waiting) = super::occurrence::make_way(event, spec, id, ctx, ours, &window).await? {
                return Ok((false, Err(waiting)));
            }
            counters = None;
            new_occurrence = true;
        }
    }
    // This occurrence was provisioned before only if the object records it (written before
    // Redis is, where pruning cannot drop it): its state missing from Redis is then lost, to
    // be restored from SQL, and otherwise new.
    let this_occurrence_before = !recurring || (!new_occurrence && identity::provisioned_occurrence(event) == Some(window.id()));
    if recurring && !this_occurrence_before {
        let api: Api<CouponEvent> = Api::namespaced(ctx.client.clone(), id.namespace());
        identity::record_occurrence(&api, event, window.id()).await?;
    }
    let issued = match &counters {
        Some(counters) => counters.issued,
        None if !this_occurrence_before => 0,
        None => event.status.as_ref().map_or(0, |s| s.issued),
    };
    if spec.limit < issued {
        let message = format!("limit {} is below the {issued} coupons already issued", spec.limit);
        return Ok((false, Err(Refusal { reason: Reason::LimitBelowIssued, message })));
    }
    // Released after it finished (`ttlAfterFinished`): not made again while its window is
    // over. An edit that moved the end later reopens it: then it is written back as lost and
    // restored from SQL (every coupon of it is there), never from zero.
    let released = super::release::released(event, incarnation_now.as_deref());
    if released && counters.is_none() && now >= window.end {
        return Ok((false, Ok(())));
    }
    if released {
        let api: Api<CouponEvent> = Api::namespaced(ctx.client.clone(), id.namespace());
        identity::clear_released(&api, event).await?;
    }
    if let Some(refusal) = super::quota::over_the_cap(event, spec, ctx).await {
        return Ok((false, Err(refusal)));
    }
    let existed_before = provisioned_before(event) && this_occurrence_before;
    let created = match ctx.backend.ensure_topic(spec).await {
        Ok(outcome) => outcome == coupon_core::kafka::TopicOutcome::Created,
        Err(error) => {
            ctx.publish(event, EventType::Warning, "ProvisioningFailed", "CreateTopic", format!("Kafka topic {}: {error}", spec.topic))
                .await;
            return Err(error.into());
        }
    };
    if created {
        // Written at once: only a topic the operator created is ever deleted, and that must
        // survive a crash before this reconcile's status write.
        let api: Api<CouponEvent> = Api::namespaced(ctx.client.clone(), id.namespace());
        if !identity::created_topic(event, &spec.topic) || !event.status.as_ref().is_some_and(|s| s.topic_created) {
            identity::record_topic_created(&api, event, &spec.topic).await?;
            // Only the flag: the rest of the status in hand may be stale.
            report::write_status(&api, event, json!({ "topicCreated": true })).await?;
        }
        ctx.metrics.topic_provisionings.inc();
        if existed_before {
            let message = format!("Kafka topic {} was missing and was created again; records it held are gone", spec.topic);
            ctx.publish(event, EventType::Warning, "TopicRecreated", "CreateTopic", message).await;
        }
    }
    match ctx.backend.provision_redis(id, spec, &window, existed_before, incarnation_now.as_deref()).await {
        Ok(coupon_core::provision::RedisOutcome::CreatedRecovering) => {
            ctx.publish(
                event,
                EventType::Warning,
                "RedisStateLost",
                "Recover",
                "Redis lost the event's state: applies answer 503 until the consumer restores it from SQL".into(),
            )
            .await;
            Ok((created, Ok(())))
        }
        Ok(_) => Ok((created, Ok(()))),
        Err(error) => match error.refusal() {
            Some(invalid) => {
                let reason = match invalid {
                    InvalidConfig::LimitBelowIssued { .. } => Reason::LimitBelowIssued,
                    InvalidConfig::OtherIncarnation => Reason::PreviousEventDraining,
                    _ => Reason::InvalidSpec,
                };
                Ok((created, Err(Refusal { reason, message: invalid.to_string() })))
            }
            None => {
                ctx.publish(event, EventType::Warning, "ProvisioningFailed", "ConfigureRedis", format!("Redis: {error}")).await;
                Err(error.into())
            }
        },
    }
}

/// Whose state Redis holds instead of the one to provision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Previous {
    /// An earlier object of this name.
    OtherObject,
    /// Another occurrence of this recurring event that has not begun: closing it is harmless.
    Occurrence,
    /// Another occurrence of this recurring event that began: it runs to its end (an edit of
    /// the recurrence takes effect after it), never closed early.
    OccurrenceUnderWay,
}

impl Previous {
    fn named(self) -> &'static str {
        match self {
            Self::OtherObject => "an earlier CouponEvent of this name",
            Self::Occurrence | Self::OccurrenceUnderWay => "another occurrence of this event",
        }
    }
}

/// Redis holds the state of an earlier object of this name, or of another occurrence of
/// this one (`theirs`). Its coupons are its own (their rows carry its incarnation); once it
/// is finished it is removed, and this object (occurrence) starts from zero with its own
/// limit. `Err` while it is not finished: this one waits (`PreviousEventDraining`).
pub(super) async fn retire_previous(
    event: &CouponEvent,
    spec: &CouponEventSpec,
    id: &EventId,
    ctx: &Context,
    theirs: &EventCounters,
    previous: Previous,
) -> Result<Result<(), Refusal>, BackendError> {
    let unwritten = (theirs.issued - theirs.persisted).max(theirs.unwritten);
    let waiting = match ctx.backend.retire(id, theirs.incarnation.as_deref()).await? {
        Retirement::Removed | Retirement::Absent => None,
        Retirement::StillOpen if previous == Previous::OccurrenceUnderWay => {
            Some("it is under way: a change of the recurrence takes effect once it has ended".to_owned())
        }
        Retirement::StillOpen => {
            // No object owns that sale any more (two objects of one name cannot live at
            // once; its finalizer was removed by hand, or its clean-up was given up on):
            // it closes now, so it stops issuing under a name that is this object's.
            ctx.backend.close_sale(id, spec, ctx.now()).await?;
            let message = format!("closed the sale {} had left open", previous.named());
            ctx.publish(event, EventType::Warning, "PreviousEventClosed", "Provision", message).await;
            Some("its sale was still open and is closed now".to_owned())
        }
        Retirement::Recovering => Some("it is being verified against SQL".to_owned()),
        Retirement::Unwritten => Some(format!("{unwritten} of its coupons are not written to SQL yet")),
        Retirement::OtherIncarnation => Some("it changed while being removed".to_owned()),
    };
    if let Some(why) = waiting {
        let message = format!("Redis holds the state of {} and {why}; this one is provisioned once it is finished", previous.named());
        return Ok(Err(Refusal { reason: Reason::PreviousEventDraining, message }));
    }
    let message = format!("removed the Redis state of {} ({} coupons, all written)", previous.named(), theirs.issued);
    ctx.publish(event, EventType::Normal, "PreviousEventRemoved", "Provision", message).await;
    Ok(Ok(()))
}

/// This object provisioned its event before (the status says so): a missing topic or
/// configuration was lost, not never made. Read from the last accepted spec, which no
/// refusal erases.
pub(super) fn provisioned_before(event: &CouponEvent) -> bool {
    event.status.as_ref().is_some_and(|s| s.last_accepted_spec.is_some() || s.is_true(ConditionType::Provisioned))
}
