//! Which window of an event the operator acts for: the one window of `start` and `end`, or an
//! occurrence of a `recurrence` (see `coupon_core::event::recurrence` for the rules and
//! daylight saving).
//!
//! A recurrence is read once per spec and kept, with the outcome of its overlap check: a
//! reconcile asks for the window several times, and the check walks a year of occurrences.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use coupon_core::event::recurrence::{Bound, Occurrence, Recurrence};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{parse_duration, RecurrenceSpec, Schedule, SpecError, DEFAULT_COOL_DOWN, LAST_END, MAX_WINDOW};

/// Recurrences read, by their spec: at most this many are kept (then all are dropped).
const KEPT: usize = 4096;

type Read = Result<Arc<Recurrence>, SpecError>;

static READ: LazyLock<Mutex<HashMap<String, Read>>> = LazyLock::new(Default::default);
/// A recurrence's overlap check: its spec, the warm-up it was checked with, and the day.
type CheckKey = (String, Duration, i64);

static CHECKED: LazyLock<Mutex<HashMap<CheckKey, Result<(), SpecError>>>> = LazyLock::new(Default::default);

fn cache_key(spec: &RecurrenceSpec) -> String {
    serde_json::to_string(spec).unwrap_or_default()
}

fn remembered<K: std::hash::Hash + Eq, V: Clone>(map: &Mutex<HashMap<K, V>>, key: K, compute: impl FnOnce() -> V) -> V {
    if let Some(value) = map.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return value.clone();
    }
    let value = compute();
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= KEPT {
        map.clear();
    }
    map.insert(key, value.clone());
    value
}

fn read(spec: &RecurrenceSpec) -> Read {
    let duration = parse_duration(&spec.duration)
        .ok_or_else(|| SpecError::Recurrence(format!("duration {:?} is not a duration such as 30m", spec.duration)))?;
    let bound = match (spec.count, &spec.until) {
        (Some(count), _) => Bound::Count(count),
        (None, Some(until)) => Bound::Until(until.0),
        (None, None) => Bound::Forever,
    };
    let anchor = spec.from.as_ref().map_or(Timestamp::MIN, |from| from.0);
    Recurrence::parse(&spec.cron, &spec.time_zone, duration, bound, anchor).map(Arc::new).map_err(|e| SpecError::Recurrence(e.to_string()))
}

impl Schedule {
    /// The recurrence, read (its overlaps are checked by `validate`); `None` for one window.
    pub fn recurrence(&self) -> Option<Read> {
        let spec = self.recurrence.as_ref()?;
        Some(remembered(&READ, cache_key(spec), || read(spec)))
    }

    /// The window the operator acts for at `now`: the one window; or the occurrence under
    /// way, or cooling down until the next one warms up, else the next. `None` for a
    /// recurrence that is over (or unreadable).
    pub fn window_at(&self, now: Timestamp) -> Option<Occurrence> {
        match (&self.start, &self.end, self.recurrence()) {
            (_, _, Some(recurrence)) => {
                let warm_up = self.warm_up().unwrap_or(Duration::from_secs(300));
                let cool_down = self.cool_down().unwrap_or(DEFAULT_COOL_DOWN);
                recurrence.ok()?.in_effect(now, warm_up, cool_down)
            }
            (Some(start), Some(end), None) => Some(Occurrence { start: start.0, end: end.0 }),
            _ => None,
        }
    }

    /// The occurrence after `window`, for a recurrence.
    pub fn after(&self, window: &Occurrence) -> Option<Occurrence> {
        self.recurrence()?.ok()?.after(window)
    }

    /// The window's own rules (the CRD's, checked again), and for a recurrence that its
    /// occurrences are apart by the warm-up at least over the year from `now`: the next
    /// occurrence's pods come up only once the one before has ended.
    pub fn validate_window(&self, warm_up: Duration, now: Timestamp) -> Result<(), SpecError> {
        match (&self.start, &self.end, &self.recurrence) {
            (None, None, Some(spec)) => {
                if spec.until.as_ref().is_some_and(|until| until.0 >= LAST_END) {
                    return Err(SpecError::EndTooLate);
                }
                let recurrence = self.recurrence().unwrap_or_else(|| read(spec))?;
                // The check's year moves on with the clock: kept for the day it was made.
                let day = now.as_second().div_euclid(86_400);
                remembered(&CHECKED, (cache_key(spec), warm_up, day), || {
                    recurrence.check_apart(warm_up, now).map_err(|e| SpecError::Recurrence(e.to_string()))
                })
            }
            (Some(start), Some(end), None) => {
                let (start, end) = (start.0, end.0);
                if end <= start {
                    return Err(SpecError::EndNotAfterStart { start, end });
                }
                if end.duration_since(start).as_secs() > MAX_WINDOW.as_secs() as i64 {
                    return Err(SpecError::WindowTooLong);
                }
                if end >= LAST_END {
                    return Err(SpecError::EndTooLate);
                }
                Ok(())
            }
            _ => Err(SpecError::ScheduleShape),
        }
    }
}
