//! Recurring windows: "every weekday at 10:00 Seoul time, for 30 minutes".
//!
//! A rule is a five-field cron expression read in an IANA time zone. Its matches are local
//! (civil) times, found by croner as if the zone had no transitions, and only then placed
//! on the time line by jiff, with the zone database bundled into the binary (the runtime
//! image has no tzdata). That order is what makes daylight saving behave as RFC 5545 and
//! Temporal say:
//! - a local time that does not exist (spring forward) moves forward by the gap: 02:30 on
//!   the day clocks jump from 02:00 to 03:00 becomes 03:30 (jiff's `compatible`);
//! - a local time that occurs twice (fall back) is taken once, at its earlier instant;
//! - a rule that matches once a day matches once every day, transitions or not.
//!
//! An occurrence lasts `duration` of real time from its start. Occurrences never overlap: a
//! rule whose windows would (every minute for an hour) is refused when it is made, over its
//! first [`CHECKED_OCCURRENCES`].

use std::fmt;
use std::time::Duration;

use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use jiff::civil::DateTime;
use jiff::tz::{TimeZone, TimeZoneDatabase};
use jiff::{SignedDuration, Timestamp, Zoned};

/// Longest occurrence, as a single window: a week.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most occurrences a `count` may ask for: the operator counts them from the first on
/// every look, so the count bounds that work.
pub const MAX_COUNT: u32 = 1000;
/// Occurrences checked for overlaps when a recurrence is made: a year of them from now (both
/// daylight-saving changes), at least a thousand, at most this many.
pub const CHECKED_OCCURRENCES: usize = 20_000;
/// How far ahead overlaps are looked for: a year and the week a change of clocks moves by
/// (a rule "second Sunday of March" falls up to six days later the next year).
const CHECKED_SPAN: SignedDuration = SignedDuration::from_hours(380 * 24);

/// How a recurrence ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// Never.
    Forever,
    /// After this many occurrences, counted from the first at or after the anchor.
    Count(u32),
    /// No occurrence starts after this instant.
    Until(Timestamp),
}

/// A refused recurrence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecurrenceError {
    #[error("rule {rule:?} is not a five-field cron expression (minute hour day-of-month month day-of-week): {why}")]
    Rule { rule: String, why: String },
    #[error("time zone {0:?} is not an IANA time zone name (such as Asia/Seoul or Europe/Berlin)")]
    TimeZone(String),
    #[error("duration must be more than 0 and at most 168h, got {0:?}")]
    Duration(Duration),
    #[error("count must be 1 to {MAX_COUNT}, got {0}")]
    Count(u32),
    #[error("the rule never matches (after {0})")]
    Never(Timestamp),
    #[error("occurrences overlap: the one starting {next} begins before the one starting {previous} ends at {previous_end}")]
    Overlap { previous: Timestamp, previous_end: Timestamp, next: Timestamp },
}

/// One window of a recurrence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Occurrence {
    pub start: Timestamp,
    pub end: Timestamp,
}

impl Occurrence {
    /// The occurrence's name in event keys and SQL rows: its start in seconds since the
    /// epoch (unique, since occurrences never overlap, and readable back as a time).
    pub fn id(&self) -> i64 {
        self.start.as_second()
    }
}

/// A recurrence: a cron rule in a time zone, a duration, and how it ends.
#[derive(Clone)]
pub struct Recurrence {
    rule: String,
    cron: Cron,
    zone_name: String,
    zone: TimeZone,
    duration: SignedDuration,
    bound: Bound,
    /// Occurrences start at or after this instant (a `count` counts from here).
    anchor: Timestamp,
    /// No occurrence starts after this: `until`, or the start of a count's last, found once
    /// when the recurrence is read, so that no later look counts from the anchor again.
    last_start: Option<Timestamp>,
}

impl fmt::Debug for Recurrence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recurrence")
            .field("rule", &self.rule)
            .field("zone", &self.zone_name)
            .field("duration", &self.duration)
            .field("bound", &self.bound)
            .field("anchor", &self.anchor)
            .finish()
    }
}

/// The bundled IANA database: the same rules on every machine, whatever tzdata it has.
pub fn time_zone(name: &str) -> Result<TimeZone, RecurrenceError> {
    TimeZoneDatabase::bundled().get(name).map_err(|_| RecurrenceError::TimeZone(name.to_owned()))
}

/// A five-field cron rule (names such as `MON-FRI` and `JAN` allowed; no seconds, no years).
pub fn parse_rule(rule: &str) -> Result<Cron, RecurrenceError> {
    let refused = |why: String| RecurrenceError::Rule { rule: rule.to_owned(), why };
    let fields = rule.split_whitespace().count();
    if fields != 5 {
        return Err(refused(format!("it has {fields} fields")));
    }
    CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build().parse(rule).map_err(|e| refused(e.to_string()))
}

