//! `Idempotency-Key` on applies (draft-ietf-httpapi-idempotency-key-header), through the
//! api's HTTP port against real Redis and Kafka: a retry gets the first answer again, marked
//! replayed; another body under the same key is 422; a key still in use is 409 at once, and
//! however many requests race on one key, one apply runs; 5xx answers are not kept (the key
//! stays in flight until the delivery's lease has passed, then the retry runs); a request
//! to a sold-out sale keeps nothing; 16 keys per user are kept, the oldest going first; a new
//! event of the same name does not answer with the old one's keys.

use std::time::Duration;

use coupon_core::event::EventConfig;
use coupon_core::provision;
use coupon_core::redis::keyspace;
use coupon_tests::{kafka, kafka_brokers, provision_event, InProcessApi};
use futures::future::join_all;
use serde_json::Value;

const NAMESPACE: &str = "idempotency";

/// One apply of `body` with the given `Idempotency-Key` values: status, body, whether it
/// was marked replayed.
async fn apply(client: &reqwest::Client, url: &str, body: &str, keys: &[&str]) -> (u16, Value, bool) {
    let mut request = client.post(url).header("content-type", "application/json").body(body.to_owned());
    for key in keys {
        request = request.header("idempotency-key", *key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let replayed = match response.headers().get("idempotent-replayed") {
        None => false,
        Some(value) => {
            assert_eq!(value, "true");
            true
        }
    };
    (status, response.json().await.unwrap(), replayed)
}

fn user(name: &str) -> String {
    serde_json::json!({ "userId": name }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_is_answered_the_first_answer_and_another_body_is_refused() {
    let brokers = kafka_brokers();
    let event = provision_event(&brokers, NAMESPACE, 5, 1).await;
    let api = InProcessApi::start(NAMESPACE, &brokers).await;
    let (client, url) = (reqwest::Client::new(), api.apply_url(&event.id));

    let first = apply(&client, &url, &user("a"), &["\"order-1\""]).await;
    assert_eq!((first.0, first.2), (201, false), "{first:?}");
    let retry = apply(&client, &url, &user("a"), &["\"order-1\""]).await;
    assert_eq!(retry, (201, first.1.clone(), true), "the first answer again, marked");
    // The bare form names the same key.
    assert_eq!(apply(&client, &url, &user("a"), &["order-1"]).await, (201, first.1.clone(), true));
    // Without a key, today's answer: the user holds the slot.
    let plain = apply(&client, &url, &user("a"), &[]).await;
    assert_eq!((plain.0, plain.1["status"].as_str(), plain.2), (409, Some("duplicate"), false));
    // The same key with other bytes (even the same user, spaced differently) is refused and
    // changes nothing.
    let other = apply(&client, &url, r#"{"userId": "a"}"#, &["order-1"]).await;
    assert_eq!(other, (422, serde_json::json!({"status": "idempotency_key_reused"}), false));
    assert_eq!(apply(&client, &url, &user("a"), &["order-1"]).await, (201, first.1.clone(), true), "still the first answer");
    // Keys are the user's: another user's same key is theirs alone.
    let b = apply(&client, &url, &user("b"), &["order-1"]).await;
    assert_eq!((b.0, b.2), (201, false), "{b:?}");
    assert_ne!(b.1["slot"], first.1["slot"]);

    // Malformed keys, and two keys, are 400 and decide nothing.
    for keys in [&["two words"][..], &["\"unterminated"], &["\"\""], &["a", "b"]] {
        let answer = apply(&client, &url, &user("c"), keys).await;
        assert_eq!((answer.0, answer.1["status"].as_str()), (400, Some("bad_request")), "{keys:?}: {answer:?}");
    }
    let mut redis = coupon_tests::redis().await;
    assert_eq!(keyspace::counters(&mut redis, &event.id).await.unwrap().unwrap().issued, 2, "a and b only");
}

/// Twelve requests with one key at once: one apply runs (one coupon), every other request is
/// answered 409 `in_flight` or, once the first is answered, its answer replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_racing_on_one_key_run_one_apply() {
    let brokers = kafka_brokers();
    let event = provision_event(&brokers, NAMESPACE, 50, 1).await;
    let api = InProcessApi::start(NAMESPACE, &brokers).await;
    let (client, url) = (reqwest::Client::new(), api.apply_url(&event.id));
    let body = user("racer");
    let answers = join_all((0..12).map(|_| apply(&client, &url, &body, &["race"]))).await;
    let fresh: Vec<_> = answers.iter().filter(|(status, _, replayed)| *status == 201 && !replayed).collect();
    assert_eq!(fresh.len(), 1, "{answers:?}");
    for answer in &answers {
        match answer {
            (201, body, _) => assert_eq!(*body, fresh[0].1),
            (409, body, false) => assert_eq!(*body, serde_json::json!({"status": "in_flight"})),
            other => panic!("{other:?}"),
        }
    }
    let mut redis = coupon_tests::redis().await;
    assert_eq!(keyspace::counters(&mut redis, &event.id).await.unwrap().unwrap().issued, 1);
    assert_eq!(apply(&client, &url, &body, &["race"]).await, (201, fresh[0].1.clone(), true));
}

/// A 503 (the broker down) is not kept, and its key stays in flight until the lease a slot
/// issued to it would have has passed: a retry meanwhile is 409 `in_flight`, after it the
/// retry runs, and is issued.
/// Sixteen keys per user are kept: a seventeenth pushes out the oldest, whose retry then runs
/// again (and finds the user's slot).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unavailable_answers_are_not_kept_and_sixteen_keys_are() {
    let brokers = kafka_brokers();
    let event = provision_event(&brokers, NAMESPACE, 5, 1).await;
    // A short produce timeout: the delivery's lease (and so the key's time in flight) with it.
    let api = InProcessApi::start_without_probes(NAMESPACE, &brokers, Duration::from_secs(1)).await;
    for component in coupon_service::apply::COMPONENTS {
        api.state.health.set(component, true);
    }
    let (client, url) = (reqwest::Client::new(), api.apply_url(&event.id));
    api.state.health.set("kafka", false);
    let down = apply(&client, &url, &user("d"), &["k0"]).await;
    assert_eq!((down.0, down.2), (503, false));
    api.state.health.set("kafka", true);
    let at_once = apply(&client, &url, &user("d"), &["k0"]).await;
    assert_eq!(at_once, (409, serde_json::json!({"status": "in_flight"}), false));
    let issued = coupon_tests::wait_until("the key may be taken over", Duration::from_secs(30), || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let answer = apply(&client, &url, &user("d"), &["k0"]).await;
            (answer.0 != 409).then_some(answer)
        }
    })
    .await;
    assert_eq!((issued.0, issued.2), (201, false), "the retry ran: {issued:?}");

    for n in 1..=16 {
        let answer = apply(&client, &url, &user("d"), &[&format!("k{n}")]).await;
        assert_eq!((answer.0, answer.2), (409, false), "k{n}: {answer:?}");
    }
    // k0 was the oldest of seventeen: gone. Its retry runs again; k16 is kept.
    let again = apply(&client, &url, &user("d"), &["k0"]).await;
    assert_eq!((again.0, again.1["status"].as_str(), again.2), (409, Some("duplicate"), false), "{again:?}");
    assert!(apply(&client, &url, &user("d"), &["k16"]).await.2, "the latest key is kept");
    let mut redis = coupon_tests::redis().await;
    let layout = keyspace::EventLayout::single(&event.id);
    let (kept, ttl_ms) = keyspace::inspect::idempotency_keys_kept(&mut redis, &layout, "d").await.unwrap();
    assert_eq!(kept, 16);
    let window_and_a_day = (600 + 24 * 3600) * 1000;
    assert!(ttl_ms > 0 && ttl_ms <= window_and_a_day, "kept until a day after the window: {ttl_ms} ms");
}

/// An event deleted and made again under its name is a new event: its users' keys from the
/// old one are not answered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_event_of_the_same_name_does_not_replay_the_old_ones_answers() {
    let brokers = kafka_brokers();
    let event = provision_event(&brokers, NAMESPACE, 5, 1).await;
    let api = InProcessApi::start(NAMESPACE, &brokers).await;
    let (client, url) = (reqwest::Client::new(), api.apply_url(&event.id));
    let first = apply(&client, &url, &user("e"), &["same"]).await;
    assert_eq!((first.0, first.2), (201, false));

    let mut redis = coupon_tests::redis().await;
    provision::delete_redis(&mut redis, &event.id).await.unwrap();
    let config = EventConfig::open_now(5, &event.topic, Duration::from_secs(600));
    let admin = kafka(&brokers).admin().unwrap();
    provision::provision_event(&mut redis, &admin, &event.id, &config, 1, 1).await.unwrap();
    let answer = coupon_tests::wait_until("the api serves the new event", Duration::from_secs(20), || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let answer = apply(&client, &url, &user("e"), &["same"]).await;
            (answer.0 == 201).then_some(answer)
        }
    })
    .await;
    assert!(!answer.2, "a fresh answer of the new event, not the old one's: {answer:?}");
}

