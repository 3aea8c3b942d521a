//! The `CouponEvent` custom resource (`docs/architecture.md`, "Data contracts").
//!
//! Rules the API server can check at admission are CEL rules in the schema, so that
//! `kubectl apply` itself refuses them; `validate` checks them again in reconcile because CEL
//! may be off on old clusters.

use std::time::Duration;

use coupon_core::event::recurrence::Occurrence;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Longest event window the operator accepts: a flash sale, not a standing promotion.
pub const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest warm-up before the start.
pub const MAX_WARM_UP: Duration = Duration::from_secs(24 * 3600);
/// Shortest warm-up admission takes: less than new pods need to pull, start and turn Ready.
pub const MIN_WARM_UP: Duration = Duration::from_secs(30);
/// A warm-up below this is taken, with a warning: on a busy cluster pods may not be Ready.
pub const SHORT_WARM_UP: Duration = Duration::from_secs(120);
/// Longest `ttlAfterFinished`.
pub const MAX_TTL_AFTER_FINISHED: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest cool-down after the end.
pub const MAX_COOL_DOWN: Duration = Duration::from_secs(24 * 3600);

/// A first-come-first-served coupon event: the first `limit` users who apply between
/// `schedule.start` and `schedule.end` get a coupon. The operator provisions its Redis
/// configuration and Kafka topic, scales the api and consumer Deployments for the window,
/// and reports progress in `status`.
// Several `printcolumn(...)` share attribute values, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "coupons.fcfs.dev",
    version = "v1alpha1",
    kind = "CouponEvent",
    plural = "couponevents",
    singular = "couponevent",
    shortname = "ce",
    namespaced,
    status = "CouponEventStatus",
    derive = "PartialEq",
    doc = "A first-come-first-served coupon event: the first `limit` users who apply within the window get a coupon.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Issued", type_ = "integer", json_path = ".status.issued"),
    printcolumn(name = "Limit", type_ = "integer", json_path = ".spec.limit"),
    printcolumn(name = "Start", type_ = "string", json_path = ".spec.schedule.start"),
    printcolumn(name = "End", type_ = "string", json_path = ".spec.schedule.end"),
    printcolumn(name = "Occurrence", type_ = "string", json_path = ".status.occurrence.start"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 200").message(
        "metadata.name may be at most 200 characters: the event's coupons are keyed by namespace, name and UID (320 characters at most), and its Kubernetes Events are named after it"
    )
)]
#[x_kube(
    validation = Rule::new("self.topic == oldSelf.topic").message("topic cannot change: records would be split across two topics"),
    validation = Rule::new("self.partitions == oldSelf.partitions").message("partitions cannot change once the topic exists"),
    validation = Rule::new("self.shards == oldSelf.shards").message("shards cannot change: users are assigned to shards by it"),
    validation = Rule::new("has(self.eventId) == has(oldSelf.eventId) && (!has(self.eventId) || self.eventId == oldSelf.eventId)").message("eventId is set at creation or never: adding, changing or removing it would re-key a live sale"),
    validation = Rule::new("!has(self.eventId) || !has(self.onDelete) || self.onDelete == 'Retain'").message("an event with an eventId keeps its state on deletion (onDelete: Retain): deleting it would start the same sale over when the object is created again"),
    validation = Rule::new("!has(self.eventId) || !has(self.ttlAfterFinished)").message("an event with an eventId keeps its state so that a re-created object continues the sale: ttlAfterFinished is not allowed with it"),
    validation = Rule::new("!has(self.exclusiveTopic) || !self.exclusiveTopic || (has(self.topic) && self.topic != 'coupon_create')").message("exclusiveTopic needs a topic of the event's own: the default topic coupon_create is shared")
)]
#[serde(rename_all = "camelCase")]
pub struct CouponEventSpec {
    /// The sale's own identity, chosen by its author: when set, the event's coupons are keyed
    /// `<namespace>/<eventId>` instead of by this object, so deleting and creating the object
    /// again (Argo CD `Replace=true`, a backup restored without status, `kubectl replace
    /// --force`) continues the same sale instead of handing out the limit again. Set at
    /// creation or never; needs `onDelete: Retain`. Without it a re-created name is a new event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("eventId must be lowercase letters, digits and '-', starting and ending with a letter or digit"))]
    pub event_id: Option<String>,
    /// Number of coupons to hand out. It may be raised during the event, never lowered below
    /// the coupons already issued.
    #[schemars(range(min = 1, max = 100_000_000))]
    pub limit: i64,
    /// Coupons one user may get (1 to 100), each its own slot and row. An apply of a user who
    /// holds this many is answered 409 with their slots.
    #[serde(default = "default_per_user_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub per_user_limit: i64,
    /// Kafka topic the issued coupons travel on (Kafka's naming rules: 1..=249 characters of
    /// letters, digits, '.', '_' and '-'; not '.' or '..').
    #[serde(default = "default_topic")]
    #[schemars(length(min = 1, max = 249))]
    #[x_kube(validation = Rule::new("self.matches('^[a-zA-Z0-9._-]+$') && self != '.' && self != '..' && !self.startsWith('__')").message("topic must be a valid Kafka topic name, not an internal one (__*)"))]
    pub topic: String,
    /// The topic is this event's alone: with `onDelete: Delete`, the operator deletes it if it
    /// created it and every coupon is written. Without it a topic is never deleted: another
    /// release with its own Redis on the same broker may sell on it, unseen by this operator.
    /// Not allowed on the default topic.
    #[serde(default)]
    pub exclusive_topic: bool,
    /// Partitions of the topic when the operator creates it (an existing topic is kept as is).
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 1000))]
    pub partitions: i32,
    /// Redis shards the quota is spread over, on different masters of a Redis Cluster
    /// (README, "Redis Cluster and sharded events"). 1 keeps the event on one master; more
    /// pays off only when one master cannot take the event's opening second. Fixed once
    /// created.
    #[serde(default = "default_shards")]
    #[schemars(range(min = 1, max = 64))]
    pub shards: u16,
    /// When the event opens and closes.
    pub schedule: Schedule,
    /// The api Deployment to scale for the window.
    pub api: Workload,
    /// The consumer Deployment to scale for the window and until every issued coupon is written.
    pub consumer: Workload,
    /// What happens to the event's Redis keys and Kafka topic when the CouponEvent is deleted.
    #[serde(default)]
    pub on_delete: OnDelete,
    /// Stops issuing at once (the api answers `403 {"status":"paused"}`) while everything else
    /// stays: counters, Deployments, the window. Setting it back to false resumes the same
    /// event. The emergency stop after a pricing mistake.
    #[serde(default)]
    pub paused: bool,
    /// How long after the event is finished (closed, cooled down, every coupon written; each
    /// occurrence of a recurring one) its Redis state is removed, as a duration such as `24h`
    /// (at most 720h). The coupons in SQL stay (`event export` reads them). Unset: the state
    /// stays until the CouponEvent is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) <= duration('720h')").message("ttlAfterFinished may be at most 720h (30 days)"))]
    pub ttl_after_finished: Option<String>,
}

