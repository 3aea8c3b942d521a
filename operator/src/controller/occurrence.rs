//! Provisioning, for a recurring event: the occurrence Redis holds makes way for the one in
//! effect, and after the last nothing stays open.
//!
//! Redis holds one occurrence of an event at a time (its keys are the event's). The next is
//! provisioned once the one before is over and every coupon of it written (`retire`), from
//! zero. An occurrence that began runs to its end whatever the spec says meanwhile: an edit
//! of the recurrence takes effect after it, and an occurrence the edit moved to start before
//! that end is skipped, so that no day is sold twice.

use coupon_core::event::recurrence::Occurrence;
use coupon_core::event::EventId;
use coupon_core::redis::keyspace::EventCounters;
use kube::runtime::events::EventType;

use super::admit::occurrence_of_ours;
use super::provision::{retire_previous, Previous};
use super::Context;
use crate::backend::BackendError;
use crate::conditions::Reason;
use crate::crd::{CouponEvent, CouponEventSpec};
use crate::status::Refusal;

/// Redis holds another occurrence of this event (`held`) than `window`: `Ok` once it is
/// removed, else why this one waits.
pub(super) async fn make_way(
    event: &CouponEvent,
    spec: &CouponEventSpec,
    id: &EventId,
    ctx: &Context,
    held: &EventCounters,
    window: &Occurrence,
) -> Result<Result<(), Refusal>, BackendError> {
    let now_ms = ctx.now().as_millisecond();
    let began = held.start_ms <= now_ms;
    if began && window.start.as_millisecond() < held.end_ms {
        let message = format!(
            "the occurrence starting {} would overlap the one that ran until {} (the recurrence was edited): it is skipped, and the next one provisioned at its time",
            window.start,
            coupon_core::time::timestamp_from_millis_clamped(held.end_ms)
        );
        return Ok(Err(Refusal { reason: Reason::PreviousEventDraining, message }));
    }
    let previous = if began { Previous::OccurrenceUnderWay } else { Previous::Occurrence };
    retire_previous(event, spec, id, ctx, held, previous).await
}

/// Every occurrence is over (or the spec's recurrence ended): one of this event's still open
/// in Redis closes now, so that no sale runs while the operator reports the event closed and
/// scales its api down.
pub(super) async fn close_after_the_last(
    event: &CouponEvent,
    spec: &CouponEventSpec,
    id: &EventId,
    ctx: &Context,
    counters: Option<&EventCounters>,
) -> Result<(), BackendError> {
    let Some(held) = counters.filter(|c| occurrence_of_ours(c, event).is_some()) else { return Ok(()) };
    let now = ctx.now();
    if held.end_ms > now.as_millisecond() && ctx.backend.close_sale(id, spec, now).await? {
        let message = "the recurrence has no occurrence left: the one still open in Redis is closed now".to_owned();
        ctx.publish(event, EventType::Warning, "OccurrenceClosed", "Provision", message).await;
    }
    Ok(())
}
