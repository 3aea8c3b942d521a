//! Finished events clean up (`spec.ttlAfterFinished`): once an event, or an occurrence of a
//! recurring one, is finished (its window over, cooled down, every coupon written) and the
//! time to live has passed since its cool-down ended, its Redis state is removed. The rows in
//! SQL stay.
//!
//! The release is recorded on the object (an annotation) before the state is removed:
//! without it the next look would find the state missing, take it for lost, and restore it
//! from SQL (`provision`). State the operator released is never provisioned again.

use coupon_core::event::EventId;
use coupon_core::redis::keyspace::{EventCounters, Retirement};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::events::EventType;
use kube::Api;

use super::admit::owns;
use super::Context;
use crate::crd::{CouponEvent, CouponEventSpec, Phase, DEFAULT_COOL_DOWN};
use crate::identity;

/// How releasing fails.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
}

/// What this look did about the event's Redis state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Release {
    /// Nothing to release (no time to live, not finished, or nothing there).
    Nothing,
    /// Finished; released at this instant.
    Due(Timestamp),
    /// Removed now.
    Released,
}

/// When the state in `counters` (this object's) may go: its window's end (as Redis holds it,
/// so a sale closed early counts from then), the cool-down, then the time to live.
pub(super) fn release_at(spec: &CouponEventSpec, counters: &EventCounters) -> Option<Timestamp> {
    let ttl = spec.ttl_after_finished().ok()??;
    let cool_down = spec.schedule.cool_down().unwrap_or(DEFAULT_COOL_DOWN);
    let after = SignedDuration::try_from(cool_down + ttl).unwrap_or(SignedDuration::MAX);
    coupon_core::time::timestamp_from_millis_clamped(counters.end_ms).checked_add(after).ok()
}

/// Removes the state in `counters` once it is finished and its time to live has passed.
/// The caller does not ask while the event waits on another occurrence or object.
pub(super) async fn release_if_due(
    event: &CouponEvent,
    spec: &CouponEventSpec,
    id: &EventId,
    ctx: &Context,
    counters: Option<&EventCounters>,
    phase: Phase,
) -> Result<Release, ReleaseError> {
    let Some(counters) = counters.filter(|c| owns(c, event)) else { return Ok(Release::Nothing) };
    let Some(at) = release_at(spec, counters) else { return Ok(Release::Nothing) };
    if phase != Phase::Closed {
        return Ok(Release::Nothing);
    }
    // Closed with coupons still being settled (the consumer healing a slot, a restore): soon.
    let settled = counters.persisted >= counters.issued && counters.unwritten == 0 && !counters.recovering;
    if !settled {
        return Ok(Release::Due(ctx.now() + SignedDuration::from_secs(5)));
    }
    if ctx.now() < at {
        return Ok(Release::Due(at));
    }
    let api: Api<CouponEvent> = Api::namespaced(ctx.client.clone(), id.namespace());
    identity::record_released(&api, event, counters.incarnation.as_deref()).await?;
    match ctx.backend.retire(id, counters.incarnation.as_deref()).await? {
        Retirement::Removed | Retirement::Absent => {
            let message = format!(
                "removed the Redis state of the finished sale ({} coupons, all in SQL) after ttlAfterFinished {}",
                counters.issued,
                spec.ttl_after_finished.as_deref().unwrap_or_default()
            );
            ctx.publish(event, EventType::Normal, "RedisStateReleased", "Release", message).await;
            Ok(Release::Released)
        }
        // Changed since it was read (a coupon handed back by the consumer's healing, a
        // restore): the state stays, and so must its restore if Redis loses it.
        _ => {
            identity::clear_released(&api, event).await?;
            Ok(Release::Due(ctx.now() + SignedDuration::from_secs(5)))
        }
    }
}

/// Whether the state `provision` would make is one this object released: then it is not
/// made again.
pub(super) fn released(event: &CouponEvent, incarnation: Option<&str>) -> bool {
    identity::released(event).is_some_and(|released| released == incarnation.unwrap_or_default())
}
