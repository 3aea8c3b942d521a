//! Pure decisions of the operator: an event's phase, the replicas every referenced
//! Deployment should have, and when to look again. No I/O here, so the whole timeline can be
//! tested instant by instant.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use coupon_core::event::recurrence::Occurrence;

use crate::crd::{CouponEventSpec, Phase};

/// How often an event is looked at while its counters move.
pub const ACTIVE_REQUEUE: Duration = Duration::from_secs(5);
/// Longest sleep between two looks at a quiet event.
pub const IDLE_REQUEUE: Duration = Duration::from_secs(3600);

/// One event as the scheduler sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct EventState<'a> {
    pub namespace: &'a str,
    pub spec: &'a CouponEventSpec,
    pub need: Need,
}

/// What an event asks of its Deployments, said outright rather than encoded in counts: the
/// controller knows situations (a drain with nothing open, a refused spec, a deletion) that
/// the window and the counters alone do not tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// As its window and counters say (`phase`).
    Window { issued: i64, persisted: i64 },
    /// Issued coupons wait to be written while nothing is open (a deleted `Retain` event, a
    /// re-used name waiting for an earlier object's coupons): the consumer stays up, the api
    /// idles.
    Drain,
    /// Spec refused, none in effect: idle replicas only.
    Idle,
    /// Being deleted: it asks for nothing, and holds no shared Deployment up.
    Nothing,
}

/// A Deployment, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeploymentKey {
    pub namespace: String,
    pub name: String,
}

fn warm_up_start(spec: &CouponEventSpec, window: &Occurrence) -> Timestamp {
    let warm_up = spec.schedule.warm_up().unwrap_or(Duration::from_secs(300));
    let warm_up = SignedDuration::try_from(warm_up).unwrap_or(SignedDuration::ZERO);
    window.start.checked_sub(warm_up).unwrap_or(Timestamp::MIN)
}

/// The phase of a valid event at `now`, in the window in effect (`CouponEventSpec::window_at`:
/// the one window, or an occurrence). Boundaries belong to the later phase: at exactly
/// `start - warmUp` it is warming up, at exactly `start` open, at exactly `end` closed. A
/// recurrence whose occurrences are all over is closed once drained.
pub fn phase(now: Timestamp, spec: &CouponEventSpec, issued: i64, persisted: i64) -> Phase {
    phase_in(now, spec, spec.schedule.window_at(now), issued, persisted)
}

/// The phase at `now` in `window` (`None`: a recurrence that is over), such as the
/// occurrence Redis holds while the next one waits for it to be written.
pub fn phase_in(now: Timestamp, spec: &CouponEventSpec, window: Option<Occurrence>, issued: i64, persisted: i64) -> Phase {
    let Some(window) = window else {
        return if persisted < issued { Phase::Draining } else { Phase::Closed };
    };
    if now < warm_up_start(spec, &window) {
        Phase::Scheduled
    } else if now < window.start {
        Phase::WarmingUp
    } else if now < window.end {
        if issued >= spec.limit {
            Phase::SoldOut
        } else {
            Phase::Open
        }
    } else if persisted < issued {
        Phase::Draining
    } else {
        Phase::Closed
    }
}

/// Replicas this event asks of its api and consumer Deployments, or `None` while deleting.
pub fn requested(now: Timestamp, event: &EventState<'_>) -> Option<(i32, i32)> {
    let (api, consumer) = (&event.spec.api, &event.spec.consumer);
    let (issued, persisted) = match event.need {
        Need::Nothing => return None,
        Need::Idle => return Some((event.spec.api_idle_replicas(), event.spec.consumer_idle_replicas())),
        // What a window that ended with coupons unwritten asks (`Phase::Draining`).
        Need::Drain => return Some((event.spec.api_idle_replicas(), consumer.replicas)),
        Need::Window { issued, persisted } => (issued, persisted),
    };
    let phase = phase(now, event.spec, issued, persisted);
    // The api stays up until the end, sold out included: at the peak of the crowd users must
    // hear the cheap 410 (and holders their 409), not meet an empty Service, and a released
    // slot reopens the event without pods starting from zero. And for `coolDown` after the
    // end: the crowd retries for a while, and is answered 403 by pods still there.
    let cooling_down = event.spec.schedule.window_at(now).is_some_and(|window| now < cool_down_end(event.spec, &window));
    let api_active = matches!(phase, Phase::WarmingUp | Phase::Open | Phase::SoldOut)
        || (matches!(phase, Phase::Draining | Phase::Closed) && cooling_down);
    let consumer_active = matches!(phase, Phase::WarmingUp | Phase::Open | Phase::SoldOut | Phase::Draining);
    Some((
        if api_active { api.replicas } else { event.spec.api_idle_replicas() },
        if consumer_active { consumer.replicas } else { event.spec.consumer_idle_replicas() },
    ))
}

