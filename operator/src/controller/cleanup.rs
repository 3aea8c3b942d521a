//! Clean-up on deletion, behind the finalizer: a `Retain` event's sale is closed and the
//! deletion waits for its coupons to be written; a `Delete` event's Redis keys go, and its
//! topic where `lifecycle::topic_deletion` allows it.
//!
//! A deletion must end even when Redis or Kafka is gone for good, so each kind of waiting
//! has its patience (`CLEANUP_PATIENCE`), after which the object is let go with a Warning
//! naming what was left behind.

use std::time::Duration;

use coupon_core::event::EventId;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;

use super::admit::owns;
use super::{scale, Context};
use crate::backend::BackendError;
use crate::crd::{CouponEvent, CouponEventSpec, OnDelete};
use crate::identity;
use crate::lifecycle;
use crate::schedule::{EventState, Need};

/// How long a deletion keeps trying to reach Redis and Kafka before it lets the object go
/// (with a Warning naming what was left behind), so a deletion always ends.
pub const CLEANUP_PATIENCE: Duration = Duration::from_secs(120);

/// How a clean-up does not finish (yet).
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Not a failure: a deleted `Retain` event waits for its coupons to be written (this many).
    #[error("waiting for {0} issued coupons to be written to SQL before letting the event go")]
    Draining(i64),
}

/// How long the one clean-up of an event in a terminating namespace may take.
pub const TERMINATING_CLEANUP_BOUND: Duration = Duration::from_secs(10);

pub(super) async fn cleanup(event: &CouponEvent, id: &EventId, ctx: &Context) -> Result<Action, CleanupError> {
    let now = ctx.now();
    ctx.metrics.set_open_unready(&super::report::object_label(event), false, false);
    // What is in effect is the last accepted spec, not an edit that was refused.
    let spec = event.status.as_ref().and_then(|s| s.last_accepted_spec.as_ref()).unwrap_or(&event.spec);
    if super::admit::key_held_by_another(event, &ctx.events.state()) {
        // Another live object keeps its sale under this key (`eventId`): its sale, not this
        // one's, and it stays as it is.
        let message = format!("CouponEvent keeps its sale under the key {id}: nothing of it is cleaned up");
        ctx.publish(event, EventType::Normal, "NothingToClean", "Cleanup", message).await;
        return Ok(Action::await_change());
    }
    let terminating = match namespace_terminating(ctx, id.namespace()).await {
        Ok(terminating) => terminating,
        Err(error) => {
            // Not known: the usual clean-up, whose patience bounds it.
            tracing::warn!(%error, "cannot tell whether the namespace is terminating");
            false
        }
    };
    if terminating {
        return Ok(cleanup_in_terminating_namespace(event, spec, id, ctx, now).await);
    }
    let attempt = async {
        let draining = close_and_count_unwritten(event, spec, id, ctx, now, Announce::Yes).await?;
        // While coupons wait on the topic the consumer stays up, as for a window that ended
        // now (other events see a deleting `Retain` event the same way: `other_events`).
        let need = match draining {
            None => Need::Nothing,
            Some(_) => Need::Drain,
        };
        scale::scale(event, EventState { namespace: id.namespace(), spec, need }, ctx, now).await?;
        cleanup_backends(event, spec, id, ctx, Announce::Yes).await?;
        Ok::<_, CleanupError>(draining)
    };
    let uid = event.metadata.uid.clone().unwrap_or_else(|| id.to_string());
    let forget_failures = || ctx.cleanup_failing_since.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid);
    let forget_drain = || ctx.drain_progress.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid);
    match attempt.await {
        Ok(None) => {
            forget_failures();
            forget_drain();
            Ok(Action::await_change())
        }
        Ok(Some((unwritten, persisted))) => {
            forget_failures();
            // Waiting as long as the drain moves; patience counts from its last progress.
            let stalled_since = {
                let mut progress = ctx.drain_progress.lock().unwrap_or_else(|e| e.into_inner());
                let entry = progress.entry(uid.clone()).or_insert((persisted, now));
                if persisted > entry.0 {
                    *entry = (persisted, now);
                }
                entry.1
            };
            let stalled_for = Duration::from_millis(now.duration_since(stalled_since).as_millis().max(0) as u64);
            if stalled_for < CLEANUP_PATIENCE {
                return Err(CleanupError::Draining(unwritten));
            }
            forget_drain();
            let message = format!(
                "gave up waiting for {unwritten} issued coupons to be written (no progress for {stalled_for:?}); they stay on topic {} and are written once a consumer of it runs",
                spec.topic
            );
            ctx.publish(event, EventType::Warning, "CleanupAbandoned", "Cleanup", message).await;
            Ok(Action::await_change())
        }
        Err(error) => {
            let since = *ctx.cleanup_failing_since.lock().unwrap_or_else(|e| e.into_inner()).entry(uid.clone()).or_insert(now);
            let failing_for = Duration::from_millis(now.duration_since(since).as_millis().max(0) as u64);
            if failing_for < CLEANUP_PATIENCE {
                return Err(error);
            }
            forget_failures();
            let left = match spec.on_delete {
                OnDelete::Delete => format!("its Redis keys and perhaps topic {}", spec.topic),
                OnDelete::Retain => "its state in Redis, and its sale open if closing it failed".to_owned(),
            };
            let message = format!("gave up cleaning up after failing for {failing_for:?} ({error}); left behind: {left}");
            ctx.publish(event, EventType::Warning, "CleanupAbandoned", "Cleanup", message).await;
            Ok(Action::await_change())
        }
    }
}