fn default_per_user_limit() -> i64 {
    1
}

fn default_topic() -> String {
    "coupon_create".into()
}

fn default_partitions() -> i32 {
    3
}

fn default_shards() -> u16 {
    1
}

/// The event's window: one (`start` and `end`), or recurring (`recurrence`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.recurrence) ? !has(self.start) && !has(self.end) : has(self.start) && has(self.end)").message("a schedule has either start and end, or recurrence, never both"),
    validation = Rule::new("!has(self.start) || !has(self.end) || self.end > self.start").message("schedule.end must be after schedule.start"),
    validation = Rule::new("!has(self.start) || !has(self.end) || self.end - self.start <= duration('168h')").message("the window may be at most 7 days (168h)"),
    // jiff (k8s-openapi's `Time`) reads nothing past 9999-12-30T22:00Z: an object ending
    // later could not be read at all, and would stop the operator's watch of every event.
    validation = Rule::new("!has(self.end) || self.end < timestamp('9000-01-01T00:00:00Z')").message("the window must end before the year 9000"),
    validation = Rule::new("!has(self.warmUp) || duration(self.warmUp) <= duration('24h')").message("warmUp may be at most 24h"),
    validation = Rule::new("!has(self.coolDown) || duration(self.coolDown) <= duration('24h')").message("coolDown may be at most 24h")
)]
pub struct Schedule {
    /// Opening time, RFC 3339 (e.g. 2026-11-27T10:00:00Z). With `end`; not with `recurrence`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Time>,
    /// Closing time, RFC 3339; after `start`, at most 7 days later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Time>,
    /// Windows that recur (every weekday at 10:00 in Seoul): each occurrence is its own sale
    /// of `limit` coupons, with its own rows, and a user may win once per occurrence (or
    /// `perUserLimit` times). Not with `start` and `end`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recurrence: Option<RecurrenceSpec>,
    /// How long before `start` the Deployments are scaled up, as a duration such as `5m` or
    /// `1h30m` (at most 24h). Default `5m`.
    ///
    /// Its minimum is a rule on this field alone: an event accepted with a shorter one by an
    /// earlier version keeps it (CRD validation ratcheting spares an unchanged field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('30s')").message("warmUp must be at least 30s: new pods need that long to start and turn Ready"))]
    pub warm_up: Option<String>,
    /// How long after `end` the api stays scaled up for the crowd's retries (their 403s and
    /// 410s), as a duration (at most 24h). Default `2m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    pub cool_down: Option<String>,
}

