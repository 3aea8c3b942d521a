//! `coupon-service event export`: an event's coupons out of SQL, the real binary against
//! each of the three databases. More rows than one page (the export reads by slot, a page
//! at a time), a user id CSV must quote, and an event SQL holds under two incarnations.

use std::path::Path;
use std::process::Output;

use coupon_service::sql::{CouponRow, Position, Store};
use coupon_tests::{migrated_store, mysql_url, postgres_url, sqlite_url, unique};
use jiff::Timestamp;
use serde_json::Value;

const NAMESPACE: &str = "export";
/// More than two of the export's pages (1000 rows each), and not a multiple of one.
const COUPONS: i64 = 2345;

fn export(database_url: &str, args: &[&str]) -> Output {
    let binary = Path::new(env!("CARGO_BIN_EXE_coupon-service-under-test"));
    std::process::Command::new(binary)
        .args(["event", "export"])
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("COUPON_NAMESPACE", NAMESPACE)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "export failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// The user of slot `slot`: slot 7's has a comma and a quote, which CSV must quote.
fn user(slot: i64) -> String {
    if slot == 7 {
        "a,\"quoted\"-user".to_owned()
    } else {
        format!("user-{slot}")
    }
}

fn issued_at(slot: i64) -> Timestamp {
    Timestamp::from_second(1_900_000_000 + slot).unwrap()
}

/// Writes `COUPONS` coupons of `event` the way the consumer does.
async fn write_coupons(store: &Store, event: &str) {
    store.ensure_slots(event, COUPONS).await.unwrap();
    let rows: Vec<(CouponRow, Position)> = (1..=COUPONS)
        .map(|slot| {
            let row = CouponRow { event: event.to_owned(), user_id: user(slot), slot, ordinal: 1, issued_at: issued_at(slot), mac: None };
            (row, Position { topic: "export".into(), partition: 0, offset: slot })
        })
        .collect();
    for chunk in rows.chunks(500) {
        store.write_batch(chunk, &[]).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_writes_every_coupon_once_in_slot_order_as_csv_and_json_lines_on_every_database() {
    for database in [postgres_url(), mysql_url(), sqlite_url()] {
        let store = migrated_store(&database).await;
        let name = unique("ex");
        let event = format!("{NAMESPACE}/{name}");
        write_coupons(&store, &event).await;

        let csv = stdout(&export(&database, &[&name, "--format", "csv"]));
        let mut reader = csv::Reader::from_reader(csv.as_bytes());
        assert_eq!(reader.headers().unwrap(), vec!["user", "slot", "occurrence", "issued_at"], "{database}");
        let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(records.len() as i64, COUPONS, "{database}: one line per coupon");
        for (record, slot) in records.iter().zip(1..) {
            assert_eq!(record[0], user(slot), "{database}");
            assert_eq!(record[1], slot.to_string(), "{database}: by slot, none twice");
            assert_eq!(&record[2], "", "{database}: an event of one window has no occurrence");
            assert_eq!(record[3].parse::<Timestamp>().unwrap(), issued_at(slot), "{database}");
        }

        let jsonl = stdout(&export(&database, &[&name, "--format", "jsonl"]));
        let lines: Vec<Value> = jsonl.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
        assert_eq!(lines.len() as i64, COUPONS, "{database}");
        for (line, slot) in lines.iter().zip(1..) {
            let expected = serde_json::json!({
                "user": user(slot), "slot": slot, "occurrence": null, "issuedAt": issued_at(slot).to_string(),
            });
            assert_eq!(*line, expected, "{database}");
        }
    }
}

/// The same name under two incarnations (a CouponEvent deleted and made again) needs
/// `--incarnation`, and then exports that one's coupons only; a name without coupons is an
/// error, not an empty file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_asks_which_incarnation_and_refuses_an_event_without_coupons() {
    let database = postgres_url();
    let store = migrated_store(&database).await;
    let name = unique("twice");
    for incarnation in ["first-uid", "second-uid"] {
        let event = format!("{NAMESPACE}/{name}@{incarnation}");
        store.ensure_slots(&event, 1).await.unwrap();
        let row = CouponRow { event: event.clone(), user_id: incarnation.into(), slot: 1, ordinal: 1, issued_at: issued_at(1), mac: None };
        store.write_batch(&[(row, Position { topic: "export".into(), partition: 0, offset: 1 })], &[]).await.unwrap();
    }
    let ambiguous = export(&database, &[&name]);
    assert!(!ambiguous.status.success());
    let said = String::from_utf8_lossy(&ambiguous.stderr);
    assert!(said.contains("--incarnation") && said.contains("first-uid") && said.contains("second-uid"), "{said}");
    assert!(ambiguous.stdout.is_empty(), "nothing written before the refusal");

    let second = stdout(&export(&database, &[&name, "--incarnation", "second-uid", "--format", "jsonl"]));
    let lines: Vec<Value> = second.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["user"], "second-uid");

    let wrong = export(&database, &[&name, "--incarnation", "third-uid"]);
    assert!(!wrong.status.success() && wrong.stdout.is_empty(), "an incarnation without coupons is an error, not an empty file");
    let none = export(&database, &[&unique("never")]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no coupons"), "{}", String::from_utf8_lossy(&none.stderr));
}

/// A recurring event's coupons, one key per occurrence: exported together, occurrence by
/// occurrence, each line naming its occurrence's start; or one occurrence alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recurring_events_occurrences_are_exported_with_their_start() {
    let database = sqlite_url();
    let store = migrated_store(&database).await;
    let name = unique("weekly");
    // Written out of order: the export orders them by occurrence.
    for (occurrence, user) in [(1_765_188_000, "b"), (1_764_583_200, "a")] {
        let event = format!("{NAMESPACE}/{name}@uid-1-o{occurrence}");
        store.ensure_slots(&event, 1).await.unwrap();
        let row = CouponRow { event, user_id: user.into(), slot: 1, ordinal: 1, issued_at: issued_at(1), mac: None };
        store.write_batch(&[(row, Position { topic: "export".into(), partition: 0, offset: 1 })], &[]).await.unwrap();
    }
    let csv = stdout(&export(&database, &[&name]));
    let lines: Vec<&str> = csv.lines().collect();
    let issued = issued_at(1).to_string();
    assert_eq!(
        lines,
        ["user,slot,occurrence,issued_at", &format!("a,1,2025-12-01T10:00:00Z,{issued}"), &format!("b,1,2025-12-08T10:00:00Z,{issued}")]
    );
    let one = stdout(&export(&database, &[&name, "--incarnation", "uid-1-o1765188000", "--format", "jsonl"]));
    let lines: Vec<Value> = one.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!((lines[0]["user"].as_str(), lines[0]["occurrence"].as_str()), (Some("b"), Some("2025-12-08T10:00:00Z")));
    let all = stdout(&export(&database, &[&name, "--incarnation", "uid-1"]));
    assert_eq!(all.lines().count(), 3, "every occurrence of the incarnation");
}
