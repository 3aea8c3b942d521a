//! Redis Cluster, and events sharded across its masters: still exactly N, one coupon per
//! user, no sold-out while coupons remain on some shard, and nothing handed out twice when
//! a master dies mid-burst. Against the local cluster `dev/stack` starts (three masters with
//! a replica each), except the tests that kill or stall a master, on a cluster of their own.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use coupon_core::event::EventId;
use coupon_core::redis::keyspace::{self, EventLayout};
use coupon_core::redis::RedisHandle;
use coupon_service::app::{ApiSettings, ConsumerSettings};
use coupon_tests::cluster::{cluster, cluster_url, master_of_slot, provision_sharded_event, OwnCluster};
use coupon_tests::*;
use futures::stream::{self, StreamExt};
use serde_json::Value;

const NAMESPACE: &str = "cluster";
/// Requests in flight at once: a burst, not a queue.
const CONCURRENCY: usize = 64;

async fn start_api(redis_url: &str) -> InProcessApi {
    InProcessApi::start_ready(ApiSettings {
        namespace: NAMESPACE.into(),
        redis_url: redis_url.into(),
        kafka: kafka(&kafka_brokers()),
        ..ApiSettings::default()
    })
    .await
}

fn start_consumer(database_url: &str, topic: &str, redis_url: &str) -> InProcessConsumer {
    InProcessConsumer::start_with(ConsumerSettings {
        database_url: database_url.into(),
        redis_url: redis_url.into(),
        kafka: kafka(&kafka_brokers()),
        topics: vec![topic.into()],
        group_id: unique("cluster"),
        batch_linger: Duration::from_millis(10),
        recovery_settle: Duration::from_secs(2),
        ..ConsumerSettings::default()
    })
}