/// Whether the event's namespace is being deleted (or already gone).
async fn namespace_terminating(ctx: &Context, namespace: &str) -> Result<bool, kube::Error> {
    let namespaces: kube::Api<Namespace> = kube::Api::all(ctx.client.clone());
    Ok(match namespaces.get_opt(namespace).await? {
        None => true,
        Some(ns) => ns.metadata.deletion_timestamp.is_some() || ns.status.and_then(|s| s.phase).as_deref() == Some("Terminating"),
    })
}

/// The namespace is being deleted: its Deployments, its consumer among them, are going, so
/// waiting for coupons to be written would hold the namespace's deletion for nothing (or for
/// ever, were the operator's own pod in it). One bounded attempt: a `Retain` sale is closed, a
/// `Delete` event's keys removed (its topic only as `lifecycle::topic_deletion` allows); no
/// scaling (the Deployments are being deleted). Then the object is let go, whatever the
/// outcome; what is left is logged (Events cannot be created in a terminating namespace).
async fn cleanup_in_terminating_namespace(
    event: &CouponEvent,
    spec: &CouponEventSpec,
    id: &EventId,
    ctx: &Context,
    now: Timestamp,
) -> Action {
    let attempt = async {
        // (No Kubernetes Events: a terminating namespace refuses them.)
        let unwritten = close_and_count_unwritten(event, spec, id, ctx, now, Announce::No).await?;
        cleanup_backends(event, spec, id, ctx, Announce::No).await?;
        Ok::<_, BackendError>(unwritten)
    };
    match tokio::time::timeout(TERMINATING_CLEANUP_BOUND, attempt).await {
        Ok(Ok(None)) => tracing::info!(event = %id, "namespace terminating: cleaned up once and let go"),
        Ok(Ok(Some((unwritten, _)))) => tracing::warn!(
            event = %id,
            unwritten,
            topic = %spec.topic,
            "namespace terminating: sale closed and let go; the unwritten coupons stay on the topic for a consumer of it"
        ),
        Ok(Err(error)) => tracing::warn!(event = %id, %error, "namespace terminating: clean-up failed; let go, its Redis state stays"),
        Err(_) => tracing::warn!(event = %id, "namespace terminating: clean-up took too long; let go, its Redis state stays"),
    }
    Action::await_change()
}

