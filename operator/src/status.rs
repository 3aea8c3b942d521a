//! The status the operator writes, computed from what it observed. Pure, so a reconcile of
//! an unchanged object produces an identical status and therefore no write.

use coupon_core::event::recurrence::Occurrence;
use coupon_core::time::format_duration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::conditions::{status_str, ConditionType, Reason};
use crate::crd::{CouponEventSpec, CouponEventStatus, Phase};
use crate::progress::with_progress;

/// Why provisioning did not happen, as a condition reason and a message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
}

/// What one reconcile saw.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub phase: Phase,
    pub issued: i64,
    pub persisted: i64,
    /// Issued coupons never written and given back by the consumer's healing.
    pub healed: i64,
    /// The operator created the topic (now or earlier).
    pub topic_created: bool,
    pub limit: i64,
    pub generation: Option<i64>,
    /// `Err` when the spec was refused.
    pub provisioned: Result<(), Refusal>,
    /// The spec in effect: this one if accepted, else the last accepted one (`None`: the
    /// event was never accepted, and its phase is `Failed`).
    pub accepted: Option<CouponEventSpec>,
    /// The incarnation the event's records carry (kept with the accepted spec).
    pub incarnation: Option<String>,
    /// What scaling found about the event's Deployments.
    pub scaling: ScaleReport,
    /// The accepted spec has the sale paused.
    pub paused: bool,
    /// A recurring event's occurrence in effect and the one after it.
    pub occurrence: Option<Occurrence>,
    pub next_occurrence: Option<Occurrence>,
}

/// Label a Deployment carries to let the operator scale it: without it a CouponEvent could
/// scale any Deployment of its namespace.
pub const SCALABLE_LABEL: &str = "coupons.fcfs.dev/scalable";

/// What the scaling step found about the Deployments an event names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScaleReport {
    /// Named but not there: nothing serves the event.
    pub missing: Vec<String>,
    /// Without `SCALABLE_LABEL: "true"`: left alone.
    pub not_opted_in: Vec<String>,
    /// `(deployment, autoscaler)`: the target of a HorizontalPodAutoscaler (KEDA's
    /// ScaledObjects create one), whose minimum the operator holds up for the window instead
    /// of fighting over the replicas.
    pub autoscaled: Vec<(String, String)>,
    /// Someone else keeps setting these Deployments' replicas back (a GitOps tool's
    /// self-heal): the operator stopped writing them for a while.
    pub contended: Vec<String>,
    /// `(deployment, available, wanted)`: the api short of available replicas a minute
    /// before the start or later.
    pub not_ready: Vec<(String, i32, i32)>,
}

impl ScaleReport {
    /// The `Scaling` condition: whether the operator scales every Deployment it names.
    pub(crate) fn condition(&self) -> (bool, Reason, String) {
        if !self.contended.is_empty() {
            let names = self.contended.join(", ");
            return (
                false,
                Reason::Contended,
                format!(
                    "someone else keeps setting the replicas of {names} back (a GitOps tool's self-heal?): tell it to ignore /spec/replicas"
                ),
            );
        }
        if !self.not_opted_in.is_empty() {
            let names = self.not_opted_in.join(", ");
            return (false, Reason::NotOptedIn, format!("{names} lack the label {SCALABLE_LABEL}=\"true\": their scale is left alone"));
        }
        if !self.missing.is_empty() {
            return (false, Reason::DeploymentNotFound, format!("Deployment {} not found", self.missing.join(", ")));
        }
        if !self.not_ready.is_empty() {
            let which: Vec<String> =
                self.not_ready.iter().map(|(d, available, wanted)| format!("{d} has {available} of {wanted}")).collect();
            return (false, Reason::NotReady, format!("short of available replicas at the start: {}", which.join(", ")));
        }
        if !self.autoscaled.is_empty() {
            let which: Vec<String> = self.autoscaled.iter().map(|(d, h)| format!("{d} (HorizontalPodAutoscaler {h})")).collect();
            return (true, Reason::Scaled, format!("the autoscalers' minimum is held up for the window: {}", which.join(", ")));
        }
        (true, Reason::Scaled, "the operator scales the event's Deployments".into())
    }
}

