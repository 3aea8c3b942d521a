//! The kube-runtime controller: a thin layer that reads the cluster, calls the pure decisions
//! in `schedule` and `status`, and writes back only what differs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coupon_core::event::{EventId, InvalidConfig};
use coupon_core::redis::keyspace::{EventCounters, Retirement};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::Store;
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::backend::{Backend, BackendError};
use crate::crd::{CouponEvent, CouponEventSpec, CouponEventStatus, Phase};
use crate::identity;
use crate::lifecycle;
use crate::metrics::Metrics;
use crate::schedule::{self, DeploymentKey, EventState};
use crate::status::{next_status, not_ready_status, unavailable_status, Observation, Refusal, ScaleReport, SCALABLE_LABEL};

/// Finalizer that makes deletion wait for the clean-up.
pub const FINALIZER: &str = "coupons.fcfs.dev/cleanup";
/// Name under which the operator writes Kubernetes Events.
pub const REPORTER: &str = "coupon-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("object has no namespace")]
    NoNamespace,
    #[error("waiting for {0} issued coupons to be written to SQL before letting the event go")]
    Draining(i64),
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub backend: Backend,
    /// All CouponEvents, kept current by the controller's reflector; needed because several
    /// events may share a Deployment.
    pub events: Store<CouponEvent>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The clock, injectable so tests see fixed instants.
    pub clock: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    /// When this process first failed to clean up an object (by uid): a deletion's patience
    /// counts from there, not from the deletion, so an operator that was down does not give
    /// up at its first attempt.
    pub cleanup_failing_since: Arc<std::sync::Mutex<std::collections::HashMap<String, Timestamp>>>,
    /// Held while a reconcile reads and writes scales: events sharing a Deployment are
    /// reconciled concurrently, and each would otherwise read the old count and write.
    pub scaling: tokio::sync::Mutex<()>,
    /// Deleted `Retain` events waiting for their coupons to be written (by uid): the
    /// `persisted` count last seen and when it last moved.
    pub drain_progress: Arc<std::sync::Mutex<std::collections::HashMap<String, (i64, Timestamp)>>>,
}

impl Context {
    pub fn new(client: Client, backend: Backend, events: Store<CouponEvent>, metrics: Arc<Metrics>) -> Self {
        let recorder = Recorder::new(client.clone(), Reporter { controller: REPORTER.into(), instance: std::env::var("POD_NAME").ok() });
        Self {
            client,
            backend,
            events,
            recorder,
            metrics,
            clock: Arc::new(Timestamp::now),
            cleanup_failing_since: Default::default(),
            scaling: Default::default(),
            drain_progress: Default::default(),
        }
    }

    /// Now, to the second: the API server stores condition times to the second, so a finer
    /// time would never compare equal to what was written.
    fn now(&self) -> Timestamp {
        Timestamp::from_second((self.clock)().as_second()).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    /// Publishes a Kubernetes Event. Events with the same type, reason and action form one
    /// series (kube's recorder), so `action` names what was acted on. Cut to what the API
    /// server takes (a note of 1 kB, a reason and an action of 128 characters: a longer one
    /// is refused whole, and the user would learn nothing).
    pub async fn publish(&self, event: &CouponEvent, type_: EventType, reason: &str, action: &str, note: String) {
        let kube_event = KubeEvent {
            type_,
            reason: truncated(reason, EVENT_FIELD_MAX),
            note: Some(truncated(&note, EVENT_NOTE_MAX_BYTES)),
            action: truncated(action, EVENT_FIELD_MAX),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&kube_event, &event.object_ref(&())).await {
            tracing::warn!(%error, "cannot publish Kubernetes Event");
        }
    }
}

/// The API server's limits on an Event (events.k8s.io/v1): `note` in bytes, `reason` and
/// `action` in characters (ASCII here).
const EVENT_NOTE_MAX_BYTES: usize = 1024;
const EVENT_FIELD_MAX: usize = 128;

/// `text` cut to at most `max` bytes on a character boundary, ending in an ellipsis when cut.
fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    const ELLIPSIS: &str = "…";
    let mut end = max.saturating_sub(ELLIPSIS.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ELLIPSIS}", &text[..end])
}

