//! The checked-in CRD matches the Rust types, its CEL rules refuse what they should, and
//! every example parses and validates.

use coupon_operator::crd::CouponEvent;
use kube::core::cel::Validator;
use kube::CustomResourceExt;

fn repo_file(path: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn schema() -> serde_json::Value {
    let crd = CouponEvent::crd();
    serde_json::to_value(crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema.as_ref().unwrap()).unwrap()
}

fn examples() -> Vec<serde_json::Value> {
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") && !path.to_string_lossy().contains("values") {
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let value: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
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

#[test]
fn examples_parse_into_the_types_and_pass_the_cel_rules() {
    for example in examples() {
        let event: CouponEvent = serde_json::from_value(example.clone()).unwrap();
        event.spec.validate().unwrap();
        Validator::new().validate(&schema(), &example, None).unwrap_or_else(|e| panic!("{}: {e:?}", example["metadata"]["name"]));
    }
}

/// The example with the field at `pointer` set (added if missing).
fn with(mut example: serde_json::Value, pointer: &str, value: serde_json::Value) -> serde_json::Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    example.pointer_mut(parent).unwrap().as_object_mut().unwrap().insert(key.to_owned(), value);
    example
}

#[test]
fn cel_rules_refuse_what_admission_should_refuse() {
    let base = examples().remove(0);
    let cases = [
        ("/spec/schedule/end", serde_json::json!("2026-11-27T09:00:00Z"), "schedule.end must be after schedule.start"),
        ("/spec/schedule/end", serde_json::json!("2026-11-27T10:00:00Z"), "schedule.end must be after schedule.start"),
        ("/spec/schedule/end", serde_json::json!("2026-12-05T10:00:00Z"), "at most 7 days"),
        ("/spec/topic", serde_json::json!("bad topic"), "valid Kafka topic name"),
        ("/spec/topic", serde_json::json!(".."), "valid Kafka topic name"),
        ("/spec/topic", serde_json::json!("__consumer_offsets"), "not an internal one"),
        ("/spec/api/deployment", serde_json::json!("Coupon_API"), "deployment must be a Kubernetes object name"),
        ("/spec/consumer/deployment", serde_json::json!("-consumer"), "deployment must be a Kubernetes object name"),
        ("/spec/schedule/warmUp", serde_json::json!("48h"), "warmUp may be at most 24h"),
        ("/spec/api/idleReplicas", serde_json::json!(500), "idleReplicas may not exceed replicas"),
    ];
    for (pointer, value, message) in cases {
        let bad = with(base.clone(), pointer, value.clone());
        let errors = Validator::new().validate(&schema(), &bad, None).expect_err(&format!("{pointer}={value} must be refused"));
        assert!(format!("{errors:?}").contains(message), "{pointer}={value}: {errors:?}");
        // The operator refuses it again (CEL may be off on old clusters).
        let event: CouponEvent = serde_json::from_value(bad).unwrap();
        assert!(event.spec.validate().is_err(), "{pointer}={value}");
    }
    // The schema's minimum refuses an api with no replicas; the operator does too.
    let mut event: CouponEvent = serde_json::from_value(base.clone()).unwrap();
    event.spec.api.replicas = 0;
    assert!(event.spec.validate().is_err(), "api.replicas 0");
    // An omitted idleReplicas: 1 for the api (it answers outside the window), 0 for the consumer.
    let mut event: CouponEvent = serde_json::from_value(base.clone()).unwrap();
    event.spec.api.idle_replicas = None;
    event.spec.consumer.idle_replicas = None;
    assert_eq!((event.spec.api_idle_replicas(), event.spec.consumer_idle_replicas()), (1, 0));
    // Transition rules: topic and partitions cannot change on an existing object.
    let edited = with(base.clone(), "/spec/topic", serde_json::json!("another.topic"));
    let errors = Validator::new().validate(&schema(), &edited, Some(&base)).expect_err("a topic change must be refused");
    assert!(format!("{errors:?}").contains("topic cannot change"), "{errors:?}");
    let edited = with(base.clone(), "/spec/partitions", serde_json::json!(12));
    let errors = Validator::new().validate(&schema(), &edited, Some(&base)).expect_err("a partitions change must be refused");
    assert!(format!("{errors:?}").contains("partitions cannot change"), "{errors:?}");
    let raised = with(base.clone(), "/spec/limit", serde_json::json!(100_000));
    Validator::new().validate(&schema(), &raised, Some(&base)).unwrap();
    // Exactly seven days is allowed.
    let week = with(base, "/spec/schedule/end", serde_json::json!("2026-12-04T10:00:00Z"));
    Validator::new().validate(&schema(), &week, None).unwrap();
}