/// Once the api has seen the sale sold out, a keyed apply of a user who holds nothing is
/// answered from memory and keeps nothing in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keyed_apply_to_a_sold_out_sale_keeps_nothing() {
    let brokers = kafka_brokers();
    let event = provision_event(&brokers, NAMESPACE, 1, 1).await;
    let api = InProcessApi::start(NAMESPACE, &brokers).await;
    let (client, url) = (reqwest::Client::new(), api.apply_url(&event.id));
    assert_eq!(apply(&client, &url, &user("first"), &["a"]).await.0, 201);
    assert_eq!(apply(&client, &url, &user("late"), &[]).await.0, 410, "the api learns it is sold out");
    for n in 0..5 {
        let answer = apply(&client, &url, &user(&format!("crowd-{n}")), &["k"]).await;
        assert_eq!((answer.0, answer.2), (410, false));
    }
    let mut redis = coupon_tests::redis().await;
    let layout = keyspace::EventLayout::single(&event.id);
    for n in 0..5 {
        let kept = keyspace::inspect::idempotency_keys_kept(&mut redis, &layout, &format!("crowd-{n}")).await.unwrap();
        assert_eq!(kept.0, 0, "crowd-{n}");
    }
    // The holder's key still answers their 201.
    let again = apply(&client, &url, &user("first"), &["a"]).await;
    assert_eq!((again.0, again.2), (201, true));
}