/// Entry point of one reconcile: the finalizer decides between apply and clean-up.
pub async fn reconcile(event: Arc<CouponEvent>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let namespace = event.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<CouponEvent> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, event, |step| async {
        match step {
            Finalizer::Apply(event) => match apply(&event, &ctx).await {
                Err(Error::Backend(error)) => {
                    report_unavailable(&event, &ctx, &error).await;
                    Err(Error::Backend(error))
                }
                outcome => outcome,
            },
            Finalizer::Cleanup(event) => cleanup(&event, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
    result
}

/// After a failed reconcile: count it and try again soon.
pub fn error_policy(event: Arc<CouponEvent>, error: &Error, ctx: Arc<Context>) -> Action {
    if let Error::Finalizer(inner) = error {
        if let kube::runtime::finalizer::Error::CleanupFailed(Error::Draining(unwritten)) = inner.as_ref() {
            // Not a failure: a deleted `Retain` event waits for its coupons to be written.
            tracing::info!(event = %event.name_any(), unwritten, "deletion waits for the coupons to be written");
            return Action::requeue(Duration::from_secs(5));
        }
    }
    ctx.metrics.failures.inc();
    tracing::warn!(event = %event.name_any(), %error, "reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

/// Redis or Kafka failed: `Ready=False` (`BackendUnavailable`) with the error, written once
/// per outage (the error policy retries the reconcile).
async fn report_unavailable(event: &CouponEvent, ctx: &Context, error: &BackendError) {
    let previous = event.status.as_ref();
    let already = previous.is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == "BackendUnavailable"));
    if already {
        return;
    }
    let status = unavailable_status(ctx.now(), previous, event.metadata.generation, &error.to_string());
    let Some(namespace) = event.namespace() else { return };
    let api: Api<CouponEvent> = Api::namespaced(ctx.client.clone(), &namespace);
    // Only the conditions: the rest of the status in hand may be stale (a `topicCreated`
    // written earlier in this reconcile, say).
    let patch = json!({ "status": { "conditions": status.conditions } });
    if let Err(error) = api.patch_status(&event.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await {
        tracing::warn!(%error, "cannot write the status");
    }
}

fn event_id(event: &CouponEvent) -> Result<EventId, Error> {
    let namespace = event.namespace().ok_or(Error::NoNamespace)?;
    EventId::new(&namespace, &event.name_any()).map_err(|_| Error::NoNamespace)
}

async fn apply(event: &CouponEvent, ctx: &Context) -> Result<Action, Error> {
    let now = ctx.now();
    let id = event_id(event)?;
    let spec = &event.spec;
    let previous = event.status.as_ref();
    let api: Api<CouponEvent> = Api::namespaced(ctx.client.clone(), id.namespace());
    if identity::status_pruned(event) {
        // The status lost the incarnation: the CRD may be outdated. Written again, does it
        // stay? (It does once the new CRD is applied.)
        let probe = json!({ "status": { "incarnation": identity::annotated(event) } });
        let answered = api.patch_status(&event.name_any(), &PatchParams::default(), &Patch::Merge(probe)).await?;
        if answered.status.as_ref().is_none_or(|s| s.incarnation.is_none()) {
            return crd_outdated(event, answered.status.as_ref(), ctx, &api, "incarnation").await;
        }
    }
    // Who this sale is, where pruning cannot drop it, before anything is provisioned.
    let recorded_now = identity::record(&api, event, incarnation(event)).await?;

    let mut topic_created = previous.is_some_and(|s| s.topic_created);
    // The spec in effect before this reconcile. A status written before `lastAcceptedSpec`
    // existed counts the current spec as accepted if it was provisioned for this generation,
    // so an upgrade never turns a live event `Failed`.
    let accepted_before = previous.and_then(|s| s.last_accepted_spec.clone()).or_else(|| {
        previous
            .filter(|s| {
                s.observed_generation == event.metadata.generation
                    && s.conditions.iter().any(|c| c.type_ == "Provisioned" && c.status == "True")
            })
            .map(|_| spec.clone())
    });
    let immutable = accepted_before.as_ref().and_then(|accepted| lifecycle::changed_immutable(accepted, spec));
    let provisioned = match (spec.validate(), immutable) {
        (Err(invalid), _) => Err(Refusal { reason: "InvalidSpec", message: invalid.to_string() }),
        (Ok(()), Some(message)) => Err(Refusal { reason: "ImmutableField", message }),
        (Ok(()), None) => {
            let (created, outcome) = provision(event, spec, &id, ctx).await?;
            topic_created |= created;
            outcome
        }
    };
    if provisioned.is_err() {
        // The accepted spec stays in effect: keep its topic and configuration in place (a
        // topic deleted or a Redis that lost its state meanwhile is put back).
        if let Some(accepted) = accepted_before.as_ref() {
            let (created, _) = provision(event, accepted, &id, ctx).await?;
            topic_created |= created;
        }
    }
    let counters = match ctx.backend.counters(&id).await {
        // An earlier object's state (this one waits for it to drain) is not this one's.
        Ok(counters) => counters.filter(|c| owns(c, event)),
        Err(error) if provisioned.is_err() => {
            tracing::debug!(%error, "no counters for a refused event");
            None
        }
        Err(error) => return Err(error.into()),
    };
    // Redis says who the sale is when its state carries this object's UID: a record that an
    // outdated CRD pruned or a user removed or edited is written back from it.
    let known = counters.as_ref().and_then(|c| keyed_with_uid(c, event)).map(str::to_owned);
    if let Some(uid) = known.as_deref() {
        // (Not again when this reconcile wrote it at its start: the object in hand predates that.)
        if !(recorded_now && incarnation(event) == Some(uid)) {
            identity::record(&api, event, Some(uid)).await?;
        }
    }
    let (issued, persisted, healed) = counters
        .map(|c| (c.issued, c.persisted, c.healed))
        .unwrap_or_else(|| previous.map(|s| (s.issued, s.persisted, s.healed)).unwrap_or_default());
    // A refused edit leaves the last accepted spec in effect (as Redis still holds it): a live
    // sale goes on, and nothing is scaled down because of the refusal.
    let accepted = if provisioned.is_ok() { Some(spec) } else { accepted_before.as_ref() };
    let phase = match accepted {
        Some(accepted) => schedule::phase(now, accepted, issued, persisted),
        None => Phase::Failed,
    };
    // Waiting for an earlier object's coupons to be written: that needs the consumer, as a
    // window that ended now would (the api stays idle: nothing is open).
    let waiting_for_previous = matches!(&provisioned, Err(refusal) if refusal.reason == PREVIOUS_DRAINING);
    let drain_previous = waiting_for_previous.then(|| closed_now(spec, now));
    let this = match &drain_previous {
        Some(closed) => EventState { namespace: id.namespace(), spec: closed, issued: 1, persisted: 0, deleting: false, failed: false },
        None => EventState {
            namespace: id.namespace(),
            spec: accepted.unwrap_or(spec),
            issued,
            persisted,
            deleting: false,
            failed: accepted.is_none(),
        },
    };
    let scaling = scale(event, this, ctx, now).await?;
    let already_missing = previous.is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == "DeploymentNotFound"));
    if !scaling.missing.is_empty() && !already_missing {
        let message =
            format!("Deployment {} not found in {}: the event has no pods to serve it", scaling.missing.join(", "), id.namespace());
        ctx.publish(event, EventType::Warning, "DeploymentNotFound", "Scale", message).await;
    }
    let scaling_reported = |reason: &str| previous.is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Scaling" && c.reason == reason));
    if !scaling.not_opted_in.is_empty() && !scaling_reported("NotOptedIn") {
        let message = format!(
            "Deployment {} lacks the label {SCALABLE_LABEL}=\"true\": the operator does not scale it",
            scaling.not_opted_in.join(", ")
        );
        ctx.publish(event, EventType::Warning, "NotOptedIn", "Scale", message).await;
    }
    if !scaling.autoscaled.is_empty() && !scaling_reported("Autoscaled") {
        let which: Vec<String> = scaling.autoscaled.iter().map(|(d, h)| format!("{d} by HorizontalPodAutoscaler {h}")).collect();
        let message = format!("left to its autoscaler: {}", which.join(", "));
        ctx.publish(event, EventType::Warning, "Autoscaled", "Scale", message).await;
    }

    let observation = Observation {
        phase,
        issued,
        persisted,
        healed,
        topic_created,
        limit: accepted.unwrap_or(spec).limit,
        generation: event.metadata.generation,
        provisioned: provisioned.clone(),
        accepted: accepted.map(CouponEventSpec::with_defaults),
        incarnation: known.or_else(|| incarnation(event).map(str::to_owned)),
        scaling,
        paused: accepted.is_some_and(|a| a.paused),
    };
    // Through serde and back, so that what is compared is what the API server will hold
    // (times to the second, say): a status that differs only in its encoding is not written.
    let status = next_status(now, previous, &observation);
    let status = serde_json::to_value(&status).ok().and_then(|v| serde_json::from_value(v).ok()).unwrap_or(status);
    if previous != Some(&status) {
        let written = serde_json::to_value(&status).unwrap_or_default();
        let answered = api.patch_status(&event.name_any(), &PatchParams::default(), &Patch::Merge(json!({ "status": written }))).await?;
        let dropped = identity::dropped_fields(&written, &serde_json::to_value(&answered.status).unwrap_or_default());
        if !dropped.is_empty() {
            let dropped = dropped.into_iter().collect::<Vec<_>>().join(", ");
            return crd_outdated(event, answered.status.as_ref(), ctx, &api, &dropped).await;
        }
    }
    if let Err(refusal) = &provisioned {
        // Once per reason and generation (the message may carry live counts).
        let already_reported = previous.is_some_and(|s| {
            s.conditions.iter().any(|c| {
                c.type_ == "Provisioned"
                    && c.status == "False"
                    && c.reason == refusal.reason
                    && c.observed_generation == event.metadata.generation
            })
        });
        if !already_reported {
            ctx.publish(event, EventType::Warning, refusal.reason, "Provision", refusal.message.clone()).await;
        }
    }
    let previous_phase = previous.map(|s| s.phase);
    if previous_phase != Some(phase) && phase != Phase::Failed {
        let from = previous_phase.map(|p| format!("{p:?}")).unwrap_or_else(|| "new".into());
        ctx.publish(event, EventType::Normal, "PhaseChanged", "Reconcile", format!("{from} -> {phase:?}")).await;
    }
    if matches!(&provisioned, Err(refusal) if refusal.reason == PREVIOUS_DRAINING) {
        return Ok(Action::requeue(schedule::ACTIVE_REQUEUE));
    }
    Ok(Action::requeue(schedule::requeue_after(now, accepted.unwrap_or(spec), phase)))
}

/// Topic and Redis configuration, every time: both are cheap when in place, and this puts
/// back a topic someone deleted and a configuration lost with Redis. A spec the live state
/// refuses becomes a `Refusal`. Returns whether the topic was created now, and the outcome.
async fn provision(event: &CouponEvent, spec: &CouponEventSpec, id: &EventId, ctx: &Context) -> Result<(bool, Result<(), Refusal>), Error> {
    // The live-state check first, so that a refused spec touches neither Redis nor Kafka.
    // With Redis' counters lost, the last issued count the status saw stands in for them.
    let mut counters = ctx.backend.counters(id).await?;
    // The incarnation to provision with: Redis' own when its state carries this object's UID
    // (the object's record of it may be lost or edited), else the object's.
    let known = counters.as_ref().and_then(|c| keyed_with_uid(c, event)).map(str::to_owned);
    let incarnation_now = known.as_deref().or(incarnation(event));
    if let Some(theirs) = counters.as_ref().filter(|c| !owns(c, event)) {
        // Redis holds the state of an earlier object of this name. Its coupons are its
        // own (their rows carry its incarnation); once it is finished it is removed, and
        // this object starts from zero with its own limit.
        let unwritten = (theirs.issued - theirs.persisted).max(theirs.unwritten);
        let waiting = match ctx.backend.retire(id, theirs.incarnation.as_deref()).await? {
            Retirement::Removed | Retirement::Absent => None,
            Retirement::StillOpen => {
                // No object owns that sale any more (two objects of one name cannot live at
                // once; its finalizer was removed by hand, or its clean-up was given up on):
                // it closes now, so it stops issuing under a name that is this object's.
                ctx.backend.close_sale(id, spec, ctx.now()).await?;
                let message = "closed the sale an earlier CouponEvent of this name had left open".to_owned();
                ctx.publish(event, EventType::Warning, "PreviousEventClosed", "Provision", message).await;
                Some("its sale was still open and is closed now".to_owned())
            }
            Retirement::Recovering => Some("it is being verified against SQL".to_owned()),
            Retirement::Unwritten => Some(format!("{unwritten} of its coupons are not written to SQL yet")),
            Retirement::OtherIncarnation => Some("it changed while being removed".to_owned()),
        };
        if let Some(why) = waiting {
            let message = format!(
                "Redis holds the state of an earlier CouponEvent of this name and {why}; this one is provisioned once it is finished"
            );
            return Ok((false, Err(Refusal { reason: PREVIOUS_DRAINING, message })));
        }
        let message = format!("removed the Redis state of an earlier CouponEvent of this name ({} coupons, all written)", theirs.issued);
        ctx.publish(event, EventType::Normal, "PreviousEventRemoved", "Provision", message).await;
        counters = None;
    }
    let issued = match counters {
        Some(counters) => counters.issued,
        None => event.status.as_ref().map_or(0, |s| s.issued),
    };
    if spec.limit < issued {
        let message = format!("limit {} is below the {issued} coupons already issued", spec.limit);
        return Ok((false, Err(Refusal { reason: "LimitBelowIssued", message })));
    }
    let existed_before = provisioned_before(event);
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
        if !event.status.as_ref().is_some_and(|s| s.topic_created) {
            let api: Api<CouponEvent> = Api::namespaced(ctx.client.clone(), id.namespace());
            // Only the flag: the rest of the status in hand may be stale.
            let patch = json!({ "status": { "topicCreated": true } });
            api.patch_status(&event.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
        }
        ctx.metrics.topic_provisionings.inc();
        if existed_before {
            let message = format!("Kafka topic {} was missing and was created again; records it held are gone", spec.topic);
            ctx.publish(event, EventType::Warning, "TopicRecreated", "CreateTopic", message).await;
        }
    }
    match ctx.backend.provision_redis(id, spec, existed_before, incarnation_now).await {
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
                    InvalidConfig::LimitBelowIssued { .. } => "LimitBelowIssued",
                    InvalidConfig::OtherIncarnation => PREVIOUS_DRAINING,
                    _ => "InvalidSpec",
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

/// Refusal reason while Redis holds an earlier object's undrained state under this name.
const PREVIOUS_DRAINING: &str = "PreviousEventDraining";

/// This object provisioned its event before (the status says so): a missing topic or
/// configuration was lost, not never made. Read from the last accepted spec, which no
/// refusal erases.
fn provisioned_before(event: &CouponEvent) -> bool {
    event
        .status
        .as_ref()
        .is_some_and(|s| s.last_accepted_spec.is_some() || s.conditions.iter().any(|c| c.type_ == "Provisioned" && c.status == "True"))
}

/// The installed CRD drops status fields the operator writes (`dropped`): acting on what it
/// reads back could take this sale for another one, so the operator does nothing more with
/// the event than say so: `Ready=False` (`CrdOutdated`) and one Warning, and it looks again
/// later (a new CRD applied, it goes on by itself).
async fn crd_outdated(
    event: &CouponEvent,
    current: Option<&CouponEventStatus>,
    ctx: &Context,
    api: &Api<CouponEvent>,
    dropped: &str,
) -> Result<Action, Error> {
    let reported = current.is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == identity::CRD_OUTDATED));
    if !reported {
        let message = format!(
            "the installed CouponEvent CRD drops the status field(s) {dropped} the operator writes (Helm does not upgrade CRDs): \
             apply this release's CRD (kubectl apply --server-side -f crds/); until then the operator does not act on this event"
        );
        ctx.publish(event, EventType::Warning, identity::CRD_OUTDATED, "Reconcile", message.clone()).await;
        let status = not_ready_status(ctx.now(), current, event.metadata.generation, identity::CRD_OUTDATED, message);
        // Only the conditions, which every version of the CRD keeps.
        let patch = json!({ "status": { "conditions": status.conditions } });
        api.patch_status(&event.name_any(), &PatchParams::default(), &Patch::Merge(patch)).await?;
    }
    Ok(Action::requeue(Duration::from_secs(30)))
}

/// The incarnation this object's event carries in its key: the annotation written before
/// its first provisioning, trusted only when it names this object's UID or what its status
/// recorded (a user may edit it, or copy it from an exported object; not the status); for an
/// object provisioned before the annotation existed, the one its status recorded (none for
/// an event provisioned before incarnations existed, whose rows are keyed by name alone);
/// else its UID.
fn incarnation(event: &CouponEvent) -> Option<&str> {
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
/// whatever an outdated CRD or an edited annotation left of the record).
fn owns(counters: &EventCounters, event: &CouponEvent) -> bool {
    counters.incarnation.as_deref() == incarnation(event) || keyed_with_uid(counters, event).is_some()
}

/// Redis' incarnation when it is this object's UID: then Redis says who the sale is, whatever
/// the object's own record of it (pruned by an outdated CRD, removed or edited) says.
fn keyed_with_uid<'a>(counters: &'a EventCounters, event: &CouponEvent) -> Option<&'a str> {
    counters.incarnation.as_deref().filter(|i| Some(*i) == event.metadata.uid.as_deref())
}

/// Every other event as the scheduler sees it: its namespace, the spec in effect, its
/// status, whether it is being deleted, and whether it waits for coupons to be written with
/// nothing open (a deleted `Retain` event, a re-used name waiting for the earlier object's),
/// in which case the spec is given a window that ended `now`, which keeps its consumer up.
fn other_events(
    all: &[Arc<CouponEvent>],
    this: &CouponEvent,
    now: Timestamp,
) -> Vec<(String, CouponEventSpec, CouponEventStatus, bool, bool)> {
    all.iter()
        .filter(|e| !(e.name_any() == this.name_any() && e.namespace() == this.namespace()))
        .map(|e| {
            let status = e.status.clone().unwrap_or_default();
            let spec = status.last_accepted_spec.clone().unwrap_or_else(|| e.spec.clone());
            let deleting = e.metadata.deletion_timestamp.is_some();
            let waiting = status.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == PREVIOUS_DRAINING);
            let draining = waiting || (deleting && spec.on_delete == crate::crd::OnDelete::Retain);
            let spec = if draining { closed_now(&spec, now) } else { spec };
            (e.namespace().unwrap_or_default(), spec, status, deleting, draining)
        })
        .collect()
}

