//! Time as this project handles it, with jiff: instants as seconds and nanoseconds for
//! signatures and SQL, and durations as people write them in flags, environment variables
//! and the CRD (`30s`, `1h30m`, `500ms`, `7d`), read and printed by jiff's friendly format.
//! Days and weeks count as 24 hours and 7 days (a window, a lease or a timeout is an amount
//! of time, not a calendar span); years and months are refused, having no fixed length.
//!
//! jiff wants units from the largest down, each once. Kubernetes manifests and the chart's
//! schema follow Go's `time.ParseDuration`, which takes them in any order, repeated and with
//! fractions (`30s5m`, `1.5m30s`): what jiff refuses in that form is read as Go reads it (with
//! `d` and `w` too, and spaces between the parts, as humantime read them). Every duration is
//! at most Go's longest, 2562047h (about 292 years): longer ones only overflow timers.

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

/// The instant `ms` milliseconds after the epoch, as Redis keeps an event's window. Redis
/// holds what a `Timestamp` gave it; a value outside jiff's range is clamped to its ends
/// rather than read as something that is not a time.
pub fn timestamp_from_millis_clamped(ms: i64) -> Timestamp {
    // (Clamping `ms` to the ends' milliseconds first is not enough: jiff refuses even those,
    // and the fall-back then was the epoch.)
    Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 { Timestamp::MIN } else { Timestamp::MAX })
}

/// `text` as a non-negative duration: jiff's friendly format (`1h30m`, `1h 30m`, `90 minutes`),
/// ISO 8601 (`PT1H30M`), or Go's form (`30s5m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let refused = |why: String| format!("{text:?} is not a duration such as 30s, 1h30m or 500ms: {why}");
    let span: Span = match text.trim().parse() {
        Ok(span) => span,
        Err(error) => return parse_go_duration(text.trim()).ok_or_else(|| refused(jiff::Error::to_string(&error))),
    };
    if span.get_years() != 0 || span.get_months() != 0 {
        return Err(refused("years and months have no fixed length; use days or hours".into()));
    }
    let signed = span.to_duration(SpanRelativeTo::days_are_24_hours()).map_err(|e| refused(e.to_string()))?;
    let duration = Duration::try_from(signed).map_err(|_| refused("it is negative".into()))?;
    if duration.as_nanos() > LONGEST_NANOS {
        return Err(refused("longer than 2562047h (about 292 years)".into()));
    }
    Ok(duration)
}

/// The longest duration accepted: Go's (`i64::MAX` nanoseconds).
const LONGEST_NANOS: u128 = i64::MAX as u128;

/// Go's `time.ParseDuration` for non-negative values: numbers with an optional fraction, each
/// followed by `ns`, `us`, `µs`, `ms`, `s`, `m`, `h` (or `d`, `w`), in any order, spaces
/// allowed between the parts; `0` alone. `None` for anything else, or past Go's longest.
fn parse_go_duration(text: &str) -> Option<Duration> {
    match text {
        "" => return None,
        "0" => return Some(Duration::ZERO),
        _ => {}
    }
    let mut rest = text;
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        let after = after.trim_start();
        let unit_end = after.find(|c: char| c.is_ascii_digit() || c == '.' || c.is_whitespace()).unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            "w" => 604_800_000_000_000,
            _ => return None,
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return None;
        }
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
        let mut value = whole.checked_mul(unit_nanos)?;
        // Digits past a nanosecond of an hour change nothing.
        let fraction = &fraction[..fraction.len().min(20)];
        if !fraction.is_empty() {
            let scale = 10u128.pow(fraction.len() as u32);
            value = value.checked_add(fraction.parse::<u128>().ok()?.checked_mul(unit_nanos)? / scale)?;
        }
        nanos = nanos.checked_add(value).filter(|nanos| *nanos <= LONGEST_NANOS)?;
        rest = after.trim_start();
    }
    Some(Duration::new((nanos / 1_000_000_000) as u64, (nanos % 1_000_000_000) as u32))
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
    fn milliseconds_out_of_range_are_clamped_to_the_ends() {
        assert_eq!(timestamp_from_millis_clamped(1_500).as_millisecond(), 1_500);
        assert_eq!(timestamp_from_millis_clamped(i64::MAX).as_millisecond(), Timestamp::MAX.as_millisecond());
        assert_eq!(timestamp_from_millis_clamped(i64::MIN).as_millisecond(), Timestamp::MIN.as_millisecond());
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
            // Go's form, as manifests and the chart's schema take it.
            ("30s5m", 330.0),
            ("5m5m", 600.0),
            ("500ms1s", 1.5),
            ("1.5m30s", 120.0),
            ("1.5h", 5400.0),
            ("0", 0.0),
            ("250us", 0.00025),
            (".5s", 0.5),
            ("30s 5m", 330.0),
            ("1h 30s 5m", 3930.0),
            ("12h1d", 129_600.0),
            ("1.5d", 129_600.0),
            ("1d5h1d", 190_800.0),
            (" 30s5m\n", 330.0),
            ("2562047h", 9_223_369_200.0),
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
            ("soon", "duration"),
            ("1.2.3s", "duration"),
            ("30s5", "duration"),
            ("1 0s", "duration"),
            ("99999999999999999999999999999999999999999h", "duration"),
            ("9999999999999999999s", "duration"),
            ("2562048h", "duration"),
            ("100000w", "292 years"),
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