impl Recurrence {
    /// Checks every part, and that the windows from `anchor` (or `now`, if later) do not
    /// overlap, with `gap` of room between one's end and the next start (the operator's
    /// warm-up): see [`Recurrence::check_apart`].
    pub fn new(
        rule: &str,
        zone_name: &str,
        duration: Duration,
        bound: Bound,
        anchor: Timestamp,
        gap: Duration,
    ) -> Result<Self, RecurrenceError> {
        let recurrence = Self::parse(rule, zone_name, duration, bound, anchor)?;
        recurrence.check_apart(gap, Timestamp::now())?;
        Ok(recurrence)
    }

    /// Checks every part but the overlaps: for a recurrence `new` accepted before, read again.
    pub fn parse(rule: &str, zone_name: &str, duration: Duration, bound: Bound, anchor: Timestamp) -> Result<Self, RecurrenceError> {
        let cron = parse_rule(rule)?;
        let zone = time_zone(zone_name)?;
        if duration.is_zero() || duration > MAX_DURATION {
            return Err(RecurrenceError::Duration(duration));
        }
        if let Bound::Count(count) = bound {
            if !(1..=MAX_COUNT).contains(&count) {
                return Err(RecurrenceError::Count(count));
            }
        }
        let duration = SignedDuration::try_from(duration).map_err(|_| RecurrenceError::Duration(duration))?;
        let mut recurrence =
            Self { rule: rule.to_owned(), cron, zone_name: zone_name.to_owned(), zone, duration, bound, anchor, last_start: None };
        recurrence.last_start = match bound {
            Bound::Forever => None,
            Bound::Until(until) => Some(until),
            // Before any: nothing may start (a rule that never matches is refused by `check_apart`).
            Bound::Count(count) => Some(recurrence.starts_from(anchor).take(count as usize).last().unwrap_or(Timestamp::MIN)),
        };
        Ok(recurrence)
    }

    /// The windows from `anchor` (or `from`, if later) are `gap` apart at least, over a year
    /// (at least a thousand windows, at most [`CHECKED_OCCURRENCES`]): both daylight-saving
    /// changes are in it, where a rule's windows may come closer. And there is one.
    pub fn check_apart(&self, gap: Duration, from: Timestamp) -> Result<(), RecurrenceError> {
        let gap = SignedDuration::try_from(gap).unwrap_or(SignedDuration::ZERO);
        let from = from.max(self.anchor);
        let horizon = from.checked_add(CHECKED_SPAN).unwrap_or(Timestamp::MAX);
        let mut previous: Option<Occurrence> = None;
        let windows = self.bounded(self.starts_from(from)).map(|start| self.window(start));
        for (checked, next) in windows.enumerate() {
            if checked >= CHECKED_OCCURRENCES || (checked >= 1000 && next.start > horizon) {
                break;
            }
            if let Some(previous) = previous {
                if next.start < previous.end.checked_add(gap).unwrap_or(Timestamp::MAX) {
                    return Err(RecurrenceError::Overlap { previous: previous.start, previous_end: previous.end, next: next.start });
                }
            }
            previous = Some(next);
        }
        if previous.is_none() && self.last_start.is_none_or(|last| last >= from) {
            return Err(RecurrenceError::Never(from));
        }
        Ok(())
    }

    /// `starts` cut at the last start the bound allows.
    fn bounded<'a>(&'a self, starts: impl Iterator<Item = Timestamp> + 'a) -> impl Iterator<Item = Timestamp> + 'a {
        starts.take_while(move |start| self.last_start.is_none_or(|last| *start <= last))
    }

    pub fn rule(&self) -> &str {
        &self.rule
    }