/// Scales this event's Deployments to the largest request of the events sharing them; a
/// Deployment no remaining event asks for goes to this event's idle count. Only Deployments
/// that opted in (`SCALABLE_LABEL`) and that no HorizontalPodAutoscaler drives are touched.
/// Returns what was found about them.
async fn scale(event: &CouponEvent, this: EventState<'_>, ctx: &Context, now: Timestamp) -> Result<ScaleReport, Error> {
    let _one_at_a_time = ctx.scaling.lock().await;
    let others = other_events(&ctx.events.state(), event, now);
    let mut states: Vec<EventState<'_>> = others
        .iter()
        .map(|(namespace, spec, status, deleting, draining)| match draining {
            true => EventState { namespace, spec, issued: 1, persisted: 0, deleting: false, failed: false },
            false => EventState {
                namespace,
                spec,
                issued: status.issued,
                persisted: status.persisted,
                deleting: *deleting,
                failed: status.last_accepted_spec.is_none() && (status.phase == Phase::Failed || spec.validate().is_err()),
            },
        })
        .collect();
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

/// `spec` with its window ending `now`: what the scheduler is given for coupons that still
/// need the consumer while nothing is open (a deleted `Retain` event, an earlier object of a
/// re-used name).
fn closed_now(spec: &CouponEventSpec, now: Timestamp) -> CouponEventSpec {
    let mut closed = spec.clone();
    closed.schedule.start = Time(closed.schedule.start.0.min(now - SignedDuration::from_secs(1)));
    closed.schedule.end = Time(now);
    closed
}

/// How long a deletion keeps trying to reach Redis and Kafka before it lets the object go
/// (with a Warning naming what was left behind), so a deletion always ends.
pub const CLEANUP_PATIENCE: Duration = Duration::from_secs(120);

async fn cleanup(event: &CouponEvent, ctx: &Context) -> Result<Action, Error> {
    let now = ctx.now();
    let id = event_id(event)?;
    // What is in effect is the last accepted spec, not an edit that was refused.
    let spec = event.status.as_ref().and_then(|s| s.last_accepted_spec.as_ref()).unwrap_or(&event.spec);
    let closed = closed_now(spec, now);
    let attempt = async {
        let draining = close_and_count_unwritten(event, spec, &id, ctx, now).await?;
        // While coupons wait on the topic the consumer stays up, as for a window that ended
        // now (other events see a deleting `Retain` event the same way: `other_events`).
        let this = match draining {
            None => EventState { namespace: id.namespace(), spec, issued: 0, persisted: 0, deleting: true, failed: false },
            Some(_) => EventState { namespace: id.namespace(), spec: &closed, issued: 1, persisted: 0, deleting: false, failed: false },
        };
        scale(event, this, ctx, now).await?;
        cleanup_backends(event, spec, &id, ctx).await?;
        Ok::<_, Error>(draining)
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
                return Err(Error::Draining(unwritten));
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
                crate::crd::OnDelete::Delete => format!("its Redis keys and perhaps topic {}", spec.topic),
                crate::crd::OnDelete::Retain => "its state in Redis, and its sale open if closing it failed".to_owned(),
            };
            let message = format!("gave up cleaning up after failing for {failing_for:?} ({error}); left behind: {left}");
            ctx.publish(event, EventType::Warning, "CleanupAbandoned", "Cleanup", message).await;
            Ok(Action::await_change())
        }
    }
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
) -> Result<Option<(i64, i64)>, Error> {
    if spec.on_delete != crate::crd::OnDelete::Retain {
        return Ok(None);
    }
    if !ctx.backend.counters(id).await?.is_some_and(|c| owns(&c, event)) {
        return Ok(None);
    }
    if ctx.backend.close_sale(id, spec, now).await? {
        ctx.publish(event, EventType::Normal, "SaleClosed", "Cleanup", "the event's window now ends at its deletion".into()).await;
    }
    let after = ctx.backend.counters(id).await?.filter(|c| owns(c, event));
    Ok(after.map(|c| ((c.issued - c.persisted).max(c.unwritten), c.persisted)).filter(|(unwritten, _)| *unwritten > 0))
}

