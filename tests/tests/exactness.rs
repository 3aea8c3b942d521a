//! Exactly N under the faults production brings: clients that give up mid-apply, a produce
//! whose outcome is unknown, Redis going back in time, poison records, and the small paths
//! where a slot could leak or be handed out twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use coupon_core::event::{EventConfig, EventId};
use coupon_core::provision::{provision_redis, RedisOutcome};
use coupon_core::redis::keyspace::{self, EventCounters, EventLayout, GateDecision};
use coupon_core::redis::{diagnostics, RedisConnection, RedisHandle};
use coupon_service::app::{ApiSettings, ConsumerSettings};
use coupon_service::sql::{CouponRow, Position, Store};
use coupon_tests::Persistence;
use coupon_tests::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::{json, Value};

const NAMESPACE: &str = "exact";

/// Short timeouts so that leases and healing happen within a test: a delivery's lease is
/// the produce timeout plus a second, healing waits `SETTLE` past it.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(1);
const SETTLE: Duration = Duration::from_secs(2);

/// Applies until the user's coupon is settled: 201, or 409 while the user's entry is no
/// longer pending (a 409 during the lease of an undelivered entry is not an answer yet).
/// Returns the slot and how many 201s the user got on the way.
async fn apply_until_settled(client: &reqwest::Client, api: &InProcessApi, id: &EventId, user: &str) -> (i64, usize) {
    let created = std::cell::Cell::new(0);
    let slot = wait_until(&format!("{user} settled"), Duration::from_secs(60), || async {
        let (status, body) = apply(client, &api.apply_url(id), user).await;
        match status {
            201 => {
                created.set(created.get() + 1);
                body["slot"].as_i64()
            }
            409 => {
                let lookup: Value =
                    client.get(format!("{}/v1/events/{}/users/{user}", api.base_url, id.name())).send().await.ok()?.json().await.ok()?;
                assert_eq!(lookup["slot"], body["slot"], "the 409 names the user's slot: {lookup}");
                (lookup["state"] != "pending").then(|| body["slot"].as_i64().unwrap())
            }
            _ => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                None
            }
        }
    })
    .await;
    (slot, created.get())
}

fn api_settings(redis_url: &str, brokers: &str) -> ApiSettings {
    ApiSettings {
        namespace: NAMESPACE.into(),
        redis_url: redis_url.into(),
        kafka: kafka(brokers),
        produce_timeout: PRODUCE_TIMEOUT,
        readiness_probes: false,
        ..ApiSettings::default()
    }
}

async fn start_api(redis_url: &str, brokers: &str) -> InProcessApi {
    let api = InProcessApi::start_with(api_settings(redis_url, brokers)).await;
    api.state.health.set("redis", true);
    api.state.health.set("kafka", true);
    api
}

fn start_consumer(database_url: &str, topic: &str, brokers: &str, redis_url: &str) -> InProcessConsumer {
    InProcessConsumer::start_with(ConsumerSettings {
        database_url: database_url.into(),
        redis_url: redis_url.into(),
        kafka: kafka(brokers),
        topics: vec![topic.into()],
        group_id: unique("exact"),
        batch_linger: Duration::from_millis(10),
        recovery_settle: SETTLE,
        ..ConsumerSettings::default()
    })
}

async fn counters(conn: &mut RedisConnection, id: &EventId) -> EventCounters {
    keyspace::counters(conn, id).await.unwrap().expect("provisioned")
}

/// Waits until every issued coupon is written and nothing is left unwritten: what the
/// operator reads as drained (and `Closed` once the window ended).
async fn wait_until_settled(conn: &RedisConnection, id: &EventId) -> EventCounters {
    wait_until("issued == persisted, nothing unwritten", Duration::from_secs(90), || {
        let (mut conn, id) = (conn.clone(), id.clone());
        async move {
            let c = counters(&mut conn, &id).await;
            (c.unwritten == 0 && c.issued == c.persisted && !c.recovering).then_some(c)
        }
    })
    .await
}

