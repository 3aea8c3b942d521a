//! The checked-in CRD matches the Rust types, and every example parses and validates.
//!
//! What admission refuses, and in which words, is the real API server's to say:
//! tests/kube/admission-cases.yaml holds its verdicts, sent to a kube-apiserver by
//! tests/python/test_admission.py. Here kube's client-side CEL Validator is kept as a fast
//! pre-check that must reach the same verdicts, and the operator's own check (`spec.validate()`,
//! for clusters where CEL is off) must refuse what that file says it refuses.

use coupon_operator::crd::CouponEvent;
use kube::core::cel::Validator;
use kube::CustomResourceExt;
use serde_json::Value;

fn repo_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn schema() -> Value {
    let crd = CouponEvent::crd();
    serde_json::to_value(crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap()).unwrap()
}

/// The documents of a YAML file of the repository.
fn documents(path: &str) -> Vec<Value> {
    let text = repo_file(path);
    serde_saphyr::from_str_multiple(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn examples() -> Vec<serde_json::Value> {
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") && !path.to_string_lossy().contains("values") {
            let text = std::fs::read_to_string(&path).unwrap();
            let values: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(&text).unwrap();
            for value in values {
                if value["kind"] == "CouponEvent" {
                    docs.push(value);
                }
            }
        }
    }
    assert!(docs.len() >= 3, "examples found: {}", docs.len());
    docs
}

#[test]
fn checked_in_crd_matches_the_types() {
    assert_eq!(
        repo_file("crds/couponevents.coupons.fcfs.dev.yaml"),
        coupon_operator::crd_yaml(),
        "crds/ is stale: run `cargo run -p coupon-operator -- crd > crds/couponevents.coupons.fcfs.dev.yaml`"
    );
}

/// The server admits every example (test_admission.py); the pre-check and the operator must too.
#[test]
fn examples_parse_into_the_types_and_pass_the_cel_rules() {
    for example in examples() {
        let event: CouponEvent = serde_json::from_value(example.clone()).unwrap();
        event.spec.validate().unwrap();
        Validator::new().validate(&schema(), &example, None).unwrap_or_else(|e| panic!("{}: {e:?}", example["metadata"]["name"]));
    }
}

/// tests/kube/admission-cases.yaml (its header says what a case holds).
fn admission_cases() -> Value {
    serde_saphyr::from_str(&repo_file("tests/kube/admission-cases.yaml")).expect("tests/kube/admission-cases.yaml")
}

/// The object every case edits.
fn base(cases: &Value) -> Value {
    let file = cases["base"]["file"].as_str().expect("base.file");
    let name = &cases["base"]["name"];
    documents(file)
        .into_iter()
        .find(|doc| doc["kind"] == "CouponEvent" && &doc["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{file}: no CouponEvent {name}"))
}

/// `object` with the case's edit: `path` (a JSON pointer) set to `value`, added if missing, or
/// removed with `delete: true`.
fn edited(object: &Value, case: &Value) -> Value {
    let mut object = object.clone();
    let path = case["path"].as_str().unwrap_or_else(|| panic!("{}: no path", case["name"]));
    let (parent, key) = path.rsplit_once('/').unwrap_or_else(|| panic!("{path}: not a JSON pointer"));
    let parent = object.pointer_mut(parent).and_then(Value::as_object_mut).unwrap_or_else(|| panic!("{path}: no such object"));
    if case["delete"].as_bool() == Some(true) {
        assert!(parent.remove(key).is_some(), "{path}: nothing to delete");
    } else {
        parent.insert(key.to_owned(), case["value"].clone());
    }
    object
}

/// The fragments of the server's answer to a refused case.
fn messages(case: &Value) -> Vec<&str> {
    match &case["message"] {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().map(|m| m.as_str().expect("a message is a string")).collect(),
        other => panic!("{}: message {other}", case["name"]),
    }
}

/// Every case: the case, the object sent and, for a transition, the object it edits.
fn every_case() -> Vec<(Value, Value, Option<Value>)> {
    let cases = admission_cases();
    let base = base(&cases);
    let mut all = Vec::new();
    for case in cases["cases"].as_array().expect("cases") {
        all.push((case.clone(), edited(&base, case), None));
    }
    for case in cases["transitions"].as_array().expect("transitions") {
        all.push((case.clone(), edited(&base, case), Some(base.clone())));
    }
    assert!(all.len() >= 40, "cases found: {}", all.len());
    all
}