/// A condition of `type_`; `reason` is a `Reason`'s string, or the phase's name for `Open`.
pub(crate) fn condition(
    type_: ConditionType,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
    previous: &[Condition],
) -> Condition {
    let status = status_str(status).to_owned();
    let type_ = type_.as_str();
    // The transition time moves only when the status does.
    let last_transition_time =
        previous.iter().find(|c| c.type_ == type_ && c.status == status).map(|c| c.last_transition_time.clone()).unwrap_or(Time(now));
    Condition { type_: type_.to_owned(), status, reason: reason.to_owned(), message, observed_generation: generation, last_transition_time }
}

/// The status to write after an observation.
pub fn next_status(now: Timestamp, previous: Option<&CouponEventStatus>, observed: &Observation) -> CouponEventStatus {
    let before = previous.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let g = observed.generation;
    let (issued, persisted, limit) = (observed.issued, observed.persisted, observed.limit);
    let provisioned = match &observed.provisioned {
        Ok(()) => condition(
            ConditionType::Provisioned,
            true,
            Reason::Provisioned.as_str(),
            "Redis configuration and Kafka topic are in place".into(),
            g,
            now,
            before,
        ),
        Err(refusal) => condition(ConditionType::Provisioned, false, refusal.reason.as_str(), refusal.message.clone(), g, now, before),
    };
    let phase_name = format!("{:?}", observed.phase);
    let open = condition(ConditionType::Open, observed.phase == Phase::Open, &phase_name, format!("phase {phase_name}"), g, now, before);
    let sold_out = observed.provisioned.is_ok() && issued >= limit;
    let sold_out = condition(
        ConditionType::SoldOut,
        sold_out,
        if sold_out { Reason::LimitReached } else { Reason::CouponsLeft }.as_str(),
        format!("{issued} of {limit} coupons issued"),
        g,
        now,
        before,
    );
    let drained = persisted >= issued;
    let drained = condition(
        ConditionType::Drained,
        drained,
        if drained { Reason::AllWritten } else { Reason::Writing }.as_str(),
        format!("{persisted} of {issued} issued coupons written to SQL"),
        g,
        now,
        before,
    );
    let (scaled, scaling_reason, scaling_message) = observed.scaling.condition();
    let scaling = condition(ConditionType::Scaling, scaled, scaling_reason.as_str(), scaling_message, g, now, before);
    let ready = match &observed.provisioned {
        Ok(()) if !observed.scaling.missing.is_empty() => condition(
            ConditionType::Ready,
            false,
            Reason::DeploymentNotFound.as_str(),
            format!("Deployment {} not found: the event has no pods to serve it", observed.scaling.missing.join(", ")),
            g,
            now,
            before,
        ),
        // Ready: the spec asks for the pause and it is in effect (kstatus reads Ready=False as
        // work in progress, and a pipeline that pauses a sale would wait for ever).
        Ok(()) if observed.paused => condition(
            ConditionType::Ready,
            true,
            Reason::Paused.as_str(),
            "the spec is in effect: the sale is paused, applies answer 403 paused".into(),
            g,
            now,
            before,
        ),
        Ok(()) => condition(ConditionType::Ready, true, Reason::Provisioned.as_str(), "the spec is in effect".into(), g, now, before),
        Err(refusal) => {
            let effect = if observed.accepted.is_some() { "the last accepted spec stays in effect" } else { "nothing is in effect" };
            condition(ConditionType::Ready, false, refusal.reason.as_str(), format!("{}; {effect}", refusal.message), g, now, before)
        }
    };
    // Whether the warm-up leaves new pods time to turn Ready: under two minutes it may not on
    // a busy cluster (image pulls, node scale-up). Admission refuses under 30 s.
    let warm_up = observed.accepted.as_ref().and_then(|a| a.schedule.warm_up().ok());
    let warm_up = match warm_up {
        Some(warm_up) if warm_up < crate::crd::SHORT_WARM_UP => condition(
            ConditionType::WarmUp,
            false,
            Reason::ShortWarmUp.as_str(),
            format!(
                "warmUp {} is under {}: on a busy cluster new pods may not be Ready by the start",
                format_duration(warm_up),
                format_duration(crate::crd::SHORT_WARM_UP)
            ),
            g,
            now,
            before,
        ),
        _ => condition(
            ConditionType::WarmUp,
            true,
            Reason::WarmUpSufficient.as_str(),
            "the warm-up leaves time for new pods".into(),
            g,
            now,
            before,
        ),
    };
    let mut status = CouponEventStatus {
        phase: observed.phase,
        issued,
        persisted,
        healed: observed.healed,
        // Once true, never taken back by a write computed from an older view.
        topic_created: observed.topic_created || previous.is_some_and(|p| p.topic_created),
        observed_generation: g,
        conditions: vec![provisioned, open, sold_out, drained, scaling, ready, warm_up],
        last_accepted_spec: observed.accepted.clone(),
        incarnation: observed.accepted.as_ref().and(observed.incarnation.clone()),
        // The last occurrence stays once all are over.
        occurrence: observed.occurrence.map(Into::into).or_else(|| {
            let recurring = observed.accepted.as_ref().is_some_and(|a| a.schedule.recurrence.is_some());
            previous.filter(|_| recurring).and_then(|p| p.occurrence.clone())
        }),
        next_occurrence: observed.next_occurrence.map(Into::into),
    };
    with_progress(&mut status, g, now, before);
    status
}