/// Every user applies, `CONCURRENCY` at a time, spread over `urls` (api replicas), and again
/// after a 503 (try again: a stock search cut short under load) as a client does; returns
/// each user's last answer.
async fn burst(urls: &[String], users: Vec<String>) -> Vec<(String, u16, Value)> {
    let client = reqwest::Client::new();
    let urls = Arc::new(urls.to_vec());
    stream::iter(users.into_iter().enumerate())
        .map(|(n, user)| {
            let (client, urls) = (client.clone(), urls.clone());
            async move {
                let started = std::time::Instant::now();
                loop {
                    let (status, body) = apply(&client, &urls[n % urls.len()], &user).await;
                    if status != 503 || started.elapsed() > Duration::from_secs(30) {
                        return (user, status, body);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

/// The slots answered 201, by user; asserts each slot was answered once.
fn issued(answers: &[(String, u16, Value)]) -> BTreeMap<String, i64> {
    let mut by_user = BTreeMap::new();
    let mut slots = BTreeSet::new();
    for (user, status, body) in answers {
        if *status == 201 {
            let slot = body["slot"].as_i64().expect("a 201 names its slot");
            assert!(slots.insert(slot), "slot {slot} answered twice");
            assert!(by_user.insert(user.clone(), slot).is_none(), "{user} answered 201 twice");
        }
    }
    by_user
}

fn statuses(answers: &[(String, u16, Value)]) -> BTreeMap<u16, usize> {
    let mut counts = BTreeMap::new();
    for (_, status, _) in answers {
        *counts.entry(*status).or_default() += 1;
    }
    counts
}

/// Waits until the rows hold exactly the coupons answered 201 and Redis counts them all
/// written.
async fn assert_rows_match(store: &coupon_service::sql::Store, event: &TestEvent, issued: &BTreeMap<String, i64>) {
    wait_for_rows(store, &event.key(), issued.len() as i64, Duration::from_secs(60)).await;
    let rows: BTreeMap<String, i64> = store.coupons(&event.key()).await.unwrap().into_iter().collect();
    assert_eq!(&rows, issued, "the rows are exactly the coupons answered 201");
    let conn = cluster().await;
    wait_until("issued == persisted", Duration::from_secs(30), || {
        let (mut conn, id) = (conn.clone(), event.id.clone());
        let expected = issued.len() as i64;
        async move {
            let c = keyspace::counters(&mut conn, &id).await.unwrap()?;
            (c.issued == expected && c.persisted == expected && c.unwritten == 0).then_some(())
        }
    })
    .await;
}

/// The shards of a K = 3 event sit on three different masters of the local cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shards_of_an_event_sit_on_different_masters() {
    let mut conn = cluster().await;
    let layout = EventLayout::new(&EventId::new(NAMESPACE, &unique("placement")).unwrap(), 3);
    let mut masters = BTreeSet::new();
    for shard in layout.shards() {
        masters.insert(master_of_slot(&mut conn, layout.shard_slot(shard)).await);
    }
    assert_eq!(masters.len(), 3, "{masters:?}");
}

/// An unsharded event works through a cluster named by a node that is not its master, and
/// by a list of seeds: commands follow MOVED to the slot's master.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unsharded_event_runs_on_the_cluster_from_any_node_or_seed_list() {
    const LIMIT: i64 = 40;
    let event = provision_sharded_event(&cluster_url(), &kafka_brokers(), NAMESPACE, LIMIT, 1).await;
    let mut conn = cluster().await;
    let master = master_of_slot(&mut conn, EventLayout::single(&event.id).shard_slot(0)).await;
    let other = ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"].into_iter().find(|node| *node != master).unwrap();
    let database_url = postgres_url();
    let store = migrated_store(&database_url).await;
    let api = start_api(&format!("redis://{other}")).await;
    let seeded = start_api("redis://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7000").await;
    let consumer = start_consumer(&database_url, &event.topic, &cluster_url());
    let users: Vec<String> = (0..120).map(|n| format!("one-{n}")).collect();
    let answers = burst(&[api.apply_url(&event.id), seeded.apply_url(&event.id)], users).await;
    let issued = issued(&answers);
    assert_eq!(issued.len() as i64, LIMIT, "{:?}", statuses(&answers));
    assert_eq!(issued.values().copied().collect::<BTreeSet<_>>(), (1..=LIMIT).collect(), "slots 1..=limit once each");
    assert_rows_match(&store, &event, &issued).await;
    consumer.stop().await.unwrap();
}

/// 3,000 users, limit 300, three shards: exactly 300 answered 201, slots 1..=300 once each,
/// 300 rows; every other user 410.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_shards_issue_exactly_the_limit_with_every_slot_once() {
    const LIMIT: i64 = 300;
    let event = provision_sharded_event(&cluster_url(), &kafka_brokers(), NAMESPACE, LIMIT, 3).await;
    let database_url = postgres_url();
    let store = migrated_store(&database_url).await;
    let api = start_api(&cluster_url()).await;
    let consumer = start_consumer(&database_url, &event.topic, &cluster_url());
    let users: Vec<String> = (0..3000).map(|n| format!("user-{n}")).collect();
    let answers = burst(&[api.apply_url(&event.id)], users).await;
    let issued = issued(&answers);
    let counts = statuses(&answers);
    assert_eq!(issued.len() as i64, LIMIT, "{counts:?}");
    assert_eq!(counts.get(&410).copied().unwrap_or(0), 3000 - LIMIT as usize, "everyone else sold out: {counts:?}");
    assert_eq!(issued.values().copied().collect::<BTreeSet<_>>(), (1..=LIMIT).collect(), "slots 1..=limit once each");
    assert_rows_match(&store, &event, &issued).await;
    // Every shard issued some: the event really was spread.
    let layout = EventLayout::new(&event.id, 3);
    for shard in layout.shards() {
        let on_shard = issued.keys().filter(|user| layout.home_shard(user) == shard).count();
        assert!(on_shard > 50, "shard {shard} issued {on_shard}");
    }
    consumer.stop().await.unwrap();
}

/// Every user's home is shard 0 of three: its own stride holds 100 coupons, the other 200
/// sit on shards nobody applies to. No one is answered 410 while they remain: all 300 are
/// issued, by stock moving to shard 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_all_homed_on_one_shard_still_get_every_coupon() {
    const LIMIT: i64 = 300;
    let event = provision_sharded_event(&cluster_url(), &kafka_brokers(), NAMESPACE, LIMIT, 3).await;
    let layout = EventLayout::new(&event.id, 3);
    let database_url = postgres_url();
    let store = migrated_store(&database_url).await;
    let api = start_api(&cluster_url()).await;
    let consumer = start_consumer(&database_url, &event.topic, &cluster_url());
    let users: Vec<String> = (0..).map(|n| format!("homed-{n}")).filter(|user| layout.home_shard(user) == 0).take(1000).collect();
    let answers = burst(&[api.apply_url(&event.id)], users.clone()).await;
    let issued = issued(&answers);
    let counts = statuses(&answers);
    assert_eq!(issued.len() as i64, LIMIT, "no phantom sold-out: {counts:?}");
    assert_eq!(counts.get(&410).copied().unwrap_or(0), 1000 - LIMIT as usize, "{counts:?}");
    assert_eq!(issued.values().copied().collect::<BTreeSet<_>>(), (1..=LIMIT).collect(), "slots 1..=limit once each");
    // Sold out everywhere now: asked again, the last users get 410 (from memory) and the
    // holders 409.
    let again = burst(&[api.apply_url(&event.id)], users[..50].to_vec()).await;
    for (user, status, _) in &again {
        let expected = if issued.contains_key(user) { 409 } else { 410 };
        assert_eq!(*status, expected, "{user}");
    }
    assert_rows_match(&store, &event, &issued).await;
    consumer.stop().await.unwrap();
}

/// One user, 1,000 times at once, across two api replicas: one coupon.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_user_a_thousand_times_across_replicas_gets_one_coupon() {
    let event = provision_sharded_event(&cluster_url(), &kafka_brokers(), NAMESPACE, 10, 3).await;
    let database_url = postgres_url();
    let store = migrated_store(&database_url).await;
    let first = start_api(&cluster_url()).await;
    let second = start_api("redis://127.0.0.1:7002,127.0.0.1:7001").await;
    let consumer = start_consumer(&database_url, &event.topic, &cluster_url());
    let answers = burst(&[first.apply_url(&event.id), second.apply_url(&event.id)], vec!["the-same-user".to_owned(); 1000]).await;
    let counts = statuses(&answers);
    assert_eq!(counts.get(&201).copied().unwrap_or(0), 1, "{counts:?}");
    assert_eq!(counts.get(&409).copied().unwrap_or(0), 999, "every other answer names the one coupon: {counts:?}");
    let issued: BTreeMap<String, i64> =
        answers.iter().filter(|a| a.1 == 201).map(|a| (a.0.clone(), a.2["slot"].as_i64().unwrap())).collect();
    assert_rows_match(&store, &event, &issued).await;
    consumer.stop().await.unwrap();
}

/// A master of a three-shard event is killed mid-burst and its replica promoted (losing what
/// it had not replicated). The shard is fenced, the whole event restored from SQL, and the
/// burst goes on: nothing is issued twice or beyond the limit, and every 201 has its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_master_killed_mid_burst_over_issues_nothing_and_every_201_has_its_row() {
    const LIMIT: i64 = 1000;
    let mut own = OwnCluster::start().await;
    let event = provision_sharded_event(&own.url(), &kafka_brokers(), NAMESPACE, LIMIT, 3).await;
    let layout = EventLayout::new(&event.id, 3);
    let database_url = postgres_url();
    let store = migrated_store(&database_url).await;
    let api = start_api(&own.seeds()).await;
    let consumer = start_consumer(&database_url, &event.topic, &own.seeds());
    let url = api.apply_url(&event.id);

    let first = burst(std::slice::from_ref(&url), (0..3000).map(|n| format!("first-{n}")).collect());
    let killer = async {
        // Once the burst is under way, kill the master of shard 1.
        let store = store.clone();
        let rows = wait_until("the burst under way", Duration::from_secs(30), || {
            let store = store.clone();
            let key = event.key();
            async move { Some(store.coupons(&key).await.unwrap().len()).filter(|rows| *rows >= 10) }
        })
        .await;
        (own.kill_master_of(layout.shard_slot(1)).await, rows)
    };
    let (mut answers, (killed, rows_at_kill)) = tokio::join!(first, killer);
    assert!((rows_at_kill as i64) < LIMIT * 3 / 4, "the master died mid-burst ({rows_at_kill} rows)");
    own.wait_until_failed_over(killed).await;
    // Users keep coming until the event is sold out. Users without a final answer (503 while
    // the event recovers, 409 while their own delivery is pending) ask again.
    let mut round = 0;
    loop {
        let pending: Vec<String> = answers.iter().filter(|a| a.1 != 201 && a.1 != 410).map(|a| a.0.clone()).collect();
        let fresh = (0..100).map(|n| format!("later-{round}-{n}"));
        let retry: Vec<String> = pending.into_iter().chain(fresh).collect();
        answers.retain(|a| matches!(a.1, 201 | 410));
        answers.extend(burst(std::slice::from_ref(&url), retry).await);
        round += 1;
        if answers.iter().filter(|a| a.1 == 201).count() as i64 >= LIMIT || round > 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let issued = issued(&answers);
    assert!(issued.len() as i64 <= LIMIT, "over-issued: {}", issued.len());
    let handle = RedisHandle::connect_with_deadline(own.seeds(), Duration::from_secs(10)).await.unwrap();
    wait_until("the event settled after the failover", Duration::from_secs(90), || {
        let (mut conn, id) = (handle.clone(), event.id.clone());
        async move {
            let c = keyspace::counters(&mut conn, &id).await.ok()??;
            (!c.recovering && c.unwritten == 0 && c.issued == c.persisted).then_some(())
        }
    })
    .await;
    let rows: BTreeMap<String, i64> = store.coupons(&event.key()).await.unwrap().into_iter().collect();
    for (user, slot) in &issued {
        assert_eq!(rows.get(user), Some(slot), "the 201 of {user} (slot {slot}) has its row");
    }
    assert!(rows.len() as i64 <= LIMIT);
    let slots: BTreeSet<i64> = rows.values().copied().collect();
    assert_eq!(slots.len(), rows.len(), "no slot twice");
    assert!(slots.iter().all(|slot| (1..=LIMIT).contains(slot)));
    assert_eq!(issued.len() as i64, LIMIT, "once restored, every coupon is issued: {:?}", statuses(&answers));
    consumer.stop().await.unwrap();
}

/// Stock moving between shards, attacked directly: a grant sent twice (a client that
/// resent it) moves its slots once, a grant is taken once, and a grant made for an earlier
/// event of the same name (deleted and created again: another epoch) is never taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_move_stock_once_and_never_into_another_epoch() {
    let event = provision_sharded_event(&cluster_url(), &kafka_brokers(), NAMESPACE, 20, 2).await;
    let layout = EventLayout::new(&event.id, 2);
    let mut conn = cluster().await;
    let lease = Duration::from_secs(60);
    let before = keyspace::stock(&mut conn, &layout, 1).await.unwrap().unwrap();
    assert_eq!(before.available, 10, "shard 1's stride: 2, 4, ..., 20");
    let grant = keyspace::grant(&mut conn, &layout, 1, 0, 4, lease, "g-1").await.unwrap().expect("granted");
    let resent = keyspace::grant(&mut conn, &layout, 1, 0, 4, lease, "g-1").await.unwrap().expect("the same grant");
    assert_eq!(grant, resent);
    assert_eq!(grant.slots, vec![2, 4, 6, 8]);
    assert_eq!(keyspace::stock(&mut conn, &layout, 1).await.unwrap().unwrap().available, 6, "moved once");

    let user = (0..).map(|n| format!("g-user-{n}")).find(|u| layout.home_shard(u) == 0).unwrap();
    let (_, taken) = keyspace::apply(&mut conn, &layout, &user, lease, Some(&grant)).await.unwrap();
    assert!(taken);
    let (_, again) = keyspace::apply(&mut conn, &layout, &format!("{user}-b"), lease, Some(&grant)).await.unwrap();
    assert!(again, "already taken: answered as taken, nothing added");
    assert_eq!(
        keyspace::stock(&mut conn, &layout, 0).await.unwrap().unwrap().available,
        10 - 2 + 4,
        "shard 0: its stride left and the grant"
    );

    // The event is deleted and created again with the same layout: a grant of the old
    // event's epoch carries nothing into the new one.
    let stale = keyspace::grant(&mut conn, &layout, 1, 0, 2, lease, "g-2").await.unwrap().expect("granted");
    keyspace::delete_event(&mut conn, &event.id).await.unwrap();
    let config = coupon_core::event::EventConfig { shards: 2, ..coupon_core::event::EventConfig::open_now(20, &event.topic, lease) };
    coupon_core::provision::provision_redis(&mut conn, &event.id, &config, false).await.unwrap();
    let (_, taken) = keyspace::apply(&mut conn, &layout, &user, lease, Some(&stale)).await.unwrap();
    assert!(!taken, "a grant of another epoch is not taken");
    assert_eq!(keyspace::stock(&mut conn, &layout, 0).await.unwrap().unwrap().available, 10 - 1, "shard 0 has its stride only");
    keyspace::delete_event(&mut conn, &event.id).await.unwrap();
}

