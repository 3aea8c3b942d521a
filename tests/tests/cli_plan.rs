//! `coupon-service event plan`: the real binary prints the windows of a recurring schedule
//! across both daylight-saving changes of two zones that have them (New York, Berlin) and in
//! one that has none (Seoul), and refuses rules it cannot honour.

use std::path::Path;
use std::process::Output;

fn plan(args: &[&str]) -> Output {
    let binary = Path::new(env!("CARGO_BIN_EXE_coupon-service-under-test"));
    std::process::Command::new(binary).args(["event", "plan"]).args(args).output().unwrap()
}

fn lines(args: &[&str]) -> Vec<String> {
    let output = plan(args);
    assert!(output.status.success(), "plan {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().lines().map(str::to_owned).collect()
}

#[test]
fn new_york_across_both_changes() {
    // 2026-03-08: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist and opens at 03:30.
    let spring = lines(&[
        "--every",
        "30 2 * * *",
        "--time-zone",
        "America/New_York",
        "--duration",
        "30m",
        "--from",
        "2026-03-07T00:00:00-05:00",
        "--count",
        "3",
    ]);
    assert_eq!(
        spring,
        [
            "2026-03-07T02:30:00-05:00 2026-03-07T03:00:00-05:00",
            "2026-03-08T03:30:00-04:00 2026-03-08T04:00:00-04:00",
            "2026-03-09T02:30:00-04:00 2026-03-09T03:00:00-04:00",
        ]
    );
    // 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice and opens once, at
    // the earlier (EDT) one. Its 30 minutes are real time: it closes at 01:00 EST.
    let fall = lines(&[
        "--every",
        "30 1 * * *",
        "--time-zone",
        "America/New_York",
        "--duration",
        "30m",
        "--from",
        "2026-10-31T00:00:00-04:00",
        "--count",
        "3",
    ]);
    assert_eq!(
        fall,
        [
            "2026-10-31T01:30:00-04:00 2026-10-31T02:00:00-04:00",
            "2026-11-01T01:30:00-04:00 2026-11-01T01:00:00-05:00",
            "2026-11-02T01:30:00-05:00 2026-11-02T02:00:00-05:00",
        ]
    );
}

#[test]
fn berlin_across_both_changes() {
    let spring = lines(&[
        "--every",
        "30 2 * * *",
        "--time-zone",
        "Europe/Berlin",
        "--duration",
        "1h",
        "--from",
        "2026-03-28T00:00:00+01:00",
        "--count",
        "3",
    ]);
    assert_eq!(
        spring,
        [
            "2026-03-28T02:30:00+01:00 2026-03-28T03:30:00+01:00",
            "2026-03-29T03:30:00+02:00 2026-03-29T04:30:00+02:00",
            "2026-03-30T02:30:00+02:00 2026-03-30T03:30:00+02:00",
        ]
    );
    // 2026-10-25: 03:00 CEST falls back to 02:00 CET. A window over the change lasts its
    // duration of real time: 02:30 CEST plus an hour is 02:30 CET.
    let fall = lines(&[
        "--every",
        "30 2 * * *",
        "--time-zone",
        "Europe/Berlin",
        "--duration",
        "1h",
        "--from",
        "2026-10-24T00:00:00+02:00",
        "--count",
        "3",
    ]);
    assert_eq!(
        fall,
        [
            "2026-10-24T02:30:00+02:00 2026-10-24T03:30:00+02:00",
            "2026-10-25T02:30:00+02:00 2026-10-25T02:30:00+01:00",
            "2026-10-26T02:30:00+01:00 2026-10-26T03:30:00+01:00",
        ]
    );
}

#[test]
fn seoul_weekdays_without_daylight_saving() {
    // 2026-03-06 is a Friday; Seoul keeps +09:00 all year.
    let march = lines(&[
        "--every",
        "0 10 * * MON-FRI",
        "--time-zone",
        "Asia/Seoul",
        "--duration",
        "30m",
        "--from",
        "2026-03-06T00:00:00Z",
        "--count",
        "2",
    ]);
    assert_eq!(march, ["2026-03-06T10:00:00+09:00 2026-03-06T10:30:00+09:00", "2026-03-09T10:00:00+09:00 2026-03-09T10:30:00+09:00"]);
    let november = lines(&[
        "--every",
        "0 10 * * MON-FRI",
        "--time-zone",
        "Asia/Seoul",
        "--duration",
        "30m",
        "--from",
        "2026-11-01T00:00:00Z",
        "--count",
        "1",
    ]);
    assert_eq!(november, ["2026-11-02T10:00:00+09:00 2026-11-02T10:30:00+09:00"]);
    // Ten by default.
    assert_eq!(lines(&["--every", "0 10 * * *", "--time-zone", "Asia/Seoul", "--duration", "30m"]).len(), 10);
}

#[test]
fn rules_it_cannot_honour_are_refused_with_the_reason() {
    for (args, says) in [
        (vec!["--every", "0 10 * *", "--time-zone", "Asia/Seoul", "--duration", "30m"], "five-field"),
        (vec!["--every", "0 0 10 * * *", "--time-zone", "Asia/Seoul", "--duration", "30m"], "five-field"),
        (vec!["--every", "0 10 * * *", "--time-zone", "Asia/Atlantis", "--duration", "30m"], "IANA"),
        (vec!["--every", "* * * * *", "--time-zone", "UTC", "--duration", "2m"], "overlap"),
        (vec!["--every", "0 10 * * *", "--time-zone", "UTC", "--duration", "169h"], "168h"),
        (vec!["--every", "0 10 * * *", "--time-zone", "UTC", "--duration", "30m", "--count", "0"], "count"),
    ] {
        let output = plan(&args);
        assert!(!output.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?} printed windows");
    }
}