#[test]
fn the_cel_validator_reaches_the_servers_verdicts() {
    let schema = schema();
    let validator = Validator::new();
    for (case, object, old) in every_case() {
        let name = &case["name"];
        let answer = validator.validate(&schema, &object, old.as_ref());
        match (case["verdict"].as_str(), case["by"].as_str()) {
            (Some("accept"), None) => {
                answer.unwrap_or_else(|e| panic!("{name}: the server accepts it, kube's Validator refuses it: {e}"));
            }
            (Some("refuse"), Some("cel")) => {
                let errors = answer.expect_err(&format!("{name}: a CEL rule of the server refuses it, kube's Validator accepts it"));
                // In the server's words: `<field path>: Invalid value: [<value>: ]<rule's message>`.
                let said = messages(&case);
                for error in errors.iter() {
                    // A rule of the root: no path for kube, `<nil>` for the server.
                    let path = if error.field_path.is_empty() { "<nil>" } else { error.field_path.as_str() };
                    let field = format!("{path}: ");
                    assert!(
                        said.iter().any(|m| m.starts_with(&field) && m.contains(&error.message)),
                        "{name}: kube's Validator says {error}, the server {said:?}"
                    );
                }
            }
            // Refused by the OpenAPI schema (bounds, enum, pattern, format, required, types,
            // unknown fields), which the Validator does not evaluate; the server does not run the
            // CEL rules of an object its schema refuses either.
            (Some("refuse"), Some("schema")) => {}
            (verdict, by) => panic!("{name}: verdict {verdict:?} by {by:?}"),
        }
    }
}

#[test]
fn the_operator_refuses_what_admission_refuses_where_the_file_says_so() {
    for (case, object, _) in every_case() {
        let name = &case["name"];
        let parsed = serde_json::from_value::<CouponEvent>(object);
        match (case["verdict"].as_str(), case["operator"].as_str()) {
            (Some("accept"), None) => {
                let event = parsed.unwrap_or_else(|e| panic!("{name}: the server accepts it, it does not parse: {e}"));
                event.spec.validate().unwrap_or_else(|e| panic!("{name}: the server accepts it, the operator refuses it: {e}"));
            }
            // The operator refuses it again (CEL may be off on old clusters).
            (Some("refuse"), Some("refuse")) => {
                let event = parsed.unwrap_or_else(|e| panic!("{name}: does not parse: {e}"));
                assert!(event.spec.validate().is_err(), "{name}: the operator accepts it");
            }
            (Some("refuse"), Some("unparsable")) => assert!(parsed.is_err(), "{name}: parses into the types"),
            // Admission alone refuses it.
            (Some("refuse"), None) => {}
            (verdict, operator) => panic!("{name}: verdict {verdict:?}, operator {operator:?}"),
        }
    }
}

#[test]
fn an_omitted_idle_replicas_is_one_for_the_api_and_zero_for_the_consumer() {
    // The api answers outside the window; the consumer has nothing to do there.
    let mut event: CouponEvent = serde_json::from_value(base(&admission_cases())).unwrap();
    event.spec.api.idle_replicas = None;
    event.spec.consumer.idle_replicas = None;
    assert_eq!((event.spec.api_idle_replicas(), event.spec.consumer_idle_replicas()), (1, 0));
}

/// What admission cannot check of a recurrence (CEL knows no cron rules or time zones): the
/// operator refuses it, with the reason.
#[test]
fn the_operator_refuses_recurrences_the_server_cannot_judge() {
    let cases = admission_cases();
    let base = base(&cases);
    let with_schedule = |schedule: Value| {
        let mut object = base.clone();
        object["spec"]["schedule"] = schedule;
        serde_json::from_value::<CouponEvent>(object).unwrap()
    };
    let refused = |schedule: Value, says: &str| {
        let event = with_schedule(schedule.clone());
        Validator::new()
            .validate(&schema(), &serde_json::to_value(&event).unwrap(), None)
            .unwrap_or_else(|e| panic!("{schedule}: the server would refuse it: {e:?}"));
        let error = event.spec.validate().expect_err(&schedule.to_string()).to_string();
        assert!(error.contains(says), "{schedule}: {error}");
    };
    let recurrence =
        |cron: &str, zone: &str, duration: &str| serde_json::json!({"recurrence": {"cron": cron, "timeZone": zone, "duration": duration}});
    refused(recurrence("0 10 * * *", "Asia/Atlantis", "30m"), "IANA");
    refused(recurrence("0 10 * *  *  *", "Asia/Seoul", "30m"), "five-field");
    refused(recurrence("0 25 * * *", "Asia/Seoul", "30m"), "cron");
    refused(recurrence("*/10 * * * *", "Asia/Seoul", "30m"), "overlap");
    // Apart, but not by the warm-up: the next occurrence's pods would come up while the one
    // before is open.
    let mut hourly = recurrence("0 * * * *", "UTC", "50m");
    hourly["warmUp"] = "15m".into();
    refused(hourly.clone(), "overlap");
    hourly["warmUp"] = "10m".into();
    with_schedule(hourly).spec.validate().unwrap();
}