/// `Retain` keeps everything (its sale was closed before); `Delete` removes the Redis keys,
/// and the topic only where `lifecycle::topic_deletion` allows it.
async fn cleanup_backends(event: &CouponEvent, spec: &CouponEventSpec, id: &EventId, ctx: &Context) -> Result<(), Error> {
    let counters = ctx.backend.counters(id).await?;
    if counters.as_ref().is_some_and(|c| !owns(c, event)) {
        // This object never got to provision (an earlier one of its name was draining):
        // what Redis and the topic hold is that earlier object's, and stays.
        let message = "Redis holds an earlier CouponEvent's state under this name: left as it is".to_owned();
        ctx.publish(event, EventType::Normal, "NothingToClean", "Cleanup", message).await;
        return Ok(());
    }
    if spec.on_delete == crate::crd::OnDelete::Retain {
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
    let created = event.status.as_ref().is_some_and(|s| s.topic_created);
    ctx.backend.delete_redis(id).await?;
    match lifecycle::topic_deletion(created, &others, issued, persisted) {
        Ok(()) => {
            ctx.backend.delete_topic(&spec.topic).await?;
            ctx.publish(event, EventType::Normal, "Deleted", "Cleanup", format!("removed Redis keys and topic {}", spec.topic)).await;
        }
        Err(keep) => {
            let message = format!("removed Redis keys; kept topic {}: {keep}", spec.topic);
            ctx.publish(event, EventType::Warning, "TopicKept", "Cleanup", message).await;
        }
    }
    Ok(())
}

/// What the controller's watch needs besides the requests reconcile makes:
/// `(api group, resource, verbs)`. The chart's RBAC rules are checked against both.
pub const WATCH_PERMISSIONS: (&str, &str, &[&str]) = ("coupons.fcfs.dev", "couponevents", &["list", "watch"]);

/// What of an event asks for a reconcile when it changes: its spec (generation), its
/// deletion, its finalizers. Status is left out on purpose.
pub fn reconcile_trigger(event: &CouponEvent) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    event.metadata.generation.hash(&mut hasher);
    event.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    event.finalizers().hash(&mut hasher);
    Some(hasher.finish())
}

