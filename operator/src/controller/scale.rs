//! Scaling: an event's Deployments set to the largest request of the events sharing them,
//! and the Warnings about Deployments the operator does not (or cannot) scale.
//!
//! Several events may name one Deployment, so a scale is never decided from one event
//! alone: every other event is read from the controller's cache as the scheduler sees it
//! (`schedule::EventState`), and `schedule::desired_replicas` decides for all of them. The
//! Deployments and autoscalers are read from watched caches (`caches`); the decision and the
//! write for one Deployment happen under that Deployment's own lock, so events sharing it
//! are serialized while hundreds of others scale in parallel. Kubernetes Events are published
//! after every lock is released.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;
use tokio::time::Instant;

use super::{autoscaler, Context};
use crate::conditions::{ConditionType, Reason};
use crate::crd::{CouponEvent, CouponEventSpec, OnDelete, Phase};
use crate::schedule::{self, DeploymentKey, EventState, Need};
use crate::status::{ScaleReport, SCALABLE_LABEL};
use k8s_openapi::api::apps::v1::Deployment;

/// How long after its own write the operator waits before taking a different replica count
/// in its cache for someone else's doing (the cache catching up takes milliseconds).
const SETTLE: Duration = Duration::from_secs(2);
/// Set back this many times in a row, a Deployment is contended: someone else keeps
/// resetting it.
const CONTENDED_AFTER: u32 = 2;
/// How long a contended Deployment is left alone before the operator writes it once more.
const CONTENDED_BACKOFF: Duration = Duration::from_secs(60);
/// How long before the start the api must have its replicas available.
pub const READY_BEFORE_START: SignedDuration = SignedDuration::from_secs(60);

/// What the operator remembers of its own scale writes, per Deployment: to serialize the
/// events that share one, and to tell its own writes from someone else's.
#[derive(Default)]
pub struct Scaler {
    locks: Mutex<HashMap<DeploymentKey, Arc<tokio::sync::Mutex<()>>>>,
    writes: Mutex<HashMap<DeploymentKey, Written>>,
}

#[derive(Clone, Copy, Debug)]
struct Written {
    replicas: i32,
    at: Instant,
    /// Times in a row the replicas were found set back after this write.
    overridden: u32,
    /// Not written again before this instant (contended).
    quiet_until: Option<Instant>,
}

/// What to do with a Deployment whose replicas are `current` when `target` is wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    Nothing,
    Write,
    /// The operator's own write is on its way into the cache.
    InFlight,
    /// Someone else keeps setting it back: left alone for a while.
    Contended,
}

impl Scaler {
    fn lock_of(&self, key: &DeploymentKey) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_default().clone()
    }

    /// What to do, from what this process last wrote (recorded by `wrote` once a write
    /// succeeded: a failed write is not someone else's doing).
    fn decide(&self, key: &DeploymentKey, current: i32, target: i32, now: Instant) -> Decision {
        let mut writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(written) = writes.get_mut(key).filter(|w| w.replicas == target) else {
            if current == target {
                writes.remove(key);
                return Decision::Nothing;
            }
            return Decision::Write;
        };
        if current == target {
            written.overridden = 0;
            written.quiet_until = None;
            return Decision::Nothing;
        }
        if now < written.at + SETTLE {
            return Decision::InFlight;
        }
        match written.quiet_until {
            Some(until) if now < until => return Decision::Contended,
            // Left alone long enough: written once more (set back again, contended again).
            Some(_) => {
                written.quiet_until = None;
                return Decision::Write;
            }
            None => {}
        }
        // Set back since this process wrote it.
        written.overridden += 1;
        if written.overridden >= CONTENDED_AFTER {
            written.quiet_until = Some(now + CONTENDED_BACKOFF);
            return Decision::Contended;
        }
        Decision::Write
    }

    /// Records a scale write that succeeded.
    fn wrote(&self, key: &DeploymentKey, replicas: i32, now: Instant) {
        let mut writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        match writes.get_mut(key).filter(|w| w.replicas == replicas) {
            Some(written) => written.at = now,
            None => {
                writes.insert(key.clone(), Written { replicas, at: now, overridden: 0, quiet_until: None });
            }
        }
    }
}

