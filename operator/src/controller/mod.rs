//! The kube-runtime controller: a thin layer that reads the cluster, calls the pure decisions
//! in `schedule` and `status`, and writes back only what differs.
//!
//! A reconcile of a live event runs its steps in order, one module each: `admit` (may the
//! operator act, who the sale is, is the spec acceptable), `provision` (topic and Redis),
//! `scale` (the Deployments the events share), `report` (the status, through its one
//! writer, and the Events telling what changed); a deleted one runs `cleanup`. This module
//! holds what they share and the order they run in.

mod admit;
mod autoscaler;
pub mod caches;
mod cleanup;
pub mod namespaces;
mod occurrence;
mod provision;
mod quota;
mod release;
mod report;
mod scale;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coupon_core::event::recurrence::Occurrence;
use coupon_core::event::EventId;
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::Store;
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};

use crate::backend::{Backend, BackendError};
use crate::conditions::{ConditionType, Reason};
use crate::crd::{CouponEvent, CouponEventSpec, Phase};
use crate::metrics::Metrics;
use crate::schedule::{self, EventState, Need};
use crate::status::{Observation, ScaleReport};
pub use caches::ClusterCaches;
use cleanup::CleanupError;
pub use cleanup::CLEANUP_PATIENCE;
pub use namespaces::NamespaceSelection;
use provision::ProvisionError;

/// Finalizer that makes deletion wait for the clean-up.
pub const FINALIZER: &str = "coupons.fcfs.dev/cleanup";
/// How often an event outside the namespace selection is looked at again by the clock.
const LEFT_ALONE_REQUEUE: Duration = Duration::from_secs(600);
/// Name under which the operator writes Kubernetes Events.
pub const REPORTER: &str = "coupon-operator";

/// Every way a reconcile fails. The steps' own errors are flattened into it, so that what
/// the policy acts on does not depend on which step failed: a backend failure anywhere makes
/// the event unavailable (`reconcile`), a drain is waited for (`error_policy`).
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

impl From<release::ReleaseError> for Error {
    fn from(error: release::ReleaseError) -> Self {
        match error {
            release::ReleaseError::Kube(error) => Self::Kube(error),
            release::ReleaseError::Backend(error) => Self::Backend(error),
        }
    }
}

impl From<ProvisionError> for Error {
    fn from(error: ProvisionError) -> Self {
        match error {
            ProvisionError::Kube(error) => Self::Kube(error),
            ProvisionError::Backend(error) => Self::Backend(error),
        }
    }
}

