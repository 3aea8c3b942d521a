//! Time as this project handles it, with jiff: instants as seconds and nanoseconds for
//! signatures and SQL, and durations as people write them in flags, environment variables and the CRD (`30s`,
//! `1h30m`, `500ms`, `7d`), read and printed by jiff's friendly format rather than a parser
//! of our own. Days and weeks count as 24 hours and 7 days (a window, a lease or a timeout is
//! an amount of time, not a calendar span); years and months are refused, having no fixed
//! length.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jiff::{SignedDuration, Span, SpanRelativeTo, Timestamp};

/// `at` as whole seconds since the epoch and the nanoseconds past them, always in
/// `0..1_000_000_000` (floored: an instant just before 1970 is `(-1, 999_999_999)`), the split
/// record signatures are computed over and SQL timestamps are built from.
pub fn unix_seconds_and_nanos(at: Timestamp) -> (i64, u32) {
    let (seconds, nanos) = (at.as_second(), at.subsec_nanosecond());
    if nanos < 0 {
        (seconds - 1, (nanos + 1_000_000_000) as u32)
    } else {
        (seconds, nanos as u32)
    }
}

/// `text` as a non-negative duration: jiff's friendly format (`1h30m`, `1h 30m`, `90 minutes`)
/// or ISO 8601 (`PT1H30M`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let refused = |why: String| format!("{text:?} is not a duration such as 30s, 1h30m or 500ms: {why}");
    let span: Span = text.trim().parse().map_err(|e: jiff::Error| refused(e.to_string()))?;
    if span.get_years() != 0 || span.get_months() != 0 {
        return Err(refused("years and months have no fixed length; use days or hours".into()));
    }
    let signed = span.to_duration(SpanRelativeTo::days_are_24_hours()).map_err(|e| refused(e.to_string()))?;
    Duration::try_from(signed).map_err(|_| refused("it is negative".into()))
}

/// `duration` the way [`parse_duration`] reads it back (`1h 30m`, `500ms`).
pub fn format_duration(duration: Duration) -> String {
    match SignedDuration::try_from(duration) {
        Ok(signed) => format!("{signed:#}"),
        Err(_) => format!("{}s", duration.as_secs()),
    }
}

/// A command-line or environment duration: parsed by [`parse_duration`], shown (in `--help`
/// defaults) by [`format_duration`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FriendlyDuration(pub Duration);

impl FromStr for FriendlyDuration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_duration(text).map(Self)
    }
}

impl fmt::Display for FriendlyDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl From<Duration> for FriendlyDuration {
    fn from(duration: Duration) -> Self {
        Self(duration)
    }
}

impl From<FriendlyDuration> for Duration {
    fn from(duration: FriendlyDuration) -> Self {
        duration.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_split_into_floored_seconds_and_nanoseconds() {
        let split = |text: &str| unix_seconds_and_nanos(text.parse().unwrap());
        assert_eq!(split("2026-11-27T10:00:00.123456789Z"), (1_795_773_600, 123_456_789));
        assert_eq!(split("2026-11-27T19:00:00.5+09:00"), (1_795_773_600, 500_000_000));
        assert_eq!(split("1969-12-31T23:59:59.000000001Z"), (-1, 1));
        assert_eq!(split("1969-12-31T23:59:59Z"), (-1, 0));
    }

    #[test]
    fn the_forms_people_write() {
        for (text, seconds) in [
            ("30s", 30.0),
            ("1h30m", 5400.0),
            ("1h 30m", 5400.0),
            ("90 minutes", 5400.0),
            ("500ms", 0.5),
            ("0s", 0.0),
            ("PT30S", 30.0),
            ("7d", 604_800.0),
            ("1w", 604_800.0),
            ("1.5s", 1.5),
        ] {
            assert_eq!(parse_duration(text).map(|d| d.as_secs_f64()), Ok(seconds), "{text}");
        }
    }

    #[test]
    fn what_is_refused_says_why() {
        for (text, why) in [
            ("5", "unit"),
            ("-5s", "negative"),
            ("1y", "no fixed length"),
            ("2mo", "no fixed length"),
            ("", "duration"),
            ("1h30m1h", "largest to smallest"),
            ("soon", "duration"),
        ] {
            let error = parse_duration(text).unwrap_err();
            assert!(error.contains(why) && error.contains("1h30m"), "{text}: {error}");
        }
    }

    #[test]
    fn what_is_printed_reads_back() {
        for duration in [Duration::ZERO, Duration::from_millis(500), Duration::from_secs(5400), Duration::from_millis(20)] {
            assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }
        assert_eq!(FriendlyDuration(Duration::from_secs(300)).to_string(), "5m");
    }
}