/// Runs the controller until SIGTERM, for one namespace or (`None`) all of them.
/// `ready` turns true once the cache of CouponEvents has synced (the operator's readiness:
/// before that, a missing CRD or an RBAC refusal keeps it unready and the logs say why).
pub async fn run(
    client: Client,
    backend: Backend,
    metrics: Arc<Metrics>,
    namespace: Option<String>,
    ready: Arc<std::sync::atomic::AtomicBool>,
) {
    let events: Api<CouponEvent> = match &namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    // Every change lands in the store (other events' state is read from it), but only a
    // change that asks for a reconcile triggers one: not the operator's own status writes,
    // which would otherwise start the next reconcile at once, over and over while counters
    // move. Clock-driven looks come from each reconcile's requeue.
    let (store, writer) = kube::runtime::reflector::store();
    // Ready once the first list has landed in the store: told by the watcher's own InitDone,
    // not by awaiting the store, whose ready signal wakes only the last of several waiters
    // (the controller waits on it too; an await here was never woken on a real API server,
    // and the operator's Pod never turned Ready).
    let triggers = watcher(events, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .inspect(move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) && !ready.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::info!("CouponEvent cache synced; ready");
            }
        })
        .applied_objects()
        .predicate_filter(reconcile_trigger, Default::default());
    let controller = Controller::for_stream(triggers, store.clone());
    let ctx = Arc::new(Context::new(client, backend, store, metrics));
    controller
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                // Watch errors too (RBAC refusals, a missing CRD): never silent.
                tracing::warn!(%error, "controller error");
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::truncated;

    #[test]
    fn event_fields_are_cut_on_a_character_boundary_within_the_limit() {
        assert_eq!(truncated("short", 10), "short");
        let cut = truncated(&"é".repeat(700), 1024);
        assert!(cut.len() <= 1024 && cut.ends_with('…'), "{} bytes", cut.len());
        assert_eq!(truncated(&"a".repeat(200), 128).len(), 128);
    }
}
