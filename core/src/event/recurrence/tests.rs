//! Daylight saving at both changes in two zones that have it (New York, Berlin) and one
//! that does not (Seoul), bounds, overlaps and refusals.

use super::*;

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn minutes(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

fn recurrence(rule: &str, zone: &str, duration: Duration, bound: Bound, anchor: &str) -> Recurrence {
    Recurrence::new(rule, zone, duration, bound, t(anchor), Duration::ZERO).unwrap()
}

/// The first `n` starts, in UTC.
fn starts(r: &Recurrence, n: usize) -> Vec<Timestamp> {
    r.occurrences().take(n).map(|o| o.start).collect()
}

fn ts(list: &[&str]) -> Vec<Timestamp> {
    list.iter().map(|s| t(s)).collect()
}

#[test]
fn new_york_spring_forward_moves_a_skipped_time_forward_by_the_gap() {
    // 2026-03-08 02:00 EST jumps to 03:00 EDT: 02:30 does not exist and becomes 03:30 EDT.
    let r = recurrence("30 2 * * *", "America/New_York", minutes(30), Bound::Forever, "2026-03-07T00:00:00-05:00");
    assert_eq!(starts(&r, 3), ts(&["2026-03-07T07:30:00Z", "2026-03-08T07:30:00Z", "2026-03-09T06:30:00Z"]));
    let plan: Vec<String> = r.occurrences().take(3).map(|o| format_window(&o, r.zone())).collect();
    assert_eq!(plan[1], "2026-03-08T03:30:00-04:00 2026-03-08T04:00:00-04:00");
}

#[test]
fn new_york_fall_back_runs_a_repeated_time_once_at_its_earlier_instant() {
    // 2026-11-01 02:00 EDT falls back to 01:00 EST: 01:30 happens twice; the EDT one counts.
    let r = recurrence("30 1 * * *", "America/New_York", minutes(30), Bound::Forever, "2026-10-31T00:00:00-04:00");
    assert_eq!(starts(&r, 3), ts(&["2026-10-31T05:30:00Z", "2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]));
}

#[test]
fn berlin_spring_forward_and_fall_back() {
    // 2026-03-29 02:00 CET jumps to 03:00 CEST.
    let spring = recurrence("30 2 * * *", "Europe/Berlin", minutes(30), Bound::Forever, "2026-03-28T00:00:00+01:00");
    assert_eq!(starts(&spring, 3), ts(&["2026-03-28T01:30:00Z", "2026-03-29T01:30:00Z", "2026-03-30T00:30:00Z"]));
    // 2026-10-25 03:00 CEST falls back to 02:00 CET: 02:30 twice, the CEST one counts.
    let fall = recurrence("30 2 * * *", "Europe/Berlin", minutes(30), Bound::Forever, "2026-10-24T00:00:00+02:00");
    assert_eq!(starts(&fall, 3), ts(&["2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]));
}

#[test]
fn every_day_has_exactly_one_occurrence_of_a_daily_rule_across_a_year() {
    for zone in ["America/New_York", "Europe/Berlin", "Asia/Seoul"] {
        for rule in ["30 2 * * *", "30 1 * * *", "0 10 * * *"] {
            let r = recurrence(rule, zone, minutes(30), Bound::Count(366), "2026-01-01T00:00:00Z");
            let tz = r.zone().clone();
            let days: Vec<_> = r.occurrences().map(|o| o.start.to_zoned(tz.clone()).date()).collect();
            assert_eq!(days.len(), 366, "{zone} {rule}");
            for pair in days.windows(2) {
                assert_eq!(pair[0].tomorrow().unwrap(), pair[1], "{zone} {rule}: one a day");
            }
        }
    }
}

#[test]
fn a_rule_every_half_hour_through_the_gap_keeps_each_instant_once() {
    // Local 02:00 and 02:30 land on 03:00 and 03:30, which the rule matches too: once each.
    let r = recurrence("*/30 * * * *", "America/New_York", minutes(10), Bound::Forever, "2026-03-08T01:00:00-05:00");
    assert_eq!(
        starts(&r, 5),
        ts(&["2026-03-08T06:00:00Z", "2026-03-08T06:30:00Z", "2026-03-08T07:00:00Z", "2026-03-08T07:30:00Z", "2026-03-08T08:00:00Z"])
    );
}

#[test]
fn seoul_has_no_daylight_saving_and_weekday_names_work() {
    // 2026-12-04 is a Friday.
    let r = recurrence("0 10 * * MON-FRI", "Asia/Seoul", minutes(30), Bound::Forever, "2026-12-04T00:00:00+09:00");
    assert_eq!(starts(&r, 3), ts(&["2026-12-04T01:00:00Z", "2026-12-07T01:00:00Z", "2026-12-08T01:00:00Z"]), "Friday, then Monday");
    let first = r.occurrences().next().unwrap();
    assert_eq!(format_window(&first, r.zone()), "2026-12-04T10:00:00+09:00 2026-12-04T10:30:00+09:00");
    // Summer: still +09:00, still 01:00 UTC.
    let summer = recurrence("0 10 * * *", "Asia/Seoul", minutes(30), Bound::Forever, "2026-07-01T00:00:00Z");
    assert_eq!(starts(&summer, 1), ts(&["2026-07-01T01:00:00Z"]));
}

#[test]
fn count_and_until_bound_the_occurrences() {
    let counted = recurrence("0 10 * * *", "Asia/Seoul", minutes(30), Bound::Count(3), "2026-12-01T00:00:00Z");
    assert_eq!(counted.occurrences().count(), 3);
    let until = recurrence("0 10 * * *", "Asia/Seoul", minutes(30), Bound::Until(t("2026-12-03T01:00:00Z")), "2026-12-01T00:00:00Z");
    assert_eq!(starts(&until, 10), ts(&["2026-12-01T01:00:00Z", "2026-12-02T01:00:00Z", "2026-12-03T01:00:00Z"]));
    // Under way, next, and over.
    let during = t("2026-12-02T01:10:00Z");
    assert_eq!(counted.current_or_next(during).map(|o| o.start), Some(t("2026-12-02T01:00:00Z")));
    assert_eq!(counted.current_or_next(t("2026-12-02T01:30:00Z")).map(|o| o.start), Some(t("2026-12-03T01:00:00Z")));
    assert_eq!(counted.current_or_next(t("2026-12-03T01:30:00Z")), None);
    assert_eq!(until.current_or_next(t("2026-12-03T01:30:00Z")), None);
    // Unbounded: the current one is found from a week back, not from the anchor.
    let forever = recurrence("0 10 * * *", "Asia/Seoul", minutes(30), Bound::Forever, "2000-01-01T00:00:00Z");
    assert_eq!(forever.current_or_next(during).map(|o| o.start), Some(t("2026-12-02T01:00:00Z")));
    // Not before the anchor.
    let later = recurrence("0 10 * * *", "Asia/Seoul", minutes(30), Bound::Forever, "2027-01-01T00:00:00Z");
    assert_eq!(later.current_or_next(during).map(|o| o.start), Some(t("2027-01-01T01:00:00Z")));
}

#[test]
fn overlapping_windows_and_bad_parts_are_refused() {
    let anchor = t("2026-12-01T00:00:00Z");
    let make =
        |rule: &str, zone: &str, duration: Duration, bound: Bound, gap: Duration| Recurrence::new(rule, zone, duration, bound, anchor, gap);
    assert!(matches!(make("* * * * *", "UTC", minutes(2), Bound::Forever, Duration::ZERO), Err(RecurrenceError::Overlap { .. })));
    assert!(make("0 * * * *", "UTC", minutes(30), Bound::Forever, Duration::ZERO).is_ok());
    // The warm-up must fit between two occurrences.
    assert!(matches!(make("0 * * * *", "UTC", minutes(30), Bound::Forever, minutes(45)), Err(RecurrenceError::Overlap { .. })));
    assert!(matches!(make("0 10 * * *", "Mars/Olympus", minutes(30), Bound::Forever, Duration::ZERO), Err(RecurrenceError::TimeZone(_))));
    for rule in ["0 0 10 * * *", "0 10 * *", "61 10 * * *", "0 10 * * XYZ", ""] {
        assert!(matches!(make(rule, "UTC", minutes(30), Bound::Forever, Duration::ZERO), Err(RecurrenceError::Rule { .. })), "{rule:?}");
    }
    assert!(matches!(make("0 10 * * *", "UTC", Duration::ZERO, Bound::Forever, Duration::ZERO), Err(RecurrenceError::Duration(_))));
    assert!(matches!(
        make("0 10 * * MON", "UTC", minutes(168 * 60 + 1), Bound::Forever, Duration::ZERO),
        Err(RecurrenceError::Duration(_))
    ));
    assert!(make("0 10 * * MON", "UTC", minutes(168 * 60), Bound::Forever, Duration::ZERO).is_ok());
    assert_eq!(make("0 10 * * *", "UTC", minutes(30), Bound::Count(0), Duration::ZERO).unwrap_err(), RecurrenceError::Count(0));
    assert_eq!(
        make("0 10 * * *", "UTC", minutes(30), Bound::Count(MAX_COUNT + 1), Duration::ZERO).unwrap_err(),
        RecurrenceError::Count(MAX_COUNT + 1)
    );
    assert!(matches!(make("0 0 31 2 *", "UTC", minutes(30), Bound::Forever, Duration::ZERO), Err(RecurrenceError::Never(_))));
}

#[test]
fn an_occurrence_stays_in_effect_through_its_cool_down_unless_the_next_warms_up() {
    // Daily at 10:00 Seoul (01:00Z) for 30 minutes, warm-up 5 minutes, cool-down 2.
    let r = recurrence("0 10 * * *", "Asia/Seoul", minutes(30), Bound::Count(3), "2026-12-01T00:00:00Z");
    let at = |now: &str| r.in_effect(t(now), minutes(5), minutes(2)).map(|o| o.start);
    assert_eq!(at("2026-11-30T00:00:00Z"), Some(t("2026-12-01T01:00:00Z")), "before the first: the first");
    assert_eq!(at("2026-12-01T01:10:00Z"), Some(t("2026-12-01T01:00:00Z")), "under way");
    assert_eq!(at("2026-12-01T01:31:59Z"), Some(t("2026-12-01T01:00:00Z")), "cooling down");
    assert_eq!(at("2026-12-01T01:32:00Z"), Some(t("2026-12-02T01:00:00Z")), "then the next");
    // Hourly for 50 minutes with a 5-minute warm-up and a 20-minute cool-down: the next
    // one's warm-up ends the cool-down.
    let hourly = recurrence("0 * * * *", "UTC", minutes(50), Bound::Forever, "2026-12-01T00:00:00Z");
    let at = |now: &str| hourly.in_effect(t(now), minutes(5), minutes(20)).map(|o| o.start);
    assert_eq!(at("2026-12-01T00:54:59Z"), Some(t("2026-12-01T00:00:00Z")));
    assert_eq!(at("2026-12-01T00:55:00Z"), Some(t("2026-12-01T01:00:00Z")));
    let at = |now: &str| r.in_effect(t(now), minutes(5), minutes(2)).map(|o| o.start);
    assert_eq!(at("2026-12-03T01:31:59Z"), Some(t("2026-12-03T01:00:00Z")), "the last one, cooling down");
    assert_eq!(at("2026-12-03T01:32:00Z"), None, "all over");
    let first = r.occurrences().next().unwrap();
    assert_eq!(r.after(&first).map(|o| o.start), Some(t("2026-12-02T01:00:00Z")));
    let last = r.occurrences().last().unwrap();
    assert_eq!(r.after(&last), None);
}

#[test]
fn a_half_hour_gap_keeps_every_match_in_order() {
    // Lord Howe moves from +10:30 to +11:00 at 02:00 on 2026-10-04: local 02:20 lands on
    // 02:50, after the real 02:45; both stay, in order.
    let r = recurrence("20,45 2 * * *", "Australia/Lord_Howe", minutes(1), Bound::Forever, "2026-10-02T12:00:00Z");
    assert_eq!(
        starts(&r, 6),
        ts(&[
            "2026-10-02T15:50:00Z",
            "2026-10-02T16:15:00Z",
            "2026-10-03T15:45:00Z",
            "2026-10-03T15:50:00Z",
            "2026-10-04T15:20:00Z",
            "2026-10-04T15:45:00Z",
        ])
    );
}

#[test]
fn windows_that_come_closer_at_a_change_of_clocks_are_refused() {
    // Every two hours for 90 minutes in New York: 00:00 and 03:00 EDT (the 02:00 moved) on
    // 2026-03-08 are an hour apart. The check looks a year ahead from now (or the anchor).
    let r = Recurrence::parse("0 */2 * * *", "America/New_York", minutes(90), Bound::Forever, Timestamp::MIN).unwrap();
    assert!(matches!(r.check_apart(Duration::ZERO, t("2026-03-01T00:00:00Z")), Err(RecurrenceError::Overlap { .. })));
    assert!(r.check_apart(Duration::ZERO, t("2026-03-09T00:00:00Z")).is_err(), "the next spring is within a year");
    let seoul = Recurrence::parse("0 */2 * * *", "Asia/Seoul", minutes(90), Bound::Forever, Timestamp::MIN).unwrap();
    assert_eq!(seoul.check_apart(Duration::ZERO, t("2026-03-01T00:00:00Z")), Ok(()));
}

#[test]
fn the_next_occurrence_never_takes_over_one_under_way() {
    // Hourly for 50 minutes; a 15-minute warm-up of the next would begin at :45, while this
    // one is open until :50 (`validate` refuses such a spec; this is the last line).
    let r = recurrence("0 * * * *", "UTC", minutes(50), Bound::Forever, "2026-12-01T00:00:00Z");
    assert_eq!(r.in_effect(t("2026-12-01T00:46:00Z"), minutes(15), Duration::ZERO).map(|o| o.start), Some(t("2026-12-01T00:00:00Z")));
    assert_eq!(r.in_effect(t("2026-12-01T00:50:00Z"), minutes(15), Duration::ZERO).map(|o| o.start), Some(t("2026-12-01T01:00:00Z")));
}