    pub fn zone_name(&self) -> &str {
        &self.zone_name
    }

    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }

    pub fn duration(&self) -> SignedDuration {
        self.duration
    }

    pub fn bound(&self) -> Bound {
        self.bound
    }

    /// Every occurrence from the anchor on, in order, as the bound allows.
    pub fn occurrences(&self) -> impl Iterator<Item = Occurrence> + '_ {
        self.bounded(self.starts_from(self.anchor)).map(|start| self.window(start))
    }

    /// The occurrences that end after `after`, in order (one under way first, if any).
    /// Work: from a week before `after` (an occurrence lasts a week at most).
    pub fn upcoming(&self, after: Timestamp) -> impl Iterator<Item = Occurrence> + '_ {
        let from = after.checked_sub(self.duration).unwrap_or(Timestamp::MIN).max(self.anchor);
        self.bounded(self.starts_from(from)).map(|start| self.window(start)).filter(move |o| o.end > after)
    }

    /// The occurrence under way at `now`, or else the next one; `None` once all are over.
    pub fn current_or_next(&self, now: Timestamp) -> Option<Occurrence> {
        self.upcoming(now).next()
    }

    /// The occurrence the operator acts for at `now`: the one under way; or cooling down
    /// (`cool_down` after its end) unless the next one's `warm_up` has begun; else the next.
    /// Never the next while one is under way, whatever the warm-up. `None` once all are over
    /// and cooled down.
    pub fn in_effect(&self, now: Timestamp, warm_up: Duration, cool_down: Duration) -> Option<Occurrence> {
        let warm_up = SignedDuration::try_from(warm_up).unwrap_or(SignedDuration::ZERO);
        let cool_down = SignedDuration::try_from(cool_down).unwrap_or(SignedDuration::ZERO);
        let mut chosen: Option<Occurrence> = None;
        for occurrence in self.upcoming(now.checked_sub(cool_down).unwrap_or(Timestamp::MIN)) {
            let under_way = chosen.is_some_and(|c| now < c.end);
            if under_way || occurrence.start.checked_sub(warm_up).unwrap_or(Timestamp::MIN) > now {
                return chosen.or(Some(occurrence));
            }
            chosen = Some(occurrence);
        }
        chosen
    }

    /// The occurrence after `occurrence`, if any.
    pub fn after(&self, occurrence: &Occurrence) -> Option<Occurrence> {
        self.upcoming(occurrence.end).find(|o| o.start > occurrence.start)
    }

    fn window(&self, start: Timestamp) -> Occurrence {
        Occurrence { start, end: start.checked_add(self.duration).unwrap_or(Timestamp::MAX) }
    }

    /// Starts at or after `from`, in order. The rule is matched against local times as if
    /// the zone had no transitions (croner in UTC); each match is then placed in the zone,
    /// a skipped time moved forward by the gap, a repeated one at its earlier instant.
    ///
    /// Placing can reorder matches (in a zone with a 30-minute gap, 02:20 lands on 02:50,
    /// after 02:45) and make two land on one instant (02:30 moved to 03:30 when the rule also
    /// matches 03:30): placed starts wait in a sorted buffer, and one leaves it only once no
    /// later match can land before it, judged by the earliest instant of the latest match
    /// (jiff's `earlier`, which never decreases as local time goes on). Equal ones are one.
    fn starts_from(&self, from: Timestamp) -> impl Iterator<Item = Timestamp> + '_ {
        // Local times before `from` may still land at or after it (a gap moves them
        // forward): start a day earlier in local time and skip what lands before.
        let local_from = from.to_zoned(self.zone.clone()).datetime().checked_sub(SignedDuration::from_hours(26)).unwrap_or(DateTime::MIN);
        let cursor = local_from.to_zoned(TimeZone::UTC).unwrap_or_else(|_| Zoned::new(Timestamp::MIN, TimeZone::UTC));
        let mut matches = self.cron.iter_from(cursor, croner::Direction::Forward);
        let mut placed: std::collections::BTreeSet<Timestamp> = std::collections::BTreeSet::new();
        let mut exhausted = false;
        std::iter::from_fn(move || loop {
            // The earliest a match not yet placed can land: `None` once there are no more.
            let floor = if exhausted {
                None
            } else {
                match matches.next() {
                    Some(local) => {
                        let ambiguous = self.zone.to_ambiguous_zoned(local.datetime());
                        match (ambiguous.clone().compatible(), ambiguous.earlier()) {
                            (Ok(at), Ok(earliest)) => {
                                placed.insert(at.timestamp());
                                Some(earliest.timestamp())
                            }
                            _ => {
                                exhausted = true;
                                None
                            }
                        }
                    }
                    None => {
                        exhausted = true;
                        None
                    }
                }
            };
            let ready = placed.first().copied().filter(|first| floor.is_none_or(|floor| *first < floor));
            match ready {
                Some(first) => {
                    placed.remove(&first);
                    if first >= from {
                        return Some(first);
                    }
                }
                None if exhausted && placed.is_empty() => return None,
                None => {}
            }
        })
    }
}

/// An occurrence as `event plan` prints it: start and end in RFC 3339 with the zone's
/// offset at each.
pub fn format_window(occurrence: &Occurrence, zone: &TimeZone) -> String {
    let at = |t: Timestamp| t.to_zoned(zone.clone()).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string();
    format!("{} {}", at(occurrence.start), at(occurrence.end))
}

#[cfg(test)]
mod tests;
