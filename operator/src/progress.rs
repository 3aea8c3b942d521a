//! The two conditions GitOps tools wait on, `Reconciling` and `Stalled`, derived from the
//! `Ready` and `Scaling` conditions the operator already writes.
//!
//! Flux, kpt and cli-utils' `apply --wait` read a custom resource through kstatus: a
//! `status.observedGeneration` other than `metadata.generation` is InProgress, a
//! `Reconciling=True` condition is InProgress, `Stalled=True` is Failed, and anything else is
//! Current. Without these two, a refused spec or an unreachable Redis would read as Current:
//! a pipeline would call a sale ready that the operator never took. The Argo CD health check
//! in `docs/gitops/couponevent-health.lua` reads the same conditions. (The CRD defaults
//! `status.observedGeneration` to 0, so an event the operator has not looked at yet is
//! InProgress too: see `crd::CouponEventStatus`.)

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;

use crate::conditions::{status_str, ConditionType, Reason};
use crate::crd::CouponEventStatus;
use crate::status::condition;

/// Where the operator stands with the spec it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Progress {
    /// The spec is in effect (a paused sale too: `Ready=True`, reason `Paused`).
    Done,
    /// Still working; expected to get there without anyone acting. Reason and message of
    /// the condition that says why.
    Reconciling(String, String),
    /// Cannot get there until someone acts.
    Stalled(String, String),
}

/// `Ready=False` reasons the operator gets past on its own: it retries a backend, waits for
/// an earlier object's coupons to be written, and watches for a missing Deployment (a GitOps
/// sync may create it after the event).
const RETRIED: [Reason; 3] = [Reason::BackendUnavailable, Reason::PreviousEventDraining, Reason::DeploymentNotFound];

fn progress(conditions: &[Condition]) -> Progress {
    let find = |type_: ConditionType| conditions.iter().find(|c| c.type_ == type_.as_str());
    let why = |c: &Condition| (c.reason.clone(), c.message.clone());
    let Some(ready) = find(ConditionType::Ready) else {
        return Progress::Reconciling("NotReported".into(), "the operator has not reported on this generation yet".into());
    };
    if ready.status == status_str(false) {
        let (reason, message) = why(ready);
        return if RETRIED.iter().any(|r| r.as_str() == reason) {
            Progress::Reconciling(reason, message)
        } else {
            // A refusal (InvalidSpec, ImmutableField, LimitBelowIssued, EventIdInUse,
            // PartitionCapExceeded), an outdated CRD, or a reason this version does not know.
            Progress::Stalled(reason, message)
        };
    }
    match find(ConditionType::Scaling).filter(|s| s.status == status_str(false)) {
        Some(scaling) if scaling.reason == Reason::Contended.as_str() => {
            let (reason, message) = why(scaling);
            Progress::Stalled(reason, message)
        }
        Some(scaling) if scaling.reason == Reason::NotReady.as_str() => {
            let (reason, message) = why(scaling);
            Progress::Reconciling(reason, message)
        }
        _ => Progress::Done,
    }
}

/// Sets `Reconciling` and `Stalled` from the other conditions of `status`; `before` are the
/// conditions it was computed from (a transition time moves only when a status does).
pub(crate) fn with_progress(status: &mut CouponEventStatus, generation: Option<i64>, now: Timestamp, before: &[Condition]) {
    let (reconciling, stalled) = match progress(&status.conditions) {
        Progress::Done => (None, None),
        Progress::Reconciling(reason, message) => (Some((reason, message)), None),
        Progress::Stalled(reason, message) => (None, Some((reason, message))),
    };
    // True with the cause's reason and message, else False with the quiet ones.
    let write = |type_, cause: Option<(String, String)>, quiet: Reason, quiet_message: &str| match cause {
        Some((reason, message)) => condition(type_, true, &reason, message, generation, now, before),
        None => condition(type_, false, quiet.as_str(), quiet_message.into(), generation, now, before),
    };
    let reconciling =
        write(ConditionType::Reconciling, reconciling, Reason::Reconciled, "nothing left to do for this generation but follow the sale");
    let stalled = write(ConditionType::Stalled, stalled, Reason::NotStalled, "nothing waits for a person");
    let ours = [ConditionType::Reconciling.as_str(), ConditionType::Stalled.as_str()];
    status.conditions.retain(|c| !ours.contains(&c.type_.as_str()));
    status.conditions.extend([reconciling, stalled]);
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn condition(type_: ConditionType, status: bool, reason: Reason) -> Condition {
        Condition {
            type_: type_.as_str().into(),
            status: status_str(status).into(),
            reason: reason.as_str().into(),
            message: format!("{} says so", reason.as_str()),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        }
    }

    fn progress_of(ready: (bool, Reason), scaling: (bool, Reason)) -> Progress {
        progress(&[condition(ConditionType::Scaling, scaling.0, scaling.1), condition(ConditionType::Ready, ready.0, ready.1)])
    }

    #[test]
    fn a_refusal_is_stalled_a_retried_wait_is_reconciling_and_a_pause_is_done() {
        let scaled = (true, Reason::Scaled);
        assert_eq!(progress_of((true, Reason::Provisioned), scaled), Progress::Done);
        assert_eq!(progress_of((true, Reason::Paused), scaled), Progress::Done, "a paused sale is the spec in effect");
        for refusal in [
            Reason::InvalidSpec,
            Reason::ImmutableField,
            Reason::LimitBelowIssued,
            Reason::EventIdInUse,
            Reason::PartitionCapExceeded,
            Reason::CrdOutdated,
        ] {
            let expected = Progress::Stalled(refusal.as_str().into(), format!("{} says so", refusal.as_str()));
            assert_eq!(progress_of((false, refusal), scaled), expected);
        }
        for retried in RETRIED {
            assert!(matches!(progress_of((false, retried), scaled), Progress::Reconciling(r, _) if r == retried.as_str()));
        }
    }

    #[test]
    fn scaling_fought_over_is_stalled_and_pods_short_at_the_start_are_reconciling() {
        let ready = (true, Reason::Provisioned);
        assert!(matches!(progress_of(ready, (false, Reason::Contended)), Progress::Stalled(r, _) if r == "Contended"));
        assert!(matches!(progress_of(ready, (false, Reason::NotReady)), Progress::Reconciling(r, _) if r == "NotReady"));
        // Left alone on purpose: scaled by someone else.
        assert_eq!(progress_of(ready, (false, Reason::NotOptedIn)), Progress::Done);
        assert_eq!(progress_of(ready, (false, Reason::Autoscaled)), Progress::Done);
    }

    #[test]
    fn both_conditions_are_always_written_once() {
        let mut status =
            CouponEventStatus { conditions: vec![condition(ConditionType::Ready, false, Reason::InvalidSpec)], ..Default::default() };
        let now = Timestamp::UNIX_EPOCH;
        with_progress(&mut status, Some(1), now, &[]);
        with_progress(&mut status, Some(1), now, &[]);
        let of = |type_: ConditionType| status.conditions_of(type_).map(|c| (c.status.clone(), c.reason.clone())).collect::<Vec<_>>();
        assert_eq!(of(ConditionType::Stalled), [("True".to_string(), "InvalidSpec".to_string())]);
        assert_eq!(of(ConditionType::Reconciling), [("False".to_string(), "Reconciled".to_string())]);
    }
}