/// Desired replicas of every Deployment referenced by an event that is not being deleted:
/// the largest request among the events that share it.
pub fn desired_replicas(now: Timestamp, events: &[EventState<'_>]) -> BTreeMap<DeploymentKey, i32> {
    let mut desired: BTreeMap<DeploymentKey, i32> = BTreeMap::new();
    for event in events {
        let Some((api, consumer)) = requested(now, event) else { continue };
        for (deployment, replicas) in [(&event.spec.api.deployment, api), (&event.spec.consumer.deployment, consumer)] {
            let key = DeploymentKey { namespace: event.namespace.to_owned(), name: deployment.clone() };
            let entry = desired.entry(key).or_insert(replicas);
            *entry = (*entry).max(replicas);
        }
    }
    desired
}

/// When the api may go back to its idle replicas: `coolDown` after the end.
fn cool_down_end(spec: &CouponEventSpec, window: &Occurrence) -> Timestamp {
    let cool_down = spec.schedule.cool_down().unwrap_or(crate::crd::DEFAULT_COOL_DOWN);
    // Saturating: an end in jiff's last day plus a cool-down must not overflow (and panic).
    let cool_down = SignedDuration::try_from(cool_down).unwrap_or(SignedDuration::ZERO);
    window.end.checked_add(cool_down).unwrap_or(Timestamp::MAX)
}

/// The next instant after `now` at which what the operator does changes by the clock alone:
/// the warm-up, the readiness check a minute before the start, the start, the end, the end
/// of the cool-down; for a recurrence, also the next occurrence's warm-up (which may end
/// this one's cool-down).
pub fn next_boundary(now: Timestamp, spec: &CouponEventSpec) -> Option<Timestamp> {
    let window = spec.schedule.window_at(now)?;
    let ready_check = window.start.checked_sub(SignedDuration::from_secs(60)).unwrap_or(Timestamp::MIN);
    let next_warm_up = spec.schedule.after(&window).map(|next| warm_up_start(spec, &next));
    [
        Some(warm_up_start(spec, &window)),
        Some(ready_check),
        Some(window.start),
        Some(window.end),
        Some(cool_down_end(spec, &window)),
        next_warm_up,
    ]
    .into_iter()
    .flatten()
    .filter(|t| *t > now)
    .min()
}

/// When to reconcile again: at the next boundary, and every few seconds while counters move.
pub fn requeue_after(now: Timestamp, spec: &CouponEventSpec, phase: Phase) -> Duration {
    let until_boundary =
        next_boundary(now, spec).map(|t| Duration::from_millis(t.duration_since(now).as_millis().max(0) as u64)).unwrap_or(IDLE_REQUEUE);
    let cap = match phase {
        Phase::WarmingUp | Phase::Open | Phase::SoldOut | Phase::Draining => ACTIVE_REQUEUE,
        Phase::Pending | Phase::Failed => Duration::from_secs(300),
        Phase::Scheduled | Phase::Closed => IDLE_REQUEUE,
    };
    until_boundary.min(cap).max(Duration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::crd::{OnDelete, RecurrenceSpec, Schedule, Workload};

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn spec(start: &str, end: &str, api: (&str, i32, i32), consumer: (&str, i32, i32)) -> CouponEventSpec {
        CouponEventSpec {
            event_id: None,
            exclusive_topic: false,
            limit: 100,
            per_user_limit: 1,
            topic: "coupon_create".into(),
            partitions: 3,
            shards: 1,
            // No cool-down: the timelines below are about the window (see
            // `the_api_stays_up_for_the_cool_down_after_the_end`).
            schedule: Schedule {
                start: Some(Time(t(start))),
                end: Some(Time(t(end))),
                recurrence: None,
                warm_up: Some("5m".into()),
                cool_down: Some("0s".into()),
            },
            api: Workload { deployment: api.0.into(), replicas: api.1, idle_replicas: Some(api.2) },
            consumer: Workload { deployment: consumer.0.into(), replicas: consumer.1, idle_replicas: Some(consumer.2) },
            on_delete: OnDelete::Retain,
            paused: false,
            ttl_after_finished: None,
        }
    }

    fn black_friday() -> CouponEventSpec {
        spec("2026-11-27T10:00:00Z", "2026-11-27T10:30:00Z", ("coupon-api", 10, 0), ("coupon-consumer", 2, 0))
    }

    fn state<'a>(spec: &'a CouponEventSpec, issued: i64, persisted: i64) -> EventState<'a> {
        EventState { namespace: "shop", spec, need: Need::Window { issued, persisted } }
    }

    fn key(name: &str) -> DeploymentKey {
        DeploymentKey { namespace: "shop".into(), name: name.into() }
    }

    fn replicas(now: &str, events: &[EventState<'_>]) -> Vec<(String, i32)> {
        desired_replicas(t(now), events).into_iter().map(|(k, v)| (k.name, v)).collect()
    }

    /// `(instant, issued, persisted, phase, api replicas, consumer replicas)`, in order.
    type Timeline<'a> = [(&'a str, i64, i64, Phase, i32, i32)];

    /// Checks the phase and the replicas of `s` at every instant of `timeline`.
    fn assert_timeline(s: &CouponEventSpec, timeline: &Timeline<'_>) {
        for &(now, issued, persisted, expected_phase, api, consumer) in timeline {
            assert_eq!(phase(t(now), s, issued, persisted), expected_phase, "phase at {now}");
            assert_eq!(
                replicas(now, &[state(s, issued, persisted)]),
                vec![("coupon-api".into(), api), ("coupon-consumer".into(), consumer)],
                "replicas at {now}"
            );
        }
    }

    #[test]
    fn one_event_over_its_whole_timeline() {
        let s = black_friday();
        // (instant, issued, persisted, phase, api, consumer)
        let timeline = [
            ("2026-11-26T10:00:00Z", 0, 0, Phase::Scheduled, 0, 0),
            ("2026-11-27T09:54:59.999Z", 0, 0, Phase::Scheduled, 0, 0),
            ("2026-11-27T09:55:00Z", 0, 0, Phase::WarmingUp, 10, 2),
            ("2026-11-27T09:59:59.999Z", 0, 0, Phase::WarmingUp, 10, 2),
            ("2026-11-27T10:00:00Z", 0, 0, Phase::Open, 10, 2),
            ("2026-11-27T10:10:00Z", 99, 90, Phase::Open, 10, 2),
            ("2026-11-27T10:29:59.999Z", 50, 50, Phase::Open, 10, 2),
            ("2026-11-27T10:30:00Z", 50, 50, Phase::Closed, 0, 0),
            ("2026-11-28T10:30:00Z", 50, 50, Phase::Closed, 0, 0),
        ];
        assert_timeline(&s, &timeline);
    }

    #[test]
    fn sold_out_keeps_the_api_and_the_consumer_up_until_the_end() {
        let s = black_friday();
        let now = "2026-11-27T10:05:00Z";
        assert_eq!(phase(t(now), &s, 100, 40), Phase::SoldOut);
        assert_eq!(replicas(now, &[state(&s, 100, 40)]), vec![("coupon-api".into(), 10), ("coupon-consumer".into(), 2)]);
        assert_eq!(replicas(now, &[state(&s, 100, 100)]), vec![("coupon-api".into(), 10), ("coupon-consumer".into(), 2)]);
        // Sold out and fully written: still SoldOut until the end; consumer stays for late records.
        assert_eq!(phase(t(now), &s, 100, 100), Phase::SoldOut);
        // A released slot reopens the event.
        assert_eq!(phase(t(now), &s, 99, 99), Phase::Open);
    }

    #[test]
    fn draining_keeps_the_consumer_after_the_end_until_persisted_equals_issued() {
        let s = black_friday();
        for now in ["2026-11-27T10:30:00Z", "2026-11-27T11:00:00Z", "2026-11-30T00:00:00Z"] {
            assert_eq!(phase(t(now), &s, 100, 99), Phase::Draining, "{now}");
            assert_eq!(replicas(now, &[state(&s, 100, 99)]), vec![("coupon-api".into(), 0), ("coupon-consumer".into(), 2)]);
            assert_eq!(phase(t(now), &s, 100, 100), Phase::Closed);
            assert_eq!(replicas(now, &[state(&s, 100, 100)]), vec![("coupon-api".into(), 0), ("coupon-consumer".into(), 0)]);
        }
    }

    #[test]
    fn overlapping_events_sharing_a_deployment_get_the_larger_request() {
        let a = spec("2026-11-27T10:00:00Z", "2026-11-27T10:30:00Z", ("shared-api", 10, 1), ("consumer-a", 2, 0));
        let b = spec("2026-11-27T10:20:00Z", "2026-11-27T11:00:00Z", ("shared-api", 4, 2), ("consumer-b", 1, 0));
        let events = |ia: i64, ib: i64| vec![state(&a, ia, ia), state(&b, ib, ib)];
        let expect =
            |api: i32, ca: i32, cb: i32| vec![("consumer-a".to_owned(), ca), ("consumer-b".to_owned(), cb), ("shared-api".to_owned(), api)];
        // Before both: the larger idle count.
        assert_eq!(replicas("2026-11-27T09:00:00Z", &events(0, 0)), expect(2, 0, 0));
        // A warming up, B idle: A's 10.
        assert_eq!(replicas("2026-11-27T09:55:00Z", &events(0, 0)), expect(10, 2, 0));
        // B warming up at 10:15 while A is open: max(10, 4).
        assert_eq!(replicas("2026-11-27T10:15:00Z", &events(5, 0)), expect(10, 2, 1));
        // A sold out: it keeps its api request until its end (410s at the peak), max(10, 4).
        assert_eq!(replicas("2026-11-27T10:25:00Z", &events(100, 3)), expect(10, 2, 1));
        // A closed exactly at its end, B open.
        assert_eq!(replicas("2026-11-27T10:30:00Z", &events(100, 3)), expect(4, 0, 1));
        // Both closed: the larger idle count.
        assert_eq!(replicas("2026-11-27T11:00:00Z", &events(100, 3)), expect(2, 0, 0));
    }

    #[test]
    fn deleting_events_ask_for_nothing_and_failed_ones_for_idle() {
        let a = black_friday();
        let now = "2026-11-27T10:05:00Z";
        let deleting = EventState { need: Need::Nothing, ..state(&a, 0, 0) };
        assert!(replicas(now, std::slice::from_ref(&deleting)).is_empty());
        let failed = EventState { need: Need::Idle, ..state(&a, 0, 0) };
        assert_eq!(replicas(now, &[failed]), vec![("coupon-api".into(), 0), ("coupon-consumer".into(), 0)]);
        // The deleting event does not hold a shared Deployment up.
        let b = spec("2026-11-28T10:00:00Z", "2026-11-28T10:30:00Z", ("coupon-api", 3, 1), ("coupon-consumer", 1, 0));
        assert_eq!(replicas(now, &[deleting, state(&b, 0, 0)]), vec![("coupon-api".into(), 1), ("coupon-consumer".into(), 0)]);
    }

    #[test]
    fn a_drain_keeps_the_consumer_up_and_the_api_idle_whatever_the_window() {
        let s = spec("2026-11-27T10:00:00Z", "2026-11-27T10:30:00Z", ("coupon-api", 10, 1), ("coupon-consumer", 2, 0));
        let draining = EventState { need: Need::Drain, ..state(&s, 0, 0) };
        // Before, during and after the window: as a window that ended with coupons unwritten.
        for now in ["2026-11-26T10:00:00Z", "2026-11-27T10:05:00Z", "2026-11-28T10:00:00Z"] {
            assert_eq!(
                replicas(now, std::slice::from_ref(&draining)),
                vec![("coupon-api".into(), 1), ("coupon-consumer".into(), 2)],
                "{now}"
            );
        }
        // Exactly what the window ended at `now` with a coupon unwritten asks.
        for now in ["2026-11-26T10:00:00Z", "2026-11-27T10:05:00Z", "2026-11-28T10:00:00Z"] {
            let mut ended = s.clone();
            let start = ended.schedule.start.as_ref().unwrap().0;
            ended.schedule.start = Some(Time(start.min(t(now) - SignedDuration::from_secs(1))));
            ended.schedule.end = Some(Time(t(now)));
            assert_eq!(requested(t(now), &draining), requested(t(now), &state(&ended, 1, 0)), "{now}");
        }
        // It holds a shared consumer up for another event that is closed.
        let other = spec("2026-11-20T10:00:00Z", "2026-11-20T10:30:00Z", ("coupon-api", 3, 0), ("coupon-consumer", 5, 0));
        assert_eq!(
            replicas("2026-11-27T10:05:00Z", &[draining, state(&other, 10, 10)]),
            vec![("coupon-api".into(), 1), ("coupon-consumer".into(), 2)]
        );
    }

    #[test]
    fn deployments_are_keyed_by_namespace() {
        let s = black_friday();
        let other = EventState { namespace: "other", ..state(&s, 0, 0) };
        let desired = desired_replicas(t("2026-11-27T10:05:00Z"), &[state(&s, 0, 0), other]);
        assert_eq!(desired.len(), 4);
        assert_eq!(desired[&key("coupon-api")], 10);
    }

    #[test]
    fn the_api_stays_up_for_the_cool_down_after_the_end() {
        let at = |s: &CouponEventSpec, now: &str, issued, persisted| requested(t(now), &state(s, issued, persisted));
        let mut s = black_friday();
        s.schedule.cool_down = None;
        // Default two minutes, drained or not; then idle.
        assert_eq!(at(&s, "2026-11-27T10:30:00Z", 100, 100), Some((10, 0)));
        assert_eq!(at(&s, "2026-11-27T10:31:59Z", 100, 90), Some((10, 2)));
        assert_eq!(at(&s, "2026-11-27T10:32:00Z", 100, 100), Some((0, 0)));
        assert_eq!(next_boundary(t("2026-11-27T10:30:00Z"), &s), Some(t("2026-11-27T10:32:00Z")));
        s.schedule.cool_down = Some("10m".into());
        assert_eq!(at(&s, "2026-11-27T10:39:59Z", 100, 100), Some((10, 0)));
        assert_eq!(at(&s, "2026-11-27T10:40:00Z", 100, 100), Some((0, 0)));
    }

    /// A window at the end of time (admitted before the CRD's year-9000 rule, or where CEL is
    /// off) plus its cool-down passes jiff's last instant: saturated, never a panic.
    #[test]
    fn an_event_at_the_end_of_time_does_not_overflow() {
        let mut s = spec("9999-12-30T21:00:00Z", "9999-12-30T21:59:00Z", ("api", 10, 1), ("consumer", 2, 0));
        s.schedule.cool_down = Some("24h".into());
        let now = t("9999-12-30T21:30:00Z");
        assert_eq!(requested(now, &state(&s, 0, 0)), Some((10, 2)));
        assert_eq!(next_boundary(now, &s), Some(t("9999-12-30T21:59:00Z")));
        assert_eq!(next_boundary(t("9999-12-30T21:59:00Z"), &s), Some(Timestamp::MAX));
    }

    #[test]
    fn requeue_lands_on_the_next_boundary() {
        let s = black_friday();
        assert_eq!(next_boundary(t("2026-11-27T09:00:00Z"), &s), Some(t("2026-11-27T09:55:00Z")));
        assert_eq!(next_boundary(t("2026-11-27T09:55:00Z"), &s), Some(t("2026-11-27T09:59:00Z")), "the readiness check");
        assert_eq!(next_boundary(t("2026-11-27T09:59:00Z"), &s), Some(t("2026-11-27T10:00:00Z")));
        assert_eq!(next_boundary(t("2026-11-27T10:00:00Z"), &s), Some(t("2026-11-27T10:30:00Z")));
        assert_eq!(next_boundary(t("2026-11-27T10:30:00Z"), &s), None);
        // Scheduled 10 minutes ahead of warm-up: sleep exactly until it.
        assert_eq!(requeue_after(t("2026-11-27T09:45:00Z"), &s, Phase::Scheduled), Duration::from_secs(600));
        // Far ahead: capped at an hour.
        assert_eq!(requeue_after(t("2026-11-20T09:45:00Z"), &s, Phase::Scheduled), IDLE_REQUEUE);
        // Open: every few seconds, or sooner when the end is nearer.
        assert_eq!(requeue_after(t("2026-11-27T10:10:00Z"), &s, Phase::Open), ACTIVE_REQUEUE);
        assert_eq!(requeue_after(t("2026-11-27T10:29:58Z"), &s, Phase::Open), Duration::from_secs(2));
        assert_eq!(requeue_after(t("2026-11-27T11:00:00Z"), &s, Phase::Draining), ACTIVE_REQUEUE);
        assert_eq!(requeue_after(t("2026-11-27T11:00:00Z"), &s, Phase::Closed), IDLE_REQUEUE);
    }

    /// Daily at 10:00 Seoul (01:00Z) for 30 minutes, three times from 2026-11-27: each
    /// occurrence warms up, opens, closes and cools down like a window of its own, and the
    /// next takes over after the cool-down.
    fn daily_in_seoul() -> CouponEventSpec {
        let mut s = black_friday();
        s.schedule = Schedule {
            start: None,
            end: None,
            recurrence: Some(RecurrenceSpec {
                cron: "0 10 * * *".into(),
                time_zone: "Asia/Seoul".into(),
                duration: "30m".into(),
                from: Some(Time(t("2026-11-27T00:00:00Z"))),
                count: Some(3),
                until: None,
            }),
            warm_up: Some("5m".into()),
            cool_down: Some("2m".into()),
        };
        s
    }

    #[test]
    fn each_occurrence_of_a_recurring_event_has_its_own_timeline() {
        let s = daily_in_seoul();
        s.validate().unwrap();
        // (instant, issued, persisted, phase, api, consumer)
        let timeline = [
            ("2026-11-27T00:54:59Z", 0, 0, Phase::Scheduled, 0, 0),
            ("2026-11-27T00:55:00Z", 0, 0, Phase::WarmingUp, 10, 2),
            ("2026-11-27T01:00:00Z", 0, 0, Phase::Open, 10, 2),
            ("2026-11-27T01:10:00Z", 100, 60, Phase::SoldOut, 10, 2),
            ("2026-11-27T01:30:00Z", 100, 90, Phase::Draining, 10, 2),
            ("2026-11-27T01:31:59Z", 100, 100, Phase::Closed, 10, 0),
            // The next occurrence is in effect: its own counts, from zero.
            ("2026-11-27T01:32:00Z", 0, 0, Phase::Scheduled, 0, 0),
            ("2026-11-28T00:55:00Z", 0, 0, Phase::WarmingUp, 10, 2),
            ("2026-11-28T01:00:00Z", 3, 3, Phase::Open, 10, 2),
            // The third and last, then nothing more.
            ("2026-11-29T01:00:00Z", 0, 0, Phase::Open, 10, 2),
            ("2026-11-29T01:32:00Z", 7, 7, Phase::Closed, 0, 0),
            ("2026-11-29T01:32:00Z", 7, 6, Phase::Draining, 0, 2),
            ("2026-12-10T00:00:00Z", 7, 7, Phase::Closed, 0, 0),
        ];
        assert_timeline(&s, &timeline);
        // The reconciles land on every boundary of each occurrence, and on the next.
        assert_eq!(next_boundary(t("2026-11-27T01:30:00Z"), &s), Some(t("2026-11-27T01:32:00Z")));
        assert_eq!(next_boundary(t("2026-11-27T01:32:00Z"), &s), Some(t("2026-11-28T00:55:00Z")));
        assert_eq!(next_boundary(t("2026-11-29T01:32:00Z"), &s), None);
    }

    #[test]
    fn default_warm_up_is_five_minutes() {
        let mut s = black_friday();
        s.schedule.warm_up = None;
        assert_eq!(phase(t("2026-11-27T09:55:00Z"), &s, 0, 0), Phase::WarmingUp);
        assert_eq!(phase(t("2026-11-27T09:54:59Z"), &s, 0, 0), Phase::Scheduled);
        s.schedule.warm_up = Some("30s".into());
        assert_eq!(phase(t("2026-11-27T09:59:29Z"), &s, 0, 0), Phase::Scheduled);
        assert_eq!(phase(t("2026-11-27T09:59:30Z"), &s, 0, 0), Phase::WarmingUp);
    }
}
