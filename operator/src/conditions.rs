//! The condition types and reasons the operator writes, as types rather than strings.
//!
//! The strings are a public contract (users, scripts and the README read them), and the
//! operator also reads them back to decide what it already reported. Spelled out once here,
//! a typo is a compile error instead of a comparison that silently never matches.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::crd::CouponEventStatus;

/// The conditions a CouponEvent's status carries, in the order they are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    /// Redis configuration and Kafka topic are in place for the spec (or why not).
    Provisioned,
    /// The sale accepts applies; its reason is the phase's name.
    Open,
    /// Every coupon is issued.
    SoldOut,
    /// Every issued coupon is written to SQL.
    Drained,
    /// Whether the operator scales every Deployment the event names.
    Scaling,
    /// The spec is in effect and served.
    Ready,
    /// Whether the warm-up gives new pods time to turn Ready before the start.
    WarmUp,
    /// kstatus's "abnormal-true" condition: the operator is still working towards the spec
    /// and expects to get there on its own (a backend coming back, a Deployment appearing).
    Reconciling,
    /// kstatus's "abnormal-true" condition: the operator cannot get to the spec without
    /// someone acting (a refused spec, an outdated CRD, a Deployment's replicas fought over).
    Stalled,
}

impl ConditionType {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Provisioned => "Provisioned",
            Self::Open => "Open",
            Self::SoldOut => "SoldOut",
            Self::Drained => "Drained",
            Self::Scaling => "Scaling",
            Self::Ready => "Ready",
            Self::WarmUp => "WarmUp",
            Self::Reconciling => "Reconciling",
            Self::Stalled => "Stalled",
        }
    }
}

/// The reasons of the conditions (besides `Open`'s, which is the phase's name). Refusal
/// reasons are also the reasons of the Warning Events that announce them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `Provisioned=True`, `Ready=True`.
    Provisioned,
    /// `SoldOut=True`.
    LimitReached,
    /// `SoldOut=False`.
    CouponsLeft,
    /// `Drained=True`.
    AllWritten,
    /// `Drained=False`.
    Writing,
    /// `Scaling=True`.
    Scaled,
    /// `Scaling=False`: a HorizontalPodAutoscaler drives a Deployment.
    Autoscaled,
    /// `Scaling=False`: a Deployment lacks the opt-in label.
    NotOptedIn,
    /// `Scaling=False`, `Ready=False`: a Deployment is missing.
    DeploymentNotFound,
    /// `Ready=True`: the sale is paused, as the spec asks.
    Paused,
    /// `Ready=False`: Redis or Kafka cannot be reached.
    BackendUnavailable,
    /// `Ready=False`: the installed CRD drops status fields the operator writes.
    CrdOutdated,
    /// Refusal: the spec is invalid.
    InvalidSpec,
    /// Refusal: an edit changes a field fixed once accepted.
    ImmutableField,
    /// Refusal: the limit is below the coupons already issued.
    LimitBelowIssued,
    /// Refusal: Redis holds an earlier object's undrained state under this name.
    PreviousEventDraining,
    /// Refusal: another live CouponEvent of the namespace holds the same key (its `eventId`, or its name).
    EventIdInUse,
    /// Refusal: creating the event's topic would take the partitions of the operator's
    /// topics past `MAX_PARTITIONS_TOTAL`.
    PartitionCapExceeded,
    /// `Scaling=False`: a Deployment is short of available replicas at (or a minute before) the start.
    NotReady,
    /// `Scaling=False`: someone else keeps resetting a Deployment's replicas (a GitOps tool's self-heal).
    Contended,
    /// `WarmUp=False`: under two minutes, pods may not be Ready by the start on a busy cluster.
    ShortWarmUp,
    /// `WarmUp=True`.
    WarmUpSufficient,
    /// `Reconciling=False`: nothing left to do for this generation but watch the sale.
    Reconciled,
    /// `Stalled=False`: nothing needs a person.
    NotStalled,
}

impl Reason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Provisioned => "Provisioned",
            Self::LimitReached => "LimitReached",
            Self::CouponsLeft => "CouponsLeft",
            Self::AllWritten => "AllWritten",
            Self::Writing => "Writing",
            Self::Scaled => "Scaled",
            Self::Autoscaled => "Autoscaled",
            Self::NotOptedIn => "NotOptedIn",
            Self::DeploymentNotFound => "DeploymentNotFound",
            Self::Paused => "Paused",
            Self::BackendUnavailable => "BackendUnavailable",
            Self::CrdOutdated => "CrdOutdated",
            Self::InvalidSpec => "InvalidSpec",
            Self::ImmutableField => "ImmutableField",
            Self::LimitBelowIssued => "LimitBelowIssued",
            Self::PreviousEventDraining => "PreviousEventDraining",
            Self::EventIdInUse => "EventIdInUse",
            Self::PartitionCapExceeded => "PartitionCapExceeded",
            Self::NotReady => "NotReady",
            Self::Contended => "Contended",
            Self::ShortWarmUp => "ShortWarmUp",
            Self::WarmUpSufficient => "WarmUpSufficient",
            Self::Reconciled => "Reconciled",
            Self::NotStalled => "NotStalled",
        }
    }
}