/// A recurring schedule: a cron rule read in a time zone, each match opening a window of
/// `duration`. Daylight saving: a local time that does not exist (spring forward) opens
/// later by the gap (02:30 becomes 03:30), one that occurs twice (fall back) opens once, at
/// the earlier instant. Occurrences may not overlap, warm-up included.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(has(self.count) && has(self.until))").message("a recurrence ends after count occurrences or at until, not both"),
    validation = Rule::new("!has(self.count) || has(self.from)").message("count needs from: occurrences are counted from it")
)]
pub struct RecurrenceSpec {
    /// Five-field cron rule (minute hour day-of-month month day-of-week) in `timeZone`'s
    /// local time, e.g. `0 10 * * MON-FRI`.
    #[schemars(length(min = 9, max = 200))]
    pub cron: String,
    /// IANA time zone the rule is read in, e.g. `Asia/Seoul` (the operator bundles the zone
    /// database).
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: String,
    /// How long each occurrence is open, as a duration such as `30m` (at most 168h).
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s') && duration(self) <= duration('168h')").message("duration must be more than 0 and at most 168h"))]
    pub duration: String,
    /// Occurrences start at or after this instant, RFC 3339 (default: any time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Time>,
    /// How many occurrences, counted from `from` (1 to 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub count: Option<u32>,
    /// No occurrence starts after this instant, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self < timestamp('9000-01-01T00:00:00Z')").message("until must be before the year 9000"))]
    pub until: Option<Time>,
}

/// A Deployment in the event's namespace and its replica counts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.idleReplicas) || self.idleReplicas <= self.replicas").message("idleReplicas may not exceed replicas")
)]
pub struct Workload {
    /// Name of the Deployment (a DNS-1123 subdomain, as Kubernetes names it).
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("deployment must be a Kubernetes object name"))]
    pub deployment: String,
    /// Replicas while the event needs the Deployment (at least 1).
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,
    /// Replicas outside the window, at most `replicas`. Default: 1 for the api, so that
    /// before the start and after the end users hear 403 (and can read the event) from a
    /// live api rather than meet an empty Service; 0 for the consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub idle_replicas: Option<i32>,
}

impl Workload {
    fn idle_or(&self, default: i32) -> i32 {
        self.idle_replicas.unwrap_or(default).min(self.replicas)
    }
}

/// Clean-up on deletion.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OnDelete {
    /// Keep the Redis keys and the topic (the coupons in SQL are always kept).
    #[default]
    Retain,
    /// Remove the event's Redis keys and its Kafka topic.
    Delete,
}

/// Where the event is in its life.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Phase {
    /// Not reconciled yet.
    #[default]
    Pending,
    /// Provisioned; the window and its warm-up lie ahead.
    Scheduled,
    /// Deployments scaled up ahead of the start.
    WarmingUp,
    /// Accepting applies.
    Open,
    /// Every coupon is issued; the consumer is still writing or done.
    SoldOut,
    /// Closed; the consumer is writing the last coupons.
    Draining,
    /// Closed and every issued coupon is written.
    Closed,
    /// The spec is invalid or cannot be applied; see the conditions.
    Failed,
}