/// The CLI creates a sharded event on the cluster (seeds in `REDIS_URL`), refuses to change
/// its number of shards, and `event show` and the operator's backend report the coupons of
/// every shard; `event delete` removes every shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_and_the_operator_see_a_sharded_event_whole() {
    const LIMIT: i64 = 30;
    let name = unique("cli");
    let topic = format!("coupons.{name}");
    let seeds = "redis://127.0.0.1:7001,127.0.0.1:7000";
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_coupon-service-under-test"));
    // Asked whether a new event had coupons (a new one has none).
    let database = coupon_tests::sqlite_url();
    coupon_tests::migrated_store(&database).await;
    let cli = |args: &[&str]| {
        std::process::Command::new(binary)
            .args(args)
            .env("REDIS_URL", seeds)
            .env("KAFKA_BROKERS", kafka_brokers())
            .env("DATABASE_URL", &database)
            .output()
            .unwrap()
    };
    let limit = LIMIT.to_string();
    let create = ["event", "create", &name, "--namespace", NAMESPACE, "--limit", &limit, "--topic", &topic, "--partitions", "1"];
    let created = cli(&[&create[..], &["--shards", "3"]].concat());
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let changed = cli(&[&create[..], &["--shards", "2"]].concat());
    assert!(!changed.status.success(), "the number of shards cannot change");
    assert!(String::from_utf8_lossy(&changed.stderr).contains("shards cannot change"), "{}", String::from_utf8_lossy(&changed.stderr));

    let id = EventId::new(NAMESPACE, &name).unwrap();
    let api = start_api(&cluster_url()).await;
    let answers = burst(&[api.apply_url(&id)], (0..90).map(|n| format!("cli-{n}")).collect()).await;
    assert_eq!(issued(&answers).len() as i64, LIMIT, "{:?}", statuses(&answers));
    let shown = cli(&["event", "show", &name, "--namespace", NAMESPACE]);
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&shown.stdout)));
    assert_eq!(shown["issued"], LIMIT, "{shown}");
    let backend = coupon_operator::backend::Backend::new(seeds, &kafka(&kafka_brokers()), 1).unwrap();
    let counters =
        wait_until("the operator's backend connected", Duration::from_secs(10), || async { backend.counters(&id).await.ok().flatten() })
            .await;
    assert_eq!(counters.issued, LIMIT, "the operator's `issued` sums the shards");

    let deleted = cli(&["event", "delete", &name, "--namespace", NAMESPACE]);
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
    let mut conn = cluster().await;
    assert_eq!(keyspace::existing_keys(&mut conn, &id).await.unwrap(), 0, "no shard keeps state");
    for shard in 1..3 {
        let snapshot = keyspace::snapshot_shard(&mut conn, &EventLayout::new(&id, 3), shard).await.unwrap();
        assert!(snapshot.config.is_empty() && snapshot.users.is_empty(), "shard {shard}: {snapshot:?}");
    }
}