/// A condition's `status` as the API writes it.
pub const fn status_str(status: bool) -> &'static str {
    if status {
        "True"
    } else {
        "False"
    }
}

impl CouponEventStatus {
    /// The conditions of `type_` (the operator writes one of each).
    pub fn conditions_of(&self, type_: ConditionType) -> impl Iterator<Item = &Condition> {
        self.conditions.iter().filter(move |c| c.type_ == type_.as_str())
    }

    /// Whether a condition of `type_` has `reason`, whatever its status.
    pub fn has_condition(&self, type_: ConditionType, reason: Reason) -> bool {
        self.conditions_of(type_).any(|c| c.reason == reason.as_str())
    }

    /// Whether a condition of `type_` is `True`.
    pub fn is_true(&self, type_: ConditionType) -> bool {
        self.conditions_of(type_).any(|c| c.status == status_str(true))
    }

    /// Whether a condition of `type_` says `status` for `reason`, observed at `generation`.
    pub fn has_condition_at(&self, type_: ConditionType, status: bool, reason: Reason, generation: Option<i64>) -> bool {
        self.conditions_of(type_)
            .any(|c| c.status == status_str(status) && c.reason == reason.as_str() && c.observed_generation == generation)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    /// The strings are a contract: README and docs list them, users' scripts match them.
    #[test]
    fn strings_are_the_documented_ones() {
        let types = [
            ConditionType::Provisioned,
            ConditionType::Open,
            ConditionType::SoldOut,
            ConditionType::Drained,
            ConditionType::Scaling,
            ConditionType::Ready,
            ConditionType::WarmUp,
            ConditionType::Reconciling,
            ConditionType::Stalled,
        ];
        assert_eq!(
            types.map(ConditionType::as_str),
            ["Provisioned", "Open", "SoldOut", "Drained", "Scaling", "Ready", "WarmUp", "Reconciling", "Stalled"]
        );
        let reasons = [
            Reason::Provisioned,
            Reason::LimitReached,
            Reason::CouponsLeft,
            Reason::AllWritten,
            Reason::Writing,
            Reason::Scaled,
            Reason::Autoscaled,
            Reason::NotOptedIn,
            Reason::DeploymentNotFound,
            Reason::Paused,
            Reason::BackendUnavailable,
            Reason::CrdOutdated,
            Reason::InvalidSpec,
            Reason::ImmutableField,
            Reason::LimitBelowIssued,
            Reason::PreviousEventDraining,
            Reason::EventIdInUse,
            Reason::PartitionCapExceeded,
            Reason::NotReady,
            Reason::Contended,
            Reason::ShortWarmUp,
            Reason::WarmUpSufficient,
            Reason::Reconciled,
            Reason::NotStalled,
        ];
        assert_eq!(
            reasons.map(Reason::as_str),
            [
                "Provisioned",
                "LimitReached",
                "CouponsLeft",
                "AllWritten",
                "Writing",
                "Scaled",
                "Autoscaled",
                "NotOptedIn",
                "DeploymentNotFound",
                "Paused",
                "BackendUnavailable",
                "CrdOutdated",
                "InvalidSpec",
                "ImmutableField",
                "LimitBelowIssued",
                "PreviousEventDraining",
                "EventIdInUse",
                "PartitionCapExceeded",
                "NotReady",
                "Contended",
                "ShortWarmUp",
                "WarmUpSufficient",
                "Reconciled",
                "NotStalled",
            ]
        );
    }

    #[test]
    fn status_questions_match_type_status_reason_and_generation() {
        let condition = |type_: &str, status: &str, reason: &str| Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: Some(2),
            last_transition_time: Time(Timestamp::UNIX_EPOCH),
        };
        let status = CouponEventStatus {
            conditions: vec![condition("Provisioned", "False", "LimitBelowIssued"), condition("Ready", "False", "BackendUnavailable")],
            ..Default::default()
        };
        assert!(status.has_condition(ConditionType::Ready, Reason::BackendUnavailable));
        assert!(!status.has_condition(ConditionType::Scaling, Reason::BackendUnavailable));
        assert!(!status.is_true(ConditionType::Provisioned));
        assert!(status.has_condition_at(ConditionType::Provisioned, false, Reason::LimitBelowIssued, Some(2)));
        assert!(!status.has_condition_at(ConditionType::Provisioned, false, Reason::LimitBelowIssued, Some(3)));
        assert!(!status.has_condition_at(ConditionType::Provisioned, true, Reason::LimitBelowIssued, Some(2)));
        let ready = CouponEventStatus { conditions: vec![condition("Provisioned", "True", "Provisioned")], ..Default::default() };
        assert!(ready.is_true(ConditionType::Provisioned));
    }
}