impl From<CleanupError> for Error {
    fn from(error: CleanupError) -> Self {
        match error {
            CleanupError::Kube(error) => Self::Kube(error),
            CleanupError::Backend(error) => Self::Backend(error),
            CleanupError::Draining(unwritten) => Self::Draining(unwritten),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub backend: Arc<Backend>,
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
    /// The Deployments and autoscalers, from watched caches.
    pub caches: ClusterCaches,
    /// A lock per Deployment (events sharing one are reconciled concurrently, and each would
    /// otherwise read the old count and write) and the operator's own scale writes.
    pub scaler: scale::Scaler,
    /// Deleted `Retain` events waiting for their coupons to be written (by uid): the
    /// `persisted` count last seen and when it last moved.
    pub drain_progress: Arc<std::sync::Mutex<std::collections::HashMap<String, (i64, Timestamp)>>>,
    /// At most this many partitions over the topics it creates (`quota`); `None`: no cap.
    pub max_partitions_total: Option<i64>,
    /// The namespaces whose events it acts on (`namespaces`).
    pub namespaces: NamespaceSelection,
}

impl Context {
    pub fn new(client: Client, backend: Arc<Backend>, events: Store<CouponEvent>, caches: ClusterCaches, metrics: Arc<Metrics>) -> Self {
        let recorder = Recorder::new(client.clone(), Reporter { controller: REPORTER.into(), instance: std::env::var("POD_NAME").ok() });
        Self {
            client,
            backend,
            events,
            recorder,
            metrics,
            clock: Arc::new(Timestamp::now),
            cleanup_failing_since: Default::default(),
            caches,
            scaler: Default::default(),
            drain_progress: Default::default(),
            max_partitions_total: None,
            namespaces: NamespaceSelection::Every,
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
    if !ctx.namespaces.admits(&namespace) {
        // Not even its finalizer or its deletion: see `namespaces`.
        if event.metadata.deletion_timestamp.is_some() && event.finalizers().iter().any(|f| f == FINALIZER) {
            tracing::warn!(
                event = %event.name_any(),
                %namespace,
                "deletion waits: its namespace no longer matches NAMESPACE_SELECTOR; put the labels back to let the operator clean up"
            );
        } else {
            tracing::info!(event = %event.name_any(), %namespace, "left alone: its namespace does not match NAMESPACE_SELECTOR");
        }
        // Not this operator's to report on any more.
        ctx.metrics.set_open_unready(&report::object_label(&event), false, false);
        // Looked at again when its namespace enters the selection; the long requeue is for a
        // change the namespace watch missed.
        return Ok(Action::requeue(LEFT_ALONE_REQUEUE));
    }
    let api: Api<CouponEvent> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, event, |step| async {
        match step {
            Finalizer::Apply(event) => {
                let mut scaled = None;
                match apply(&event, &ctx, &mut scaled).await {
                    Err(Error::Backend(error)) => {
                        report::report_unavailable(&event, &ctx, &error, scaled.as_ref()).await;
                        Err(Error::Backend(error))
                    }
                    outcome => outcome,
                }
            }
            Finalizer::Cleanup(event) => {
                let id = event_id(&event)?;
                Ok(cleanup::cleanup(&event, &id, &ctx).await?)
            }
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

/// The event's key in Redis and SQL: `<namespace>/<eventId>`, or `<namespace>/<name>`.
fn event_id(event: &CouponEvent) -> Result<EventId, Error> {
    let namespace = event.namespace().ok_or(Error::NoNamespace)?;
    EventId::new(&namespace, &admit::key_name(event)).map_err(|_| Error::NoNamespace)
}

/// A live event: admitted, scaled, provisioned, reported, in that order. Scaling comes
/// before provisioning because the replicas an event needs follow from the spec in effect
/// and the clock alone: a broker or a Redis out of reach at the warm-up boundary must not
/// leave the sale without its pods. It is looked at again after provisioning, which may have
/// learnt more (counters, an earlier object still draining). `scaled` keeps what scaling
/// found, for the status written if a backend then fails.
async fn apply(event: &CouponEvent, ctx: &Context, scaled: &mut Option<ScaleReport>) -> Result<Action, Error> {
    let now = ctx.now();
    let id = event_id(event)?;
    let spec = &event.spec;
    let previous = event.status.as_ref();
    let api: Api<CouponEvent> = Api::namespaced(ctx.client.clone(), id.namespace());
    let admission = match admit::admit(event, ctx, &api).await? {
        ControlFlow::Continue(admission) => admission,
        ControlFlow::Break(action) => return Ok(action),
    };
    // What is known before Redis and Kafka are asked: the spec in effect (the one last
    // accepted; for an event never accepted, this one unless admission refused it: an edit
    // takes effect only once provisioned, which may still refuse it) and the counts the
    // status last saw.
    let in_effect = match (&admission.accepted_before, &admission.refused) {
        (Some(accepted), _) => Some(accepted),
        (None, None) => Some(spec),
        (None, Some(_)) => None,
    };
    let waited_before = previous.is_some_and(|s| s.has_condition(ConditionType::Ready, Reason::PreviousEventDraining));
    let (last_issued, last_persisted) = previous.map(|s| (s.issued, s.persisted)).unwrap_or_default();
    let first_look = event_state(id.namespace(), spec, in_effect, waited_before, last_issued, last_persisted);
    *scaled = Some(scale::scale(event, first_look.clone(), ctx, now).await?);

    let (created_now, provisioned) = provision::provision_admitted(event, &admission, &id, ctx).await?;
    let topic_created = previous.is_some_and(|s| s.topic_created) || created_now;
    let counters = match ctx.backend.counters(&id).await {
        // An earlier object's state (this one waits for it to drain) is not this one's.
        Ok(counters) => counters.filter(|c| admit::owns(c, event)),
        Err(error) if provisioned.is_err() => {
            tracing::debug!(%error, "no counters for a refused event");
            None
        }
        Err(error) => return Err(error.into()),
    };
    let known = admit::record_from_redis(&api, event, &admission, counters.as_ref()).await?;
    let (issued, persisted, healed) = counters
        .as_ref()
        .map(|c| (c.issued, c.persisted, c.healed))
        .unwrap_or_else(|| previous.map(|s| (s.issued, s.persisted, s.healed)).unwrap_or_default());
    // A refused edit leaves the last accepted spec in effect (as Redis still holds it): a live
    // sale goes on, and nothing is scaled down because of the refusal.
    let held_by_another = matches!(&provisioned, Err(refusal) if refusal.reason == Reason::EventIdInUse);
    let accepted = match (&provisioned, held_by_another) {
        (Ok(()), _) => Some(spec),
        (Err(_), true) => None,
        (Err(_), false) => admission.accepted_before.as_ref(),
    };
    // A recurring event's occurrence: the one Redis holds (while the next waits for it to be
    // written, the counts are still its own), else the one in effect.
    let occurrence = accepted.filter(|a| a.schedule.recurrence.is_some()).and_then(|a| {
        let held = counters.as_ref().and_then(|c| {
            let start = admit::occurrence_of_ours(c, event).and_then(|s| Timestamp::from_second(s).ok())?;
            Some(Occurrence { start, end: coupon_core::time::timestamp_from_millis_clamped(c.end_ms) })
        });
        held.or_else(|| a.schedule.window_at(now))
    });
    let next_occurrence = accepted.zip(occurrence).and_then(|(a, o)| a.schedule.after(&o));
    let phase = match accepted {
        Some(accepted) if accepted.schedule.recurrence.is_some() => schedule::phase_in(now, accepted, occurrence, issued, persisted),
        Some(accepted) => schedule::phase(now, accepted, issued, persisted),
        None => Phase::Failed,
    };
    // Waiting for an earlier object's coupons to be written: that needs the consumer, with
    // the api idle (nothing is open).
    let waiting_for_previous = matches!(&provisioned, Err(refusal) if refusal.reason == Reason::PreviousEventDraining);
    // A finished sale's Redis state goes after `ttlAfterFinished` (the counts stay in the
    // status, the rows in SQL); not while this event waits on another (a skipped occurrence
    // must not be provisioned once the one it would overlap is gone).
    let release = match (accepted, held_by_another || waiting_for_previous) {
        (Some(accepted), false) => release::release_if_due(event, accepted, &id, ctx, counters.as_ref(), phase).await?,
        _ => release::Release::Nothing,
    };
    let this = event_state(id.namespace(), spec, accepted, waiting_for_previous, issued, persisted);
    let scaling = match scaled.take() {
        Some(report) if this == first_look => report,
        _ => scale::scale(event, this, ctx, now).await?,
    };
    scale::warn_unscaled(event, ctx, id.namespace(), &scaling).await;

    let observation = Observation {
        phase,
        issued,
        persisted,
        healed,
        topic_created,
        limit: accepted.unwrap_or(spec).limit,
        generation: event.metadata.generation,
        provisioned,
        accepted: accepted.map(CouponEventSpec::with_defaults),
        incarnation: known.or_else(|| admit::incarnation(event).map(str::to_owned)),
        scaling,
        paused: accepted.is_some_and(|a| a.paused),
        occurrence,
        next_occurrence,
    };
    if let Some(halt) = report::report(event, ctx, &api, now, &observation).await? {
        return Ok(halt);
    }
    // Waiting on another object (an earlier one's coupons, or the holder of the same key):
    // looked at again soon, since nothing about this object will change to trigger it.
    if waiting_for_previous || held_by_another {
        return Ok(Action::requeue(schedule::ACTIVE_REQUEUE));
    }
    let requeue = schedule::requeue_after(now, accepted.unwrap_or(spec), phase);
    Ok(Action::requeue(match release {
        release::Release::Due(at) => requeue.min(Duration::from_millis(at.duration_since(now).as_millis().max(100) as u64)),
        release::Release::Nothing | release::Release::Released => requeue,
    }))
}

/// What this event asks of its Deployments: drain an earlier object's coupons, its window
/// (the spec in effect and its counts), or idle replicas when nothing is in effect.
fn event_state<'a>(
    namespace: &'a str,
    spec: &'a CouponEventSpec,
    in_effect: Option<&'a CouponEventSpec>,
    waiting_for_previous: bool,
    issued: i64,
    persisted: i64,
) -> EventState<'a> {
    match (waiting_for_previous, in_effect) {
        (true, _) => EventState { namespace, spec, need: Need::Drain },
        (false, Some(in_effect)) => EventState { namespace, spec: in_effect, need: Need::Window { issued, persisted } },
        (false, None) => EventState { namespace, spec, need: Need::Idle },
    }
}

/// What the controller's watch needs besides the requests reconcile makes:
/// `(api group, resource, verbs)`. The chart's RBAC rules are checked against both.
pub const WATCH_PERMISSIONS: (&str, &str, &[&str]) = ("coupons.fcfs.dev", "couponevents", &["list", "watch"]);

/// Every call besides those a plain reconcile makes, `(api group, resource, verbs)`: the
/// watches (`run`, `caches`), re-reading an event after a 409 (`report`), and the autoscalers'
/// minimum held up (`autoscaler`). The chart's RBAC rules are checked against these and the
/// reconcile's own calls.
pub const PERMISSIONS_BEYOND_RECONCILE: &[(&str, &str, &[&str])] = &[
    WATCH_PERMISSIONS,
    ("coupons.fcfs.dev", "couponevents", &["get"]),
    ("apps", "deployments", &["list", "watch"]),
    ("autoscaling", "horizontalpodautoscalers", &["list", "watch", "patch"]),
    ("keda.sh", "scaledobjects", &["get", "patch"]),
];

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

/// What the controller acts on and how much at once, from the operator's configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The CouponEvents of this namespace only; `None`: of every namespace.
    pub namespace: Option<String>,
    /// With every namespace: only those whose labels match this selector (`namespaces`).
    pub namespace_selector: Option<String>,
    /// CouponEvents reconciled at once.
    pub concurrency: u16,
    /// At most this many partitions over the topics it creates (`quota`); `None`: no cap.
    pub max_partitions_total: Option<i64>,
}

impl Settings {
    /// The events of one namespace (`None`: every namespace), the other settings at their
    /// defaults.
    pub fn watching(namespace: Option<String>) -> Self {
        Self { namespace, namespace_selector: None, concurrency: 16, max_partitions_total: None }
    }
}

/// Runs the controller until SIGTERM, as `settings` say.
/// `ready` turns true once the cache of CouponEvents has synced (the operator's readiness:
/// before that, a missing CRD or an RBAC refusal keeps it unready and the logs say why).
pub async fn run(
    client: Client,
    backend: Arc<Backend>,
    metrics: Arc<Metrics>,
    ready: Arc<std::sync::atomic::AtomicBool>,
    settings: Settings,
) {
    let Settings { namespace, namespace_selector, concurrency, max_partitions_total } = settings;
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
    let (caches, keep_caches_current) = ClusterCaches::watch(client.clone(), namespace.as_deref());
    // Stopped with the controller, also when leadership is lost and this future is dropped.
    let _caches_task = AbortOnDrop(tokio::spawn(keep_caches_current));
    // Before the first reconcile: a Deployment not in a cache that has not listed yet is not
    // missing from the cluster.
    while tokio::time::timeout(Duration::from_secs(30), caches.synced()).await.is_err() {
        tracing::warn!(
            "the caches of Deployments and HorizontalPodAutoscalers have not synced yet; nothing is reconciled until they do (RBAC?)"
        );
    }
    let mut controller =
        Controller::for_stream(triggers, store.clone()).with_config(kube::runtime::controller::Config::default().concurrency(concurrency));
    let namespaces = match namespace_selector {
        Some(selector) => {
            let (selection, changes, listed) = NamespaceSelection::watch(client.clone(), &selector);
            let events = store.clone();
            controller =
                controller.watches_stream(changes, move |namespace| namespaces::events_in(&events, &namespace)).reconcile_all_on(listed);
            selection
        }
        None => NamespaceSelection::Every,
    };
    // A process that stops leading keeps serving /metrics as a standby: its per-event
    // series would otherwise stay at their last value for ever.
    let _forget_events = ForgetEventsOnDrop(metrics.clone());
    let ctx = Arc::new(Context { max_partitions_total, namespaces, ..Context::new(client, backend, store, caches, metrics) });
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

/// Clears the per-event metrics when the controller stops (leadership lost, shutdown).
struct ForgetEventsOnDrop(Arc<Metrics>);

impl Drop for ForgetEventsOnDrop {
    fn drop(&mut self) {
        self.0.event_open_unready.clear();
    }
}

/// A spawned task stopped when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