/// A shard whose state Redis lost comes back recovering, never open and empty, even when the
/// provisioning caller did not know the event existed: the other shards tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_shard_is_written_back_recovering() {
    use coupon_core::provision::{provision_redis, RedisOutcome};
    let event = provision_sharded_event(&cluster_url(), &kafka_brokers(), NAMESPACE, 20, 3).await;
    let layout = EventLayout::new(&event.id, 3);
    let mut conn = cluster().await;
    let config = coupon_core::event::EventConfig {
        shards: 3,
        ..coupon_core::event::EventConfig::open_now(20, &event.topic, Duration::from_secs(600))
    };
    for lost in [2u16, 0] {
        // Everything of that shard is gone, as after a master restarted empty.
        let snapshot = keyspace::snapshot_shard(&mut conn, &layout, lost).await.unwrap();
        assert!(!snapshot.config.is_empty());
        keyspace::delete_event_shard_for_tests(&mut conn, &layout, lost).await.unwrap();
        let outcome = provision_redis(&mut conn, &event.id, &config, false).await.unwrap();
        assert_eq!(outcome, RedisOutcome::CreatedRecovering, "shard {lost}");
        let counters = keyspace::counters(&mut conn, &event.id).await.unwrap().unwrap();
        assert!(counters.recovering, "shard {lost} lost: the event waits for its restore");
    }
    keyspace::delete_event(&mut conn, &event.id).await.unwrap();
}