/// The longest a scale write (or an autoscaler's) may take while its Deployment's lock is
/// held: one hung request must not hold every event sharing the Deployment.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

fn timed_out() -> kube::Error {
    kube::Error::Service(format!("no answer from the API server within {WRITE_TIMEOUT:?}").into())
}

/// A Kubernetes Event to publish once the locks are released.
struct Note {
    type_: EventType,
    reason: &'static str,
    action: String,
    text: String,
}

/// Scales this event's Deployments to the largest request of the events sharing them; a
/// Deployment no remaining event asks for goes to this event's idle count. Only Deployments
/// that opted in (`SCALABLE_LABEL`) are touched; one under a HorizontalPodAutoscaler gets the
/// autoscaler's minimum raised for the window instead. Returns what was found about them.
pub(super) async fn scale(event: &CouponEvent, this: EventState<'_>, ctx: &Context, now: Timestamp) -> Result<ScaleReport, kube::Error> {
    let namespace = this.namespace.to_owned();
    let spec = this.spec;
    let api_window = this.need;
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
    let mut report = ScaleReport::default();
    let mut notes = Vec::new();
    for name in names {
        let key = DeploymentKey { namespace: namespace.clone(), name: name.to_owned() };
        let lock = ctx.scaler.lock_of(&key);
        let _one_writer = lock.lock().await;
        // Decided under the lock, from the events as they are now.
        let others = other_events(&ctx.events.state(), event);
        let mut states: Vec<EventState<'_>> =
            others.iter().map(|(namespace, spec, need)| EventState { namespace, spec, need: *need }).collect();
        states.push(EventState { namespace: &namespace, spec, need: api_window });
        let target = schedule::desired_replicas(now, &states).get(&key).copied().unwrap_or_else(|| idle_of(name));
        let Some(deployment) = ctx.caches.deployment(&namespace, name) else {
            // Reported by the caller (the `Ready` condition and one Warning).
            report.missing.push(name.to_owned());
            continue;
        };
        if deployment.labels().get(SCALABLE_LABEL).map(String::as_str) != Some("true") {
            report.not_opted_in.push(name.to_owned());
            continue;
        }
        if let Some(hpa) = ctx.caches.autoscaler_of(&namespace, name) {
            let hold = autoscaler::hold_minimum(ctx, &hpa, target, idle_of(name));
            if let Some(note) = tokio::time::timeout(WRITE_TIMEOUT, hold).await.map_err(|_| timed_out())?? {
                notes.push(Note { type_: EventType::Normal, reason: note.reason, action: format!("Scale {name}"), text: note.text });
            }
            report.autoscaled.push((name.to_owned(), hpa.name_any()));
        } else {
            let current = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            match ctx.scaler.decide(&key, current, target, Instant::now()) {
                Decision::Nothing => {}
                // Pods asked for just now cannot be available yet: judged at the next look.
                Decision::InFlight => continue,
                Decision::Contended => report.contended.push(name.to_owned()),
                Decision::Write => {
                    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
                    let patch = Patch::Merge(json!({ "spec": { "replicas": target } }));
                    let params = PatchParams::default();
                    let write = deployments.patch_scale(name, &params, &patch);
                    tokio::time::timeout(WRITE_TIMEOUT, write).await.map_err(|_| timed_out())??;
                    ctx.scaler.wrote(&key, target, Instant::now());
                    ctx.metrics.scalings.inc();
                    let text = format!("Deployment {name} scaled from {current} to {target}");
                    notes.push(Note { type_: EventType::Normal, reason: "Scaled", action: format!("Scale {name}"), text });
                    continue;
                }
            }
        }
        if name == spec.api.deployment {
            if let Some(short) = short_of_replicas(now, this_phase(now, spec, api_window), spec, &deployment, target) {
                report.not_ready.push((name.to_owned(), short.0, short.1));
            }
        }
    }
    for note in notes {
        ctx.publish(event, note.type_, note.reason, &note.action, note.text).await;
    }
    Ok(report)
}