/// Observed state of a CouponEvent.
///
/// Defaulted by the API server to `observedGeneration: 0` (and `phase: Pending`) until the
/// operator writes one: kstatus, which Flux and kpt wait on, reads an object without a status
/// as Current, and would call an event ready that no operator has looked at.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("default" = {"observedGeneration": 0, "phase": "Pending"}))]
pub struct CouponEventStatus {
    #[serde(default)]
    pub phase: Phase,
    /// Coupons handed out (from Redis).
    #[serde(default)]
    pub issued: i64,
    /// Coupons written to SQL (from Redis, reported by the consumer).
    #[serde(default)]
    pub persisted: i64,
    /// Issued coupons whose record was never written (a client or process that died
    /// mid-apply, a produce with an unknown outcome), found by the consumer once the topic
    /// was drained and given back; they are no longer counted in `issued`.
    #[serde(default)]
    pub healed: i64,
    /// Whether the operator created the event's Kafka topic (rather than finding it). Only
    /// such a topic is ever deleted by `onDelete: Delete`.
    #[serde(default)]
    pub topic_created: bool,
    /// The spec in effect: the last one the operator accepted. A refused edit (see the
    /// `Ready` condition) leaves it in effect, so a live sale goes on as accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_accepted_spec: Option<CouponEventSpec>,
    /// What the event's records and SQL rows carry after its name, `<namespace>/<name>@<incarnation>`:
    /// the object's UID, so a name re-used by a new object never mixes with this one's rows.
    /// Absent for an event provisioned before incarnations existed (its rows are keyed
    /// `<namespace>/<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<String>,
    /// For a recurring event, the occurrence the counts above belong to: the one under way,
    /// cooling down or draining, else the next (its records and rows carry
    /// `<incarnation>-o<start in seconds since the epoch>`). Kept as the last once all are over.
    #[serde(default)]
    pub occurrence: Option<OccurrenceStatus>,
    /// For a recurring event, the occurrence after `occurrence`; none after the last.
    #[serde(default)]
    pub next_occurrence: Option<OccurrenceStatus>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Provisioned, Open, SoldOut, Drained, Scaling, Ready, WarmUp, and kstatus's
    /// Reconciling and Stalled: one of each type (a list map keyed by `type`, so server-side
    /// apply merges them one by one).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One occurrence of a recurring event.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OccurrenceStatus {
    pub start: Time,
    pub end: Time,
}

impl From<Occurrence> for OccurrenceStatus {
    fn from(occurrence: Occurrence) -> Self {
        Self { start: Time(occurrence.start), end: Time(occurrence.end) }
    }
}

/// A spec the operator refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("schedule.end ({end}) must be after schedule.start ({start})")]
    EndNotAfterStart { start: Timestamp, end: Timestamp },
    #[error("the window is longer than the maximum of 7 days")]
    WindowTooLong,
    #[error("the window must end before the year 9000")]
    EndTooLate,
    #[error("schedule.warmUp {0:?} is not a duration such as 5m or 1h30m, from 30s to 24h")]
    WarmUp(String),
    #[error("schedule.coolDown {0:?} is not a duration such as 2m or 1h30m (at most 24h)")]
    CoolDown(String),
    #[error("eventId {0:?} must be lowercase letters, digits and '-' (at most 200)")]
    EventId(String),
    #[error("an event with an eventId needs onDelete: Retain")]
    EventIdNeedsRetain,
    #[error("exclusiveTopic needs a topic of the event's own, not the default {0}")]
    ExclusiveDefaultTopic(String),
    #[error("limit must be at least 1")]
    Limit,
    #[error("perUserLimit must be 1 to 100")]
    PerUserLimit,
    #[error("topic {0:?} is not a valid Kafka topic name")]
    Topic(String),
    #[error("partitions must be between 1 and 1000")]
    Partitions,
    #[error("{0}.replicas must be between 1 and 1000, and idleReplicas between 0 and replicas")]
    Replicas(&'static str),
    #[error("{0}.deployment must be a Kubernetes name")]
    Deployment(&'static str),
    #[error("a schedule has either start and end, or recurrence, never both")]
    ScheduleShape,
    #[error("schedule.recurrence: {0}")]
    Recurrence(String),
    #[error("ttlAfterFinished {0:?} is not a duration such as 24h (at most 720h)")]
    TtlAfterFinished(String),
    #[error(
        "an event with an eventId keeps its state so that a re-created object continues the sale: ttlAfterFinished is not allowed with it"
    )]
    TtlWithEventId,
}

impl Schedule {
    /// `warmUp`, defaulting to five minutes.
    pub fn warm_up(&self) -> Result<Duration, SpecError> {
        match &self.warm_up {
            None => Ok(Duration::from_secs(300)),
            Some(text) => {
                parse_duration(text).filter(|d| (MIN_WARM_UP..=MAX_WARM_UP).contains(d)).ok_or_else(|| SpecError::WarmUp(text.clone()))
            }
        }
    }

    /// `coolDown`, defaulting to two minutes.
    pub fn cool_down(&self) -> Result<Duration, SpecError> {
        match &self.cool_down {
            None => Ok(DEFAULT_COOL_DOWN),
            Some(text) => parse_duration(text).filter(|d| *d <= MAX_COOL_DOWN).ok_or_else(|| SpecError::CoolDown(text.clone())),
        }
    }
}