/// An api that died between asking a shard for stock and the gate call carrying it: the
/// consumer closes the grant once its deadline passed and gives the slots back to their
/// shard, and the dead api's gate call, arriving late, takes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_grant_nobody_took_goes_back_to_its_shard() {
    let event = provision_sharded_event(&cluster_url(), &kafka_brokers(), NAMESPACE, 20, 2).await;
    let layout = EventLayout::new(&event.id, 2);
    let database_url = postgres_url();
    migrated_store(&database_url).await;
    let consumer = start_consumer(&database_url, &event.topic, &cluster_url());
    let mut conn = cluster().await;
    let grant = keyspace::grant(&mut conn, &layout, 1, 0, 4, Duration::from_millis(200), "orphan").await.unwrap().expect("granted");
    let reader = conn.clone();
    let stock = |shard: u16| {
        let (mut conn, layout) = (reader.clone(), layout.clone());
        async move { keyspace::stock(&mut conn, &layout, shard).await.unwrap().unwrap() }
    };
    assert_eq!((stock(1).await.available, stock(1).await.unsettled_grants), (6, 1));
    wait_until("the consumer gave the grant back", Duration::from_secs(30), || async {
        let source = stock(1).await;
        (source.available == 10 && source.unsettled_grants == 0).then_some(())
    })
    .await;
    let user = (0..).map(|n| format!("late-{n}")).find(|u| layout.home_shard(u) == 0).unwrap();
    let (_, taken) = keyspace::apply(&mut conn, &layout, &user, Duration::from_secs(60), Some(&grant)).await.unwrap();
    assert!(!taken, "refused for good");
    assert_eq!(stock(0).await.available, 10 - 1, "shard 0 has its own stride only");
    consumer.stop().await.unwrap();
}