/// The phase this event's window is in, for the readiness check (`None` when no window of
/// it is in effect).
fn this_phase(now: Timestamp, spec: &CouponEventSpec, need: Need) -> Option<Phase> {
    match need {
        Need::Window { issued, persisted } => Some(schedule::phase(now, spec, issued, persisted)),
        _ => None,
    }
}

/// `(available, wanted)` when the api Deployment is short of the replicas its window wants,
/// from a minute before the start on: pods not Ready by then will not be when the crowd comes.
fn short_of_replicas(
    now: Timestamp,
    phase: Option<Phase>,
    spec: &CouponEventSpec,
    deployment: &Deployment,
    target: i32,
) -> Option<(i32, i32)> {
    let active = matches!(phase, Some(Phase::WarmingUp | Phase::Open | Phase::SoldOut));
    let window = spec.schedule.window_at(now)?;
    if !active || now < window.start - READY_BEFORE_START || target <= spec.api_idle_replicas() {
        return None;
    }
    let available = deployment.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0);
    (available < target).then_some((available, target))
}

/// One Warning per kind of Deployment trouble, when the status does not say so already (the
/// `Ready` and `Scaling` conditions carry it from then on).
pub(super) async fn warn_unscaled(event: &CouponEvent, ctx: &Context, namespace: &str, scaling: &ScaleReport) {
    let previous = event.status.as_ref();
    let already_missing = previous.is_some_and(|s| s.has_condition(ConditionType::Ready, Reason::DeploymentNotFound));
    if !scaling.missing.is_empty() && !already_missing {
        let message = format!("Deployment {} not found in {namespace}: the event has no pods to serve it", scaling.missing.join(", "));
        ctx.publish(event, EventType::Warning, Reason::DeploymentNotFound.as_str(), "Scale", message).await;
    }
    let scaling_reported = |reason: Reason| previous.is_some_and(|s| s.has_condition(ConditionType::Scaling, reason));
    if !scaling.not_opted_in.is_empty() && !scaling_reported(Reason::NotOptedIn) {
        let message = format!(
            "Deployment {} lacks the label {SCALABLE_LABEL}=\"true\": the operator does not scale it",
            scaling.not_opted_in.join(", ")
        );
        ctx.publish(event, EventType::Warning, Reason::NotOptedIn.as_str(), "Scale", message).await;
    }
    if !scaling.contended.is_empty() && !scaling_reported(Reason::Contended) {
        let message = format!(
            "someone else keeps setting the replicas of {} back; the operator stops writing them for a while. With Argo CD, ignore /spec/replicas (ignoreDifferences) on Deployments it scales",
            scaling.contended.join(", ")
        );
        ctx.publish(event, EventType::Warning, Reason::Contended.as_str(), "Scale", message).await;
    }
    if !scaling.not_ready.is_empty() && !scaling_reported(Reason::NotReady) {
        let which: Vec<String> =
            scaling.not_ready.iter().map(|(d, available, wanted)| format!("{d} has {available} of {wanted} available")).collect();
        let message = format!("the api is short of its replicas at the start: {}", which.join(", "));
        ctx.publish(event, EventType::Warning, Reason::NotReady.as_str(), "Scale", message).await;
    }
}