/// No window may end at or after this (the schema's rule says so too).
pub(crate) const LAST_END: Timestamp = Timestamp::constant(221_845_392_000, 0); // 9000-01-01T00:00:00Z

/// The api stays up this long after the end unless `coolDown` says otherwise.
pub const DEFAULT_COOL_DOWN: Duration = Duration::from_secs(120);

/// A duration as the schema's pattern takes it (`1h30m`, `45s`): units, no spaces.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    coupon_core::time::parse_duration(text).ok().filter(|_| text.chars().all(|c| c.is_ascii_alphanumeric()))
}

fn valid_deployment_name(name: &str) -> bool {
    coupon_core::event::EventId::new("x", name).is_ok()
}

impl CouponEventSpec {
    /// The spec with every default written out, as `status.lastAcceptedSpec` keeps it: a
    /// merge patch cannot remove a field, so a status with an optional field left out would
    /// keep an old value for ever (and differ from the computed status on every reconcile).
    pub fn with_defaults(&self) -> Self {
        let mut spec = self.clone();
        spec.api.idle_replicas = Some(self.api_idle_replicas());
        spec.consumer.idle_replicas = Some(self.consumer_idle_replicas());
        spec.schedule.warm_up = Some(self.schedule.warm_up.clone().unwrap_or_else(|| "5m".into()));
        spec.schedule.cool_down = Some(self.schedule.cool_down.clone().unwrap_or_else(|| "2m".into()));
        spec
    }

    /// `ttlAfterFinished`, if set.
    pub fn ttl_after_finished(&self) -> Result<Option<Duration>, SpecError> {
        let Some(text) = &self.ttl_after_finished else { return Ok(None) };
        let ttl = parse_duration(text).filter(|d| *d <= MAX_TTL_AFTER_FINISHED).ok_or_else(|| SpecError::TtlAfterFinished(text.clone()))?;
        Ok(Some(ttl))
    }

    /// Replicas of the api outside the window (default 1).
    pub fn api_idle_replicas(&self) -> i32 {
        self.api.idle_or(1)
    }

    /// Replicas of the consumer outside the window and once drained (default 0).
    pub fn consumer_idle_replicas(&self) -> i32 {
        self.consumer.idle_or(0)
    }

    /// Everything the schema's rules say, checked again in the operator.
    pub fn validate(&self) -> Result<(), SpecError> {
        let warm_up = self.schedule.warm_up()?;
        self.schedule.cool_down()?;
        self.schedule.validate_window(warm_up, Timestamp::now())?;
        self.ttl_after_finished()?;
        if let Some(event_id) = &self.event_id {
            if event_id.len() > 200 || coupon_core::event::EventId::new("x", event_id).is_err() || event_id.contains('.') {
                return Err(SpecError::EventId(event_id.clone()));
            }
            if self.on_delete != OnDelete::Retain {
                return Err(SpecError::EventIdNeedsRetain);
            }
            if self.ttl_after_finished.is_some() {
                return Err(SpecError::TtlWithEventId);
            }
        }
        if self.exclusive_topic && self.topic == crate::lifecycle::DEFAULT_TOPIC {
            return Err(SpecError::ExclusiveDefaultTopic(self.topic.clone()));
        }
        if self.limit < 1 {
            return Err(SpecError::Limit);
        }
        if !(1..=coupon_core::event::MAX_PER_USER).contains(&self.per_user_limit) {
            return Err(SpecError::PerUserLimit);
        }
        if !coupon_core::event::valid_topic_name(&self.topic) {
            return Err(SpecError::Topic(self.topic.clone()));
        }
        if !(1..=1000).contains(&self.partitions) {
            return Err(SpecError::Partitions);
        }
        for (what, workload) in [("api", &self.api), ("consumer", &self.consumer)] {
            if !(1..=1000).contains(&workload.replicas) || !(0..=workload.replicas).contains(&workload.idle_replicas.unwrap_or(0)) {
                return Err(SpecError::Replicas(what));
            }
            if !valid_deployment_name(&workload.deployment) {
                return Err(SpecError::Deployment(what));
            }
        }
        Ok(())
    }

    /// The event configuration the service library provisions in Redis for `window` (the
    /// one window, or an occurrence).
    pub fn event_config(&self, window: &Occurrence) -> coupon_core::event::EventConfig {
        coupon_core::event::EventConfig {
            limit: self.limit,
            per_user: self.per_user_limit,
            start: window.start,
            end: window.end,
            topic: self.topic.clone(),
            paused: self.paused,
            incarnation: None,
            shards: self.shards,
        }
    }
}