/// A limit raised on a sharded event while the home shard's master stalls: the other shards
/// learn the raise first (the configuration is written shard by shard) and hand out slots
/// beyond the old limit while the home shard still holds it. Every such 201 gets its row:
/// the consumer judges a slot against the largest limit of the shards, not the home's alone
/// (it sent them to `failed_events`, and healing would have given their slots again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_limit_raised_while_the_home_master_stalls_loses_no_coupon() {
    const OLD_LIMIT: i64 = 30;
    const NEW_LIMIT: i64 = 60;
    const PER_SHARD: usize = 15;
    // A cluster of its own: a stalled master would hold up the other tests' events.
    let own = OwnCluster::start().await;
    let event = provision_sharded_event(&own.url(), &kafka_brokers(), NAMESPACE, OLD_LIMIT, 3).await;
    let layout = EventLayout::new(&event.id, 3);
    let database_url = postgres_url();
    let store = migrated_store(&database_url).await;
    let consumer = start_consumer(&database_url, &event.topic, &own.seeds());
    let api = start_api(&own.seeds()).await;
    let connect = || RedisHandle::connect_with_deadline(own.seeds(), Duration::from_secs(10));
    let mut conn = connect().await.unwrap();

    // The home shard's master takes no writes (nor scripts) for a while; reads go on.
    let home_master = master_of_slot(&mut conn, layout.shard_slot(0)).await;
    let mut paused = redis::Client::open(format!("redis://{home_master}")).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(12_000).arg("WRITE").query_async(&mut paused).await.unwrap();
    // The raise, retried as the operator does while the home shard times out, on a
    // connection of its own (a paused command holds up those behind it on its connection).
    let raise = tokio::spawn({
        let (id, topic) = (event.id.clone(), event.topic.clone());
        let connecting = connect();
        async move {
            let mut conn = connecting.await.unwrap();
            let config = coupon_core::event::EventConfig {
                shards: 3,
                ..coupon_core::event::EventConfig::open_now(NEW_LIMIT, &topic, Duration::from_secs(600))
            };
            loop {
                match coupon_core::provision::provision_redis(&mut conn, &id, &config, true).await {
                    Ok(outcome) => return outcome,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
    });
    for shard in [1u16, 2] {
        wait_until("the shard learnt the raise", Duration::from_secs(10), || {
            let (mut conn, layout) = (conn.clone(), layout.clone());
            async move { (keyspace::stock(&mut conn, &layout, shard).await.unwrap()?.limit == NEW_LIMIT).then_some(()) }
        })
        .await;
    }

    // Users of shards 1 and 2 only: each shard hands out 15 slots of its own stride, which
    // now reaches beyond the old limit, without asking the stalled shard for stock.
    let users: Vec<String> = (0..)
        .map(|n| format!("raise-{n}"))
        .filter(|user| layout.home_shard(user) != 0)
        .scan((0usize, 0usize), |taken, user| {
            let count = if layout.home_shard(&user) == 1 { &mut taken.0 } else { &mut taken.1 };
            *count += 1;
            Some((*count <= PER_SHARD).then_some(user))
        })
        .flatten()
        .take(2 * PER_SHARD)
        .collect();
    let answers = burst(&[api.apply_url(&event.id)], users).await;
    let issued = issued(&answers);
    assert_eq!(issued.len(), 2 * PER_SHARD, "{:?}", statuses(&answers));
    assert!(issued.values().any(|slot| *slot > OLD_LIMIT), "slots beyond the old limit were handed out: {issued:?}");
    // Their records reach the consumer while the home shard still says 30.
    let rows = wait_for_at_least_rows(&store, &event.key(), issued.len() as i64, Duration::from_secs(10)).await;
    let failed: Vec<String> = store.failed_events(&event.topic).await.unwrap().into_iter().map(|f| f.reason).collect();
    assert_eq!(rows, issued.len() as i64, "every 201 has its row; failed: {failed:?}");
    let home_limit = keyspace::stock(&mut conn, &layout, 0).await.unwrap().unwrap().limit;
    assert_eq!(home_limit, OLD_LIMIT, "the rows were written while the home shard still held the old limit");

    assert_eq!(raise.await.unwrap(), coupon_core::provision::RedisOutcome::Updated);
    let rows: BTreeMap<String, i64> = store.coupons(&event.key()).await.unwrap().into_iter().collect();
    assert_eq!(rows, issued, "the rows are exactly the coupons answered 201");
    assert_eq!(store.failed_events(&event.topic).await.unwrap(), vec![], "no coupon went to failed_events");
    consumer.stop().await.unwrap();
}