/// `Retain`: closes the sale (its window ends now), then counts what is still unwritten, in
/// that order so that nothing issued between the two goes uncounted. `Some((unwritten,
/// persisted))` while coupons wait to be written; `None` for `Delete`, for nothing left, or
/// for a state that is not this object's.
async fn close_and_count_unwritten(
    event: &CouponEvent,
    spec: &CouponEventSpec,
    id: &EventId,
    ctx: &Context,
    now: Timestamp,
    announce: Announce,
) -> Result<Option<(i64, i64)>, BackendError> {
    if spec.on_delete != OnDelete::Retain {
        return Ok(None);
    }
    if !ctx.backend.counters(id).await?.is_some_and(|c| owns(&c, event)) {
        return Ok(None);
    }
    if ctx.backend.close_sale(id, spec, now).await? && announce == Announce::Yes {
        ctx.publish(event, EventType::Normal, "SaleClosed", "Cleanup", "the event's window now ends at its deletion".into()).await;
    }
    let after = ctx.backend.counters(id).await?.filter(|c| owns(c, event));
    Ok(after.map(|c| ((c.issued - c.persisted).max(c.unwritten), c.persisted)).filter(|(unwritten, _)| *unwritten > 0))
}

/// `Retain` keeps everything (its sale was closed before); `Delete` removes the Redis keys,
/// and the topic only where `lifecycle::topic_deletion` allows it.
/// Whether a clean-up step tells the user with Kubernetes Events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Announce {
    Yes,
    No,
}

async fn cleanup_backends(
    event: &CouponEvent,
    spec: &CouponEventSpec,
    id: &EventId,
    ctx: &Context,
    announce: Announce,
) -> Result<(), BackendError> {
    let publish = |type_, reason, message: String| async move {
        if announce == Announce::Yes {
            ctx.publish(event, type_, reason, "Cleanup", message).await;
        }
    };
    let counters = ctx.backend.counters(id).await?;
    if counters.as_ref().is_some_and(|c| !owns(c, event)) {
        // This object never got to provision (an earlier one of its name was draining):
        // what Redis and the topic hold is that earlier object's, and stays.
        let message = "Redis holds an earlier CouponEvent's state under this name: left as it is".to_owned();
        publish(EventType::Normal, "NothingToClean", message).await;
        return Ok(());
    }
    if spec.on_delete == OnDelete::Retain {
        // Closed by `close_and_count_unwritten`; the rest stays.
        return Ok(());
    }
    // Read before the keys go: whether every issued coupon reached SQL. Without counters
    // (Redis lost them, or an earlier attempt removed them) the status' last counts decide.
    let (issued, persisted) = match counters {
        Some(c) => (c.issued, c.persisted),
        None => event.status.as_ref().map_or((0, 0), |s| (s.issued, s.persisted)),
    };
    // Users of the topic: the events this operator watches, and every event registered in
    // Redis (other namespaces, events deleted with `Retain` whose records may be unwritten).
    let mut others: Vec<String> = ctx
        .events
        .state()
        .iter()
        .filter(|e| e.spec.topic == spec.topic && !(e.name_any() == event.name_any() && e.namespace() == event.namespace()))
        .map(|e| format!("{}/{}", e.namespace().unwrap_or_default(), e.name_any()))
        .collect();
    others.extend(ctx.backend.other_events_on_topic(&spec.topic, id).await?);
    others.sort();
    others.dedup();
    let topic_use = lifecycle::TopicUse {
        topic: &spec.topic,
        exclusive: spec.exclusive_topic,
        created_by_operator: identity::created_topic(event, &spec.topic),
        others_on_topic: &others,
        issued,
        persisted,
    };
    ctx.backend.delete_redis(id).await?;
    match lifecycle::topic_deletion(&topic_use) {
        Ok(()) => {
            ctx.backend.delete_topic(&spec.topic).await?;
            publish(EventType::Normal, "Deleted", format!("removed Redis keys and topic {}", spec.topic)).await;
        }
        Err(keep) => {
            let message = format!("removed Redis keys; kept topic {}: {keep}", spec.topic);
            publish(EventType::Warning, "TopicKept", message).await;
        }
    }
    Ok(())
}