/// The rows of an event, by user.
async fn rows_by_user(store: &Store, id: &EventId) -> BTreeMap<String, i64> {
    store.coupons(&id.to_string()).await.unwrap().into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_give_up_while_redis_is_paused_get_their_coupon_and_issued_equals_rows() {
    let brokers = kafka_brokers();
    let own = OwnRedis::start().await;
    let event = provision_event_on(&own.url(), &brokers, NAMESPACE, 100, 2).await;
    let database_url = sqlite_url();
    let store = migrated_store(&database_url).await;
    let api = start_api(&own.url(), &brokers).await;
    let consumer = start_consumer(&database_url, &event.topic, &brokers, &own.url());
    let conn = RedisHandle::connect_with_deadline(&own.url(), Duration::from_secs(10)).await.unwrap();
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let url = api.apply_url(&event.id);

    // Pause shorter than the Redis client's 2 s response timeout: the gate calls under way
    // answer late, after the clients left; those decisions run to completion without them.
    // Pause longer than it: the calls under way time out, but Redis runs them afterwards;
    // those users hold entries nobody delivers. Either way the applies queued behind the
    // calls under way are answered 503 without reaching Redis (they waited longer than the
    // api lets an apply wait for the gate).
    let short: Vec<String> = (0..30).map(|i| format!("short-{i}")).collect();
    let long: Vec<String> = (0..30).map(|i| format!("long-{i}")).collect();
    let mut ran = 0;
    for (users, pause_ms) in [(&short, 1500), (&long, 3000)] {
        let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(pause_ms).arg("WRITE").query_async(&mut conn.clone()).await.unwrap();
        let answers = futures::future::join_all(users.iter().map(|user| apply(&impatient, &url, user))).await;
        assert!(answers.iter().all(|(status, _)| *status == 0), "every client gave up: {answers:?}");
        // The paused calls ran once the count is above the last one and stable (the same
        // twice, 300 ms apart).
        let (before, previous) = (ran, std::cell::Cell::new(-1));
        ran = wait_until("the paused scripts ran and the count is stable", Duration::from_secs(15), || {
            let (mut conn, id, last) = (conn.clone(), event.id.clone(), previous.get());
            let previous = &previous;
            async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let issued = counters(&mut conn, &id).await.issued;
                previous.set(issued);
                (issued > before && issued == last).then_some(issued)
            }
        })
        .await;
    }
    let holders = keyspace::holders(&mut conn.clone(), &EventLayout::single(&event.id), 1_000).await.unwrap().unwrap();
    let (held, not_held): (Vec<&String>, Vec<&String>) = long.iter().partition(|user| holders.get(user).is_some());
    let short_held = short.iter().filter(|user| holders.get(user).is_some()).count();
    assert_eq!((short_held + held.len()) as i64, ran, "the entries are the scripts that ran");

    // Every short user and half of the long ones come back (half of those holding an entry
    // among them); the other half never do, and their entries are healed.
    let returning: Vec<&String> = held.iter().take(held.len() / 2).chain(not_held.iter()).take(15).copied().collect();
    let healed = (held.len() - held.len() / 2) as i64;
    let client = reqwest::Client::new();
    let mut slots = BTreeMap::new();
    for user in short.iter().chain(returning) {
        let (slot, created) = apply_until_settled(&client, &api, &event.id, user).await;
        assert!(created <= 1, "{user} got {created} x 201");
        slots.insert(user.clone(), slot);
    }
    let settled = wait_until_settled(&conn, &event.id).await;
    let rows = rows_by_user(&store, &event.id).await;
    assert_eq!(rows, slots, "each returning user's coupon is their row, and nobody else has one");
    assert_eq!(settled.issued, 45, "{settled:?}");
    assert_eq!(settled.healed, healed, "the entries nobody delivered were given back: {settled:?}");
    wait_for_rows(&store, &event.key(), 45, Duration::from_secs(10)).await;
    assert!(store.failed_events(&event.topic).await.unwrap().is_empty());
    // Exported per event by the consumer.
    let label = coupon_service::metrics::EventLabel { event: event.key() };
    wait_until("healed exported", Duration::from_secs(10), || async {
        let metrics = &consumer.process().metrics;
        (metrics.event_healed.get_or_create(&label).get() == healed && metrics.event_persisted.get_or_create(&label).get() == 45)
            .then_some(())
    })
    .await;
    // The healed slots are handed out again.
    let (status, body) = apply(&client, &url, "late-comer").await;
    assert_eq!(status, 201, "{body}");
    consumer.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_produce_that_timed_out_after_sending_then_the_users_retry_gives_one_row_and_one_201() {
    let tansu = OwnTansu::start(free_port()).await;
    let brokers = tansu.brokers();
    let event = provision_event(&brokers, NAMESPACE, 10, 1).await;
    let database_url = sqlite_url();
    let store = migrated_store(&database_url).await;
    let api = start_api(&redis_url(), &brokers).await;
    let consumer = start_consumer(&database_url, &event.topic, &brokers, &redis_url());
    let client = reqwest::Client::new();
    let url = api.apply_url(&event.id);
    // The first produce to a fresh broker may take longer than the produce timeout.
    apply_until_settled(&client, &api, &event.id, "warm").await;

    tansu.pause();
    let (retrying, silent) = (apply(&client, &url, "retrying"), apply(&client, &url, "silent"));
    let (retrying, silent) = tokio::join!(retrying, silent);
    assert_eq!((retrying.0, silent.0), (503, 503), "{retrying:?} {silent:?}");
    assert!(api.state.metrics.undecided_produces.get() >= 1, "the produce timed out after sending");
    tansu.resume();

    let (slot, created) = apply_until_settled(&client, &api, &event.id, "retrying").await;
    assert_eq!(created, 1, "exactly one 201");
    let conn = RedisHandle::connect_with_deadline(&redis_url(), Duration::from_secs(10)).await.unwrap();
    let settled = wait_until_settled(&conn, &event.id).await;
    let rows = rows_by_user(&store, &event.id).await;
    assert_eq!(rows.get("retrying"), Some(&slot), "one row, with the slot of the 201");
    // The silent user's record was written when the broker resumed, or never: either it is
    // their row, or their slot was given back.
    assert_eq!(settled.persisted, rows.len() as i64);
    assert_eq!(settled.healed + rows.len() as i64, 3, "{settled:?} {rows:?}");
    assert!(store.failed_events(&event.topic).await.unwrap().is_empty(), "the second copy was skipped as a duplicate");
    consumer.stop().await.unwrap();
}

/// Issues to `users` until each has a final answer (201, 409 or 410), waiting out 503s;
/// returns the 201s.
async fn issue_to(client: &reqwest::Client, url: &str, users: impl Iterator<Item = String>) -> Vec<(String, i64)> {
    let mut issued = Vec::new();
    for user in users {
        let body = wait_until(&format!("an answer for {user}"), Duration::from_secs(90), || async {
            let (status, body) = apply(client, url, &user).await;
            match status {
                201 | 409 | 410 => Some((status, body)),
                503 => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    None
                }
                other => panic!("{user}: {other} {body}"),
            }
        })
        .await;
        if body.0 == 201 {
            issued.push((user, body.1["slot"].as_i64().unwrap()));
        }
    }
    issued
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restored_from_an_older_snapshot_mid_event_issues_nothing_twice_and_every_201_has_its_row() {
    const LIMIT: i64 = 60;
    let brokers = kafka_brokers();
    let mut own = OwnRedis::start_with(Persistence::Snapshots).await;
    let event = provision_event_on(&own.url(), &brokers, NAMESPACE, LIMIT, 2).await;
    let database_url = sqlite_url();
    let store = migrated_store(&database_url).await;
    let api = start_api(&own.url(), &brokers).await;
    let consumer = start_consumer(&database_url, &event.topic, &brokers, &own.url());
    let client = reqwest::Client::new();
    let url = api.apply_url(&event.id);

    let mut issued = issue_to(&client, &url, (0..20).map(|i| format!("before-{i}"))).await;
    own.save_snapshot().await;
    issued.extend(issue_to(&client, &url, (20..40).map(|i| format!("before-{i}"))).await);
    assert_eq!(issued.len(), 40);
    wait_for_rows(&store, &event.key(), 40, Duration::from_secs(30)).await;

    // Redis comes back from the older snapshot: 20 coupons, their users and the counter are
    // gone from it. Without fencing it would hand slots 21..=40 out again.
    own.restore_snapshot().await;
    issued.extend(issue_to(&client, &url, (0..40).map(|i| format!("after-{i}"))).await);
    let rolled_back: Vec<String> = (20..40).map(|i| format!("before-{i}")).collect();
    assert!(issue_to(&client, &url, rolled_back.into_iter()).await.is_empty(), "users lost by the rollback keep their coupon (409)");

    wait_for_rows(&store, &event.key(), LIMIT, Duration::from_secs(60)).await;
    let rows: BTreeSet<(String, i64)> = store.coupons(&event.key()).await.unwrap().into_iter().collect();
    for answered in &issued {
        assert!(rows.contains(answered), "201 {answered:?} has no row");
    }
    assert_eq!(issued.len() as i64, LIMIT, "exactly the limit answered 201");
    assert!(store.failed_events(&event.topic).await.unwrap().is_empty(), "no slot was issued twice");
    consumer.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recovery_refuses_a_limit_below_the_rows_until_it_is_raised() {
    let brokers = kafka_brokers();
    let own = OwnRedis::start().await;
    let event = provision_event_on(&own.url(), &brokers, NAMESPACE, 10, 1).await;
    let database_url = sqlite_url();
    let store = migrated_store(&database_url).await;
    let api = start_api(&own.url(), &brokers).await;
    let consumer = start_consumer(&database_url, &event.topic, &brokers, &own.url());
    let client = reqwest::Client::new();
    let url = api.apply_url(&event.id);
    issue_to(&client, &url, (0..8).map(|i| format!("u{i}"))).await;
    wait_for_rows(&store, &event.key(), 8, Duration::from_secs(30)).await;

    let mut conn = RedisHandle::connect_with_deadline(&own.url(), Duration::from_secs(10)).await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let lowered = EventConfig { limit: 5, ..EventConfig::open_now(5, &event.topic, Duration::from_secs(600)) };
    assert_eq!(provision_redis(&mut conn, &event.id, &lowered, true).await.unwrap(), RedisOutcome::CreatedRecovering);
    // Well past the settle: the consumer refuses to restore 8 rows under a limit of 5.
    tokio::time::sleep(SETTLE * 3).await;
    assert!(counters(&mut conn, &event.id).await.recovering, "still closed");
    assert_eq!(apply(&client, &url, "new").await.0, 503);

    let raised = EventConfig { limit: 10, ..lowered };
    assert_eq!(provision_redis(&mut conn, &event.id, &raised, true).await.unwrap(), RedisOutcome::Updated);
    let restored = wait_until_settled(&conn, &event.id).await;
    assert_eq!((restored.issued, restored.persisted), (8, 8));
    assert_eq!(issue_to(&client, &url, (0..5).map(|i| format!("new-{i}"))).await.len(), 2, "only up to the limit");
    consumer.stop().await.unwrap();
}

/// A user id whose home is not shard 0 of `layout` (a sharded one).
fn homed_off_shard_zero(layout: &EventLayout) -> String {
    (0..100).map(|i| format!("u{i}")).find(|user| layout.home_shard(user) != 0).expect("a user homed on another shard")
}

/// The gate's own guards, against a real Redis: a release only gives back the slot it
/// names, and a pending entry is named by a repeated apply. (The free list's limit check is
/// tested in the keyspace, which may spell the keys.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_names_its_slot_and_a_repeated_apply_names_the_pending_slot() {
    let brokers = kafka_brokers();
    let event = provision_event(&brokers, NAMESPACE, 5, 1).await;
    let mut conn = redis().await;
    let layout = EventLayout::single(&event.id);
    let lease = Duration::from_secs(60);
    let mut deadlines = vec![0];
    for user in 1..=5 {
        let decision = keyspace::apply(&mut conn, &layout, &format!("u{user}"), lease, None).await.unwrap().0;
        let GateDecision::Issued { slot, again: false, deadline_ms, .. } = decision else { panic!("{decision:?}") };
        assert_eq!(slot, user);
        deadlines.push(deadline_ms);
    }
    assert!(!keyspace::release(&mut conn, &layout, "u1", 2, deadlines[2]).await.unwrap(), "u1 does not hold slot 2");
    assert!(!keyspace::release(&mut conn, &layout, "u9", 1, deadlines[1]).await.unwrap(), "u9 holds nothing");
    assert!(!keyspace::release(&mut conn, &layout, "u5", 5, deadlines[5] - 1).await.unwrap(), "another delivery's deadline");
    assert!(keyspace::release(&mut conn, &layout, "u5", 5, deadlines[5]).await.unwrap());
    assert!(!keyspace::release(&mut conn, &layout, "u5", 5, deadlines[5]).await.unwrap(), "released once");
    let late = keyspace::apply(&mut conn, &layout, "late", Duration::from_millis(1), None).await.unwrap().0;
    let GateDecision::Issued { slot: 5, again: false, deadline_ms: first_deadline, .. } = late else {
        panic!("the released slot again: {late:?}")
    };
    // The late user's lease runs out; their next apply delivers the same slot again, and a
    // stale release of the first delivery can no longer give it away.
    let again = wait_until("the lease ran out", Duration::from_secs(5), || {
        let mut conn = conn.clone();
        let layout = layout.clone();
        async move {
            match keyspace::apply(&mut conn, &layout, "late", Duration::from_secs(60), None).await.unwrap().0 {
                GateDecision::Issued { slot: 5, again: true, deadline_ms, .. } => Some(deadline_ms),
                GateDecision::Duplicate { slot: 5, .. } => None,
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
    assert!(!keyspace::release(&mut conn, &layout, "late", 5, first_deadline).await.unwrap(), "stale release refused");
    assert!(again > first_deadline);
    // A repeated apply of a pending entry within its lease names the slot.
    assert_eq!(
        keyspace::apply(&mut conn, &layout, "u2", lease, None).await.unwrap().0,
        GateDecision::Duplicate { slot: 2, slots: vec![2] }
    );
    // Acknowledgements go in one call per shard: only entries that hold the named slot change,
    // and sending the same batch again (a resend after a lost answer) changes nothing.
    let batch: Vec<(String, i64)> = vec![("u2".into(), 2), ("u3".into(), 3), ("u4".into(), 9), ("u9".into(), 1)];
    assert_eq!(keyspace::ack(&mut conn, &layout, 0, &batch).await.unwrap(), 2, "u4 holds 4, not 9; u9 holds nothing");
    assert_eq!(keyspace::ack(&mut conn, &layout, 0, &batch).await.unwrap(), 0, "a resent batch changes nothing");
    assert!(!keyspace::release(&mut conn, &layout, "u2", 2, deadlines[2]).await.unwrap(), "an acknowledged slot is never released");
    assert!(!keyspace::release(&mut conn, &layout, "u3", 3, deadlines[3]).await.unwrap(), "an acknowledged slot is never released");
    assert!(keyspace::release(&mut conn, &layout, "u4", 4, deadlines[4]).await.unwrap(), "u4's entry is still pending");
    // A batch names one shard: a user homed on another is refused before anything is written.
    let sharded = EventLayout::new(&event.id, 3);
    assert!(keyspace::ack(&mut conn, &sharded, 0, &[(homed_off_shard_zero(&sharded), 1)]).await.is_err());
}

/// One gate call decides many users exactly as separate calls in that order would: a user
/// named twice holds one slot, the limit holds inside the batch, answers come in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gate_call_decides_many_users_as_separate_calls_in_order_would() {
    let brokers = kafka_brokers();
    let event = provision_event(&brokers, NAMESPACE, 3, 1).await;
    let mut conn = redis().await;
    let layout = EventLayout::single(&event.id);
    let lease = Duration::from_secs(60);
    let users = ["a", "b", "a", "c", "d", "b"];
    let call = keyspace::unique_id();
    let (decisions, _) = keyspace::apply_many(&mut conn, &layout, 0, &users, lease, None, &call).await.unwrap();
    let summary: Vec<(i64, &str)> = decisions
        .iter()
        .map(|decision| match decision {
            GateDecision::Issued { slot, again: false, .. } => (*slot, "issued"),
            GateDecision::Duplicate { slot, .. } => (*slot, "duplicate"),
            GateDecision::SoldOut { .. } => (0, "sold out"),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(summary, vec![(1, "issued"), (2, "issued"), (1, "duplicate"), (3, "issued"), (0, "sold out"), (2, "duplicate")]);
    assert_eq!(counters(&mut conn, &event.id).await.issued, 3);
    // The same call sent again (a resend after a lost connection) answers what it answered,
    // and changes nothing; another call for the same users is decided afresh.
    assert_eq!(keyspace::apply_many(&mut conn, &layout, 0, &users, lease, None, &call).await.unwrap().0, decisions);
    assert_eq!(counters(&mut conn, &event.id).await.issued, 3);
    let again = keyspace::apply_many(&mut conn, &layout, 0, &["a"], lease, None, &keyspace::unique_id()).await.unwrap().0;
    assert_eq!(again, vec![GateDecision::Duplicate { slot: 1, slots: vec![1] }]);
    assert!(keyspace::apply_many(&mut conn, &layout, 0, &[], lease, None, &keyspace::unique_id()).await.unwrap().0.is_empty());
    // A call names one shard: a user homed on another is refused before anything runs.
    let sharded = EventLayout::new(&event.id, 3);
    let elsewhere = homed_off_shard_zero(&sharded);
    assert!(keyspace::apply_many(&mut conn, &sharded, 0, &[elsewhere.as_str()], lease, None, &keyspace::unique_id()).await.is_err());
}

/// Applies that wait while a shard's calls are under way go together in its next calls, and
/// each gets its own answer: 80 applies held up by a paused Redis take a handful of gate
/// calls, and every user's 201 names the slot Redis holds for that user.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn applies_waiting_for_a_busy_shard_go_together_and_each_gets_its_own_slot() {
    let brokers = kafka_brokers();
    let own = OwnRedis::start().await;
    let event = provision_event_on(&own.url(), &brokers, NAMESPACE, 400, 1).await;
    let api = start_api(&own.url(), &brokers).await;
    let conn = RedisHandle::connect_with_deadline(&own.url(), Duration::from_secs(10)).await.unwrap();
    let client = reqwest::Client::new();
    let url = api.apply_url(&event.id);
    assert_eq!(apply(&client, &url, "first").await.0, 201);
    let holders = || async { keyspace::holders(&mut conn.clone(), &EventLayout::single(&event.id), 1_000).await.unwrap().unwrap() };
    // Connections opened beforehand (lookups), so that a burst reaches the api at once.
    let lookup = |i: usize| client.get(format!("{}/v1/events/{}/users/warm-{i}", api.base_url, event.id.name())).send();
    futures::future::join_all((0..200).map(lookup)).await;

    // Held up for less than an apply may wait for its shard's call (500 ms).
    diagnostics::script_micros(&own.url(), true).await.unwrap();
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(300).arg("WRITE").query_async(&mut conn.clone()).await.unwrap();
    let users: Vec<String> = (0..80).map(|i| format!("crowd-{i}")).collect();
    let answers = futures::future::join_all(users.iter().map(|user| apply(&client, &url, user))).await;
    // The gate script runs INFO once per call (its fencing check); acknowledgements do not.
    let gate_calls = diagnostics::command_calls(&own.url(), &["info"]).await.unwrap();
    assert!(gate_calls <= 16, "80 waiting applies took {gate_calls} gate calls");
    // An apply held up longer on a stalled machine was answered 503, holds nothing, and
    // applies again.
    let held = holders().await;
    let mut slots = BTreeMap::new();
    for (user, (status, body)) in users.iter().zip(&answers) {
        match status {
            201 => assert!(slots.insert(user.clone(), body["slot"].as_i64().unwrap()).is_none()),
            503 => {
                assert!(held.get(user).is_none(), "{user} holds nothing after a 503");
                let (status, body) = apply(&client, &url, user).await;
                assert_eq!(status, 201, "{user}: {body}");
                slots.insert(user.clone(), body["slot"].as_i64().unwrap());
            }
            _ => panic!("{user}: {status} {body}"),
        }
    }
    let held = holders().await;
    for (user, slot) in &slots {
        assert_eq!(held.get(user).unwrap().slot, *slot, "{user}'s answer names the slot Redis holds for them");
    }
    assert_eq!(slots.values().copied().collect::<BTreeSet<i64>>(), (2..=81).collect::<BTreeSet<i64>>(), "every slot once");

    // Held up longer than an apply may wait: the calls under way (at most 4 of at most 32
    // applies) answer once Redis resumes; the applies queued behind them are answered 503
    // without a call, and hold nothing.
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(1200).arg("WRITE").query_async(&mut conn.clone()).await.unwrap();
    let late: Vec<String> = (0..200).map(|i| format!("late-{i}")).collect();
    let answers = futures::future::join_all(late.iter().map(|user| apply(&client, &url, user))).await;
    let held = holders().await;
    let mut created = 0;
    for (user, (status, body)) in late.iter().zip(&answers) {
        assert!(*status == 201 || *status == 503, "{user}: {status} {body}");
        assert_eq!(held.get(user).is_some(), *status == 201, "{user} holds a coupon only with a 201");
        created += i64::from(*status == 201);
    }
    assert!((1..=4 * 32).contains(&created), "only the calls under way went: {created} x 201");
    assert_eq!(counters(&mut conn.clone(), &event.id).await.issued, 81 + created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sold_out_answers_holders_409_closed_events_403_and_a_deleted_event_404() {
    let brokers = kafka_brokers();
    let name = unique("small");
    let id = EventId::new(NAMESPACE, &name).unwrap();
    let topic = format!("coupons.{name}");
    kafka(&brokers).admin().unwrap().ensure_topic(&topic, 1, 1).await.unwrap();
    let mut conn = redis().await;
    let config = EventConfig::open_now(1, &topic, Duration::from_secs(4));
    provision_redis(&mut conn, &id, &config, false).await.unwrap();
    let api = start_api(&redis_url(), &brokers).await;
    let client = reqwest::Client::new();
    let url = api.apply_url(&id);
    // The first produce to a fresh topic may outlast the short produce timeout: retried.
    let (slot, _) = apply_until_settled(&client, &api, &id, "holder").await;
    assert_eq!(apply(&client, &url, "other").await, (410, json!({"status": "sold_out"})));
    // From the sold-out short cut now:
    assert_eq!(apply(&client, &url, "holder").await, (409, json!({"status": "duplicate", "slot": slot})));
    assert_eq!(apply(&client, &url, "other").await, (410, json!({"status": "sold_out"})));
    wait_until("the window closed", Duration::from_secs(15), || async {
        let (status, body) = apply(&client, &url, "other").await;
        assert!(status == 410 || status == 403, "{status} {body}");
        (status == 403).then_some(())
    })
    .await;
    assert_eq!(apply(&client, &url, "other").await, (403, json!({"status": "closed"})));

    keyspace::delete_event(&mut conn, &id).await.unwrap();
    // Within the sold-out short cut's one-second re-check the answer may still be 403.
    wait_until("deleted, not lost: 404", Duration::from_secs(5), || async {
        let (status, body) = apply(&client, &url, "other").await;
        assert!(status == 403 || status == 404, "{status} {body}");
        (status == 404).then_some(())
    })
    .await;
    assert_eq!(apply(&client, &url, "other").await, (404, json!({"status": "unknown_event"})));
    let lookup = client.get(format!("{}/v1/events/{name}/users/holder", api.base_url)).send().await.unwrap();
    assert_eq!(lookup.status().as_u16(), 404);
}

fn raw_producer(brokers: &str) -> FutureProducer {
    ClientConfig::new().set("bootstrap.servers", brokers).set("enable.idempotence", "true").set("acks", "all").create().unwrap()
}

async fn poison_records_land_in_failed_events_and_the_next_good_record_is_written(database_url: String) {
    let brokers = kafka_brokers();
    let event = provision_event(&brokers, NAMESPACE, 10, 1).await;
    assert_eq!(issue(&event, &["good-1", "nul", "minus-one", "minus-5000", "good-2"]).await, vec![1, 2, 3, 4, 5]);
    let key = event.key();
    let record = |user: &str, slot: i64, issued_at: &str| {
        format!(r#"{{"event":"{key}","userId":"{user}","slot":{slot},"issuedAt":"{issued_at}"}}"#).into_bytes()
    };
    let mut nul = record("nul", 2, "2026-11-27T10:00:00Z");
    let at = nul.iter().position(|b| *b == b'n').unwrap();
    nul.insert(at + 1, 0);
    let poison: Vec<Vec<u8>> = vec![
        nul,
        vec![0xff, 0xfe, 0x00, b'{', 0x80],
        record("minus-one", 3, "-0001-06-01T00:00:00Z"),
        record("minus-5000", 4, "-5000-06-01T00:00:00Z"),
    ];
    let producer = raw_producer(&brokers);
    let mut payloads = vec![record("good-1", 1, "2026-11-27T10:00:00Z")];
    payloads.extend(poison.iter().cloned());
    payloads.push(record("good-2", 5, "2026-11-27T10:00:00Z"));
    for payload in &payloads {
        producer.send(FutureRecord::to(&event.topic).key("k").payload(payload), Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
    }
    let store = migrated_store(&database_url).await;
    let consumer = InProcessConsumer::start(&database_url, &[&event.topic], &brokers);
    wait_for_rows(&store, &key, 2, Duration::from_secs(60)).await;
    let failed = wait_until("four failed records", Duration::from_secs(30), || {
        let (store, topic) = (store.clone(), event.topic.clone());
        async move {
            let failed = store.failed_events(&topic).await.unwrap();
            (failed.len() == 4).then_some(failed)
        }
    })
    .await;
    let stored: Vec<Vec<u8>> = failed.iter().map(|f| f.payload.clone()).collect();
    assert_eq!(stored, poison, "payloads kept byte for byte");
    assert!(failed.iter().all(|f| !f.reason.is_empty() && !f.reason.contains('\0')), "{failed:?}");
    assert_eq!(rows_by_user(&store, &event.id).await, BTreeMap::from([("good-1".to_owned(), 1), ("good-2".to_owned(), 5)]));
    consumer.stop().await.unwrap();
}

on_every_dialect!(poison_records_on, poison_records_land_in_failed_events_and_the_next_good_record_is_written);

/// A batch the database refuses (here a slot with no slot row, which the foreign key
/// refuses) is written record by record: the good ones land, the refused one is failed.
async fn a_refused_batch_is_written_record_by_record(database_url: String) {
    let store = migrated_store(&database_url).await;
    let event = format!("{NAMESPACE}/{}", unique("refused"));
    store.ensure_slots(&event, 2).await.unwrap();
    let topic = unique("t");
    let row = |user: &str, slot: i64, offset: i64| {
        (
            CouponRow { event: event.clone(), user_id: user.into(), slot, ordinal: 1, issued_at: jiff::Timestamp::now(), mac: None },
            Position { topic: topic.clone(), partition: 0, offset },
        )
    };
    let batch = [row("a", 1, 0), row("b", 99, 1), row("c", 2, 2)];
    let outcome = store.write_batch(&batch, &[]).await.unwrap();
    assert_eq!(outcome.inserted, 2);
    assert_eq!(outcome.written.len(), 2);
    assert_eq!(outcome.conflicts.len(), 1);
    // PostgreSQL and SQLite refuse the row (foreign key); MySQL's INSERT IGNORE skips it
    // with a warning, and the check for rows that did not land catches it.
    let reason = &outcome.conflicts[0].reason;
    assert!(reason.contains("refused by the database") || reason.contains("no such slot"), "{reason}");
    let failed = store.failed_events(&topic).await.unwrap();
    assert_eq!(failed.iter().map(|f| f.offset).collect::<Vec<_>>(), vec![1]);
    assert_eq!(store.coupons(&event).await.unwrap(), vec![("a".to_owned(), 1), ("c".to_owned(), 2)]);
}

on_every_dialect!(a_refused_batch_is_written_record_by_record_on, a_refused_batch_is_written_record_by_record);

/// On the stop signal the api turns `/readyz` to 503 at once and keeps answering for the
/// shutdown delay, so Kubernetes takes it out of the endpoints before it stops accepting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_api_drains_before_it_stops_accepting() {
    let brokers = kafka_brokers();
    let event = provision_event(&brokers, NAMESPACE, 10, 1).await;
    let settings = ApiSettings { shutdown_delay: Duration::from_secs(2), ..api_settings(&redis_url(), &brokers) };
    let api = InProcessApi::start_with(settings).await;
    api.state.health.set("redis", true);
    api.state.health.set("kafka", true);
    let client = reqwest::Client::new();
    let readyz = format!("{}/readyz", api.base_url);
    assert_eq!(client.get(&readyz).send().await.unwrap().status().as_u16(), 200);
    api.request_stop();
    wait_until("readiness off", Duration::from_secs(2), || async {
        let status = client.get(&readyz).send().await.ok()?.status().as_u16();
        (status == 503).then_some(())
    })
    .await;
    // Still serving applies during the delay.
    let (status, body) = apply(&reqwest::Client::new(), &api.apply_url(&event.id), "late-but-served").await;
    assert!(status == 201 || status == 503, "answered while draining: {status} {body}");
    assert_ne!(status, 0);
    wait_until("stopped accepting", Duration::from_secs(10), || async {
        reqwest::Client::new().get(&readyz).send().await.is_err().then_some(())
    })
    .await;
}

/// `spec.paused` (the operator writes it into the configuration): issuing stops at once,
/// and resuming continues the same event with the same counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_event_answers_403_at_once_and_resumes_with_the_same_counters() {
    let brokers = kafka_brokers();
    let event = provision_event(&brokers, NAMESPACE, 10, 1).await;
    let api = start_api(&redis_url(), &brokers).await;
    let client = reqwest::Client::new();
    let url = api.apply_url(&event.id);
    let issued = issue_to(&client, &url, (0..3).map(|i| format!("before-{i}"))).await;
    assert_eq!(issued.len(), 3);
    let mut conn = redis().await;
    let config = EventConfig::open_now(10, &event.topic, Duration::from_secs(600));
    let paused = EventConfig { paused: true, ..config.clone() };
    provision_redis(&mut conn, &event.id, &paused, true).await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(apply(&client, &url, "during").await, (403, json!({"status": "paused"})));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(apply(&client, &url, "before-0").await, (403, json!({"status": "paused"})), "nothing is decided while paused");
    assert_eq!(counters(&mut conn, &event.id).await.issued, 3, "counters kept");

    provision_redis(&mut conn, &event.id, &config, true).await.unwrap();
    let resumed = issue_to(&client, &url, std::iter::once("after".to_owned())).await;
    assert_eq!(resumed, vec![("after".to_owned(), 4)], "the same event goes on");
    assert_eq!(apply(&client, &url, "before-0").await.0, 409);
}