/// Every other event as the scheduler sees it: its namespace, the spec in effect, and what
/// it needs. One that waits for coupons to be written with nothing open (a deleted `Retain`
/// event, a re-used name waiting for the earlier object's) needs its consumer kept up
/// (`Need::Drain`); a deleting one nothing; one whose spec was never accepted its idle count.
fn other_events(all: &[Arc<CouponEvent>], this: &CouponEvent) -> Vec<(String, CouponEventSpec, Need)> {
    all.iter()
        .filter(|e| !(e.name_any() == this.name_any() && e.namespace() == this.namespace()))
        .map(|e| {
            let status = e.status.clone().unwrap_or_default();
            let spec = status.last_accepted_spec.clone().unwrap_or_else(|| e.spec.clone());
            let deleting = e.metadata.deletion_timestamp.is_some();
            let waiting = status.has_condition(ConditionType::Ready, Reason::PreviousEventDraining);
            let need = if waiting || (deleting && spec.on_delete == OnDelete::Retain) {
                Need::Drain
            } else if deleting {
                Need::Nothing
            } else if status.last_accepted_spec.is_none() && (status.phase == Phase::Failed || spec.validate().is_err()) {
                Need::Idle
            } else {
                Need::Window { issued: status.issued, persisted: status.persisted }
            };
            (e.namespace().unwrap_or_default(), spec, need)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use super::*;
    use crate::crd::{CouponEventStatus, Schedule, Workload};

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn event(name: &str, status: Option<CouponEventStatus>, deleting: bool, on_delete: OnDelete) -> Arc<CouponEvent> {
        let spec = CouponEventSpec {
            event_id: None,
            exclusive_topic: false,
            limit: 100,
            per_user_limit: 1,
            topic: "coupon_create".into(),
            partitions: 3,
            shards: 1,
            schedule: Schedule {
                start: Some(Time(t("2026-11-27T10:00:00Z"))),
                end: Some(Time(t("2026-11-27T10:30:00Z"))),
                recurrence: None,
                warm_up: None,
                cool_down: None,
            },
            api: Workload { deployment: "coupon-api".into(), replicas: 10, idle_replicas: Some(0) },
            consumer: Workload { deployment: "coupon-consumer".into(), replicas: 2, idle_replicas: Some(0) },
            on_delete,
            paused: false,
            ttl_after_finished: None,
        };
        let mut event = CouponEvent::new(name, spec);
        event.metadata.namespace = Some("shop".into());
        event.metadata.deletion_timestamp = deleting.then(|| Time(t("2026-11-27T10:05:00Z")));
        event.status = status;
        Arc::new(event)
    }

    /// Accepted (with `onDelete: on_delete`), and `Ready` with `ready_reason`.
    fn accepted(issued: i64, persisted: i64, ready_reason: &str, on_delete: OnDelete) -> CouponEventStatus {
        let spec = event("x", None, false, on_delete).spec.clone();
        let ready = Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: ready_reason.into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: Time(t("2026-11-27T10:00:00Z")),
        };
        CouponEventStatus { issued, persisted, last_accepted_spec: Some(spec), conditions: vec![ready], ..Default::default() }
    }

    #[test]
    fn other_events_say_what_each_needs() {
        let this = event("this", None, false, OnDelete::Retain);
        let never_accepted = CouponEventStatus { phase: Phase::Failed, ..Default::default() };
        let all = vec![
            this.clone(),
            event("live", Some(accepted(7, 3, "Provisioned", OnDelete::Retain)), false, OnDelete::Retain),
            event("retained", Some(accepted(7, 3, "Provisioned", OnDelete::Retain)), true, OnDelete::Retain),
            event("removed", Some(accepted(7, 3, "Provisioned", OnDelete::Delete)), true, OnDelete::Delete),
            // What decides is the accepted spec, not an edit of it.
            event("edited", Some(accepted(7, 3, "Provisioned", OnDelete::Retain)), true, OnDelete::Delete),
            event("waiting", Some(accepted(0, 0, "PreviousEventDraining", OnDelete::Delete)), false, OnDelete::Delete),
            event("refused", Some(never_accepted), false, OnDelete::Retain),
        ];
        let others = other_events(&all, &this);
        assert!(others.iter().all(|(namespace, _, _)| namespace == "shop"));
        let needs: Vec<Need> = others.into_iter().map(|(_, _, need)| need).collect();
        // `this` left out; the others in order.
        assert_eq!(needs, vec![Need::Window { issued: 7, persisted: 3 }, Need::Drain, Need::Nothing, Need::Drain, Need::Drain, Need::Idle]);
    }
}