/// The status while Redis or Kafka cannot be reached: everything as last seen, `Ready=False`
/// with reason `BackendUnavailable` saying what failed, and `Scaling` as this reconcile's
/// scaling (done before the backends were asked) found it.
pub fn unavailable_status(
    now: Timestamp,
    previous: Option<&CouponEventStatus>,
    generation: Option<i64>,
    error: &str,
    scaling: Option<&ScaleReport>,
) -> CouponEventStatus {
    let mut status = not_ready_status(now, previous, generation, Reason::BackendUnavailable, format!("cannot reach a backend: {error}"));
    if let Some(scaling) = scaling {
        let before = status.conditions.clone();
        let (scaled, reason, message) = scaling.condition();
        let scaling = condition(ConditionType::Scaling, scaled, reason.as_str(), message, generation, now, &before);
        status.conditions.retain(|c| c.type_ != ConditionType::Scaling.as_str());
        status.conditions.push(scaling);
        with_progress(&mut status, generation, now, &before);
    }
    status
}

/// Everything as last seen, and `Ready=False` with `reason` and `message`.
pub fn not_ready_status(
    now: Timestamp,
    previous: Option<&CouponEventStatus>,
    generation: Option<i64>,
    reason: Reason,
    message: String,
) -> CouponEventStatus {
    let mut status = previous.cloned().unwrap_or_default();
    let before = status.conditions.clone();
    let ready = condition(ConditionType::Ready, false, reason.as_str(), message, generation, now, &before);
    status.conditions.retain(|c| c.type_ != ConditionType::Ready.as_str());
    status.conditions.push(ready);
    with_progress(&mut status, generation, now, &before);
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observation(phase: Phase, issued: i64, persisted: i64) -> Observation {
        Observation {
            phase,
            issued,
            persisted,
            healed: 0,
            topic_created: false,
            limit: 100,
            generation: Some(3),
            provisioned: Ok(()),
            accepted: None,
            incarnation: None,
            scaling: ScaleReport::default(),
            paused: false,
            occurrence: None,
            next_occurrence: None,
        }
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn find<'a>(status: &'a CouponEventStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn same_observation_gives_the_same_status() {
        let first = next_status(t("2026-11-27T10:00:00Z"), None, &observation(Phase::Open, 10, 5));
        let again = next_status(t("2026-11-27T10:00:05Z"), Some(&first), &observation(Phase::Open, 10, 5));
        assert_eq!(first, again, "no transition, no change: the reconcile writes nothing");
    }

    #[test]
    fn transition_time_moves_only_when_a_condition_flips() {
        let open = next_status(t("2026-11-27T10:00:00Z"), None, &observation(Phase::Open, 10, 5));
        let sold = next_status(t("2026-11-27T10:01:00Z"), Some(&open), &observation(Phase::SoldOut, 100, 50));
        assert_eq!(find(&sold, "SoldOut").status, "True");
        assert_eq!(find(&sold, "SoldOut").last_transition_time, Time(t("2026-11-27T10:01:00Z")));
        assert_eq!(find(&sold, "Open").status, "False");
        assert_eq!(find(&sold, "Provisioned").last_transition_time, Time(t("2026-11-27T10:00:00Z")));
        assert_eq!(find(&sold, "Drained").status, "False");
        assert_eq!(find(&sold, "Drained").message, "50 of 100 issued coupons written to SQL");
        assert_eq!(sold.phase, Phase::SoldOut);
        assert_eq!(sold.observed_generation, Some(3));
    }

    #[test]
    fn a_refused_spec_is_failed_with_its_reason() {
        let mut failed = observation(Phase::Failed, 0, 0);
        failed.provisioned = Err(Refusal { reason: Reason::InvalidSpec, message: "end before start".into() });
        let status = next_status(t("2026-11-27T10:00:00Z"), None, &failed);
        let provisioned = find(&status, "Provisioned");
        assert_eq!(
            (provisioned.status.as_str(), provisioned.reason.as_str(), provisioned.message.as_str()),
            ("False", "InvalidSpec", "end before start")
        );
        assert_eq!(find(&status, "SoldOut").status, "False");
        assert_eq!(status.phase, Phase::Failed);
    }

    #[test]
    fn ready_and_scaling_name_what_is_wrong() {
        let now = t("2026-11-27T10:00:00Z");
        let ready = |o: &Observation| {
            let status = next_status(now, None, o);
            let (r, s) = (find(&status, "Ready").clone(), find(&status, "Scaling").clone());
            (r.status, r.reason, s.status, s.reason)
        };
        let mut o = observation(Phase::Open, 1, 0);
        assert_eq!(ready(&o), ("True".into(), "Provisioned".into(), "True".into(), "Scaled".into()));
        o.paused = true;
        assert_eq!((ready(&o).0, ready(&o).1), ("True".into(), "Paused".into()), "the pause asked for is in effect");
        o.paused = false;
        o.scaling.not_opted_in = vec!["coupon-api".into()];
        assert_eq!(ready(&o), ("True".into(), "Provisioned".into(), "False".into(), "NotOptedIn".into()));
        o.scaling.contended = vec!["coupon-api".into()];
        assert_eq!(ready(&o).3, "Contended");
        o.scaling = Default::default();
        o.scaling.autoscaled = vec![("coupon-api".into(), "keda-hpa-api".into())];
        assert_eq!(ready(&o).3, "Scaled", "an autoscaler's minimum held up is scaling too");
        o.scaling.not_ready = vec![("coupon-api".into(), 2, 10)];
        assert_eq!(ready(&o).3, "NotReady");
        o.scaling.missing = vec!["coupon-consumer".into()];
        assert_eq!(ready(&o).1, "DeploymentNotFound");

        let before = next_status(now, None, &observation(Phase::Open, 7, 3));
        let down = unavailable_status(t("2026-11-27T10:00:09Z"), Some(&before), Some(3), "Redis: connection refused", None);
        assert_eq!((find(&down, "Ready").status.as_str(), find(&down, "Ready").reason.as_str()), ("False", "BackendUnavailable"));
        assert_eq!((down.issued, down.persisted, down.phase), (7, 3, Phase::Open), "the last counts stay");
        assert_eq!(find(&down, "Ready").last_transition_time, Time(t("2026-11-27T10:00:09Z")));
    }
}
