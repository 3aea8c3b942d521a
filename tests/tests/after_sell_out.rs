//! A sharded event near and after its sell-out: applies looking for stock behind a stalled
//! master are answered in bounded time and never 408 for a coupon they were issued, and a
//! slot no apply can get any more does not keep the event from saying it is sold out.
//! Against Redis Clusters, so that the shards sit on different masters: the local one
//! (`dev/stack`), and one of the test's own where a master is stalled.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use coupon_core::redis::keyspace::{self, EventLayout, GateDecision, HealVerdict, OverdueEntry};
use coupon_core::redis::RedisHandle;
use coupon_service::app::{ApiSettings, ConsumerSettings};
use coupon_service::http::ServerLimits;
use coupon_tests::cluster::{cluster, cluster_url, master_of_slot, provision_sharded_event, OwnCluster};
use coupon_tests::*;
use futures::stream::{self, StreamExt};

const NAMESPACE: &str = "sellout";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

async fn start_api(redis_url: &str) -> InProcessApi {
    InProcessApi::start_ready(ApiSettings {
        namespace: NAMESPACE.into(),
        redis_url: redis_url.into(),
        kafka: kafka(&kafka_brokers()),
        produce_timeout: Duration::from_secs(1),
        server: ServerLimits { request_timeout: REQUEST_TIMEOUT, ..ServerLimits::default() },
        ..ApiSettings::default()
    })
    .await
}

/// `count` user names whose home is `shard` of `layout`.
fn homed_on(layout: &EventLayout, shard: u16, prefix: &str, count: usize) -> Vec<String> {
    (0..).map(|n| format!("{prefix}-{n}")).filter(|user| layout.home_shard(user) == shard).take(count).collect()
}

/// Shard 0's own stride is handed out; forty more users of shard 0 then need stock from
/// shard 1, whose master takes no writes for six seconds. Each apply is answered within the
/// request timeout and none is 408: the stock search is bounded, so applies no longer queue
/// behind each other's stock requests until the master is back, by which time the HTTP
/// layer had answered 408 for coupons their tasks went on to issue. Once the master is
/// back, the users who were answered 503 apply again: exactly the limit is handed out, and
/// every 201 has its row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn applies_looking_for_stock_behind_a_stalled_master_are_never_408() {
    const LIMIT: i64 = 40;
    // A cluster of its own: a stalled master would hold up the other tests' events.
    let own = OwnCluster::start().await;
    let event = provision_sharded_event(&own.url(), &kafka_brokers(), NAMESPACE, LIMIT, 2).await;
    let layout = EventLayout::new(&event.id, 2);
    let database_url = postgres_url();
    let store = migrated_store(&database_url).await;
    let consumer = InProcessConsumer::start_with(ConsumerSettings {
        database_url: database_url.clone(),
        redis_url: own.seeds(),
        kafka: kafka(&kafka_brokers()),
        topics: vec![event.topic.clone()],
        group_id: unique("sellout"),
        batch_linger: Duration::from_millis(10),
        recovery_settle: Duration::from_secs(2),
        ..ConsumerSettings::default()
    });
    let api = start_api(&own.seeds()).await;
    let url = api.apply_url(&event.id);
    let client = reqwest::Client::new();
    let mut granted: BTreeMap<String, i64> = BTreeMap::new();
    for user in homed_on(&layout, 0, "own", 20) {
        let (status, body) = apply(&client, &url, &user).await;
        assert_eq!(status, 201, "{body}");
        granted.insert(user, body["slot"].as_i64().unwrap());
    }

    let mut conn = RedisHandle::connect_with_deadline(own.seeds(), Duration::from_secs(10)).await.unwrap();
    let stalled = master_of_slot(&mut conn, layout.shard_slot(1)).await;
    let mut paused = redis::Client::open(format!("redis://{stalled}")).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(6_000).arg("WRITE").query_async(&mut paused).await.unwrap();
    let paused_at = Instant::now();
    let waiting = homed_on(&layout, 0, "needs-stock", 40);
    let answers: Vec<(String, u16, serde_json::Value, Duration)> = stream::iter(waiting.clone())
        .map(|user| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let started = Instant::now();
                let (status, body) = apply(&client, &url, &user).await;
                (user, status, body, started.elapsed())
            }
        })
        .buffer_unordered(40)
        .collect()
        .await;
    assert!(paused_at.elapsed() < Duration::from_secs(6), "the burst was answered while the master stalled");
    for (user, status, body, took) in &answers {
        assert_ne!(*status, 408, "{user}: {body}");
        assert!(*took < REQUEST_TIMEOUT, "{user} waited {took:?}");
        assert!(matches!(status, 201 | 503), "{user}: {status} {body}");
        if *status == 201 {
            granted.insert(user.clone(), body["slot"].as_i64().unwrap());
        }
    }

    // The master is back: whoever has no coupon applies again until the limit is handed
    // out. Grants the cut-short searches asked for are closed by healing and their slots
    // handed out (until then they count as taken: 410, then the event reopens).
    let deadline = Instant::now() + Duration::from_secs(60);
    while (granted.len() as i64) < LIMIT {
        assert!(Instant::now() < deadline, "the limit was not handed out: {} coupons", granted.len());
        for user in &waiting {
            if granted.contains_key(user) {
                continue;
            }
            let (status, body) = apply(&client, &url, user).await;
            assert!(matches!(status, 201 | 410 | 503), "{user}: {status} {body}");
            if status == 201 {
                granted.insert(user.clone(), body["slot"].as_i64().unwrap());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(granted.len() as i64, LIMIT);
    let mut slots: Vec<i64> = granted.values().copied().collect();
    slots.sort();
    assert_eq!(slots, (1..=LIMIT).collect::<Vec<_>>(), "every slot once");
    wait_for_rows(&store, &event.key(), LIMIT, Duration::from_secs(60)).await;
    let rows: BTreeMap<String, i64> = store.coupons(&event.key()).await.unwrap().into_iter().collect();
    assert_eq!(rows, granted, "the rows are exactly the coupons answered 201");
    consumer.stop().await.unwrap();
}

/// Every slot is handed out; then healing takes one user's entry away while another row
/// holds its slot (the slot stays taken). No slot is left to hand out, and a new user is
/// told so (410): the sold-out check counted held entries against the limit, one short for
/// ever, and answered 503 after searching every shard for stock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_kept_by_healing_still_lets_the_event_sell_out() {
    const LIMIT: i64 = 10;
    let event = provision_sharded_event(&cluster_url(), &kafka_brokers(), NAMESPACE, LIMIT, 2).await;
    let layout = EventLayout::new(&event.id, 2);
    let mut conn = cluster().await;
    let users: Vec<String> = homed_on(&layout, 0, "a", 5).into_iter().chain(homed_on(&layout, 1, "b", 5)).collect();
    for (n, user) in users.iter().enumerate() {
        // The first user's delivery ends at once; the others' last the test.
        let lease = if n == 0 { Duration::from_millis(1) } else { Duration::from_secs(600) };
        let (decision, _) = keyspace::apply(&mut conn, &layout, user, lease, None).await.unwrap();
        assert!(matches!(decision, GateDecision::Issued { .. }), "{user}: {decision:?}");
    }
    let holding = keyspace::holdings(&mut conn, &layout, &users[0]).await.unwrap();
    let entry = OverdueEntry { user: users[0].clone(), slot: holding[0].slot };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let healed = keyspace::heal(&mut conn, &layout, 0, i64::MAX / 2, &[(entry, HealVerdict::SlotTaken)]).await.unwrap();
    assert_eq!(healed.healed, 1, "{healed:?}");
    let held: i64 = futures::future::join_all(layout.shards().map(|shard| {
        let (mut conn, layout) = (conn.clone(), layout.clone());
        async move { keyspace::stock(&mut conn, &layout, shard).await.unwrap().unwrap().held }
    }))
    .await
    .into_iter()
    .sum();
    assert_eq!(held, LIMIT - 1, "one slot is neither held nor free");

    let api = start_api(&cluster_url()).await;
    let client = reqwest::Client::new();
    for user in ["late-0", "late-1", "late-2"] {
        let (status, body) = apply(&client, &api.apply_url(&event.id), user).await;
        assert_eq!(status, 410, "{user}: {body}");
    }
    keyspace::delete_event(&mut conn, &event.id).await.unwrap();
}

/// Two apis; the event sells out and the second one keeps its holders in memory. The limit
/// is raised and a new user gets a coupon through the first api. Asked again through the
/// second, they hear 409 with their slot, not 410: a new limit (like slots a grant gives
/// back) changes `holders_version`, so the snapshot is not kept past it (it was kept, the
/// version unchanged, and the new holder was told the event had sold out).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_after_a_raised_limit_is_known_to_every_api() {
    use coupon_core::event::EventConfig;
    use coupon_core::provision::{provision_redis, RedisOutcome};
    let brokers = kafka_brokers();
    let event = provision_event(&brokers, NAMESPACE, 2, 1).await;
    let settings = || ApiSettings {
        namespace: NAMESPACE.into(),
        redis_url: redis_url(),
        kafka: kafka(&brokers),
        sold_out_recheck: Duration::from_millis(300),
        ..ApiSettings::default()
    };
    let (first, second) = (InProcessApi::start_ready(settings()).await, InProcessApi::start_ready(settings()).await);
    let client = reqwest::Client::new();
    for user in ["u1", "u2"] {
        assert_eq!(apply(&client, &first.apply_url(&event.id), user).await.0, 201);
    }
    assert_eq!(apply(&client, &second.apply_url(&event.id), "u3").await.0, 410);
    let before = wait_until("the second api holds the holders", Duration::from_secs(10), || async {
        second.state.apply.holders_snapshot(&event.id)
    })
    .await;

    let mut conn = RedisHandle::connect_with_deadline(redis_url(), Duration::from_secs(10)).await.unwrap();
    let raised = EventConfig::open_now(3, &event.topic, Duration::from_secs(600));
    assert_eq!(provision_redis(&mut conn, &event.id, &raised, true).await.unwrap(), RedisOutcome::Updated);
    let (status, body) = apply(&client, &first.apply_url(&event.id), "new").await;
    assert_eq!(status, 201, "{body}");
    // Other users' sold-out answers reach the gate again once the re-check interval passed:
    // the second api then drops the snapshot taken before the new limit and loads another.
    wait_until("the second api's snapshot replaced", Duration::from_secs(10), || async {
        assert_eq!(apply(&client, &second.apply_url(&event.id), "u4").await.0, 410);
        second.state.apply.holders_snapshot(&event.id).filter(|version| *version != before)
    })
    .await;
    let (status, answer) = apply(&client, &second.apply_url(&event.id), "new").await;
    assert_eq!((status, &answer["slot"]), (409, &body["slot"]), "{answer}");
}

/// An event of 40 coupons sells out and a second api keeps its holders in memory. Healing
/// then gives one slot back, and a newcomer gets it through the first api. The second api
/// learns both changes by reading the two users the holders' change log names, not every
/// holder again: it still reads whole only once, and it answers the newcomer 409 with their
/// slot from memory and the healed user 410.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_handed_out_again_after_sell_out_is_read_as_a_change_not_a_reload() {
    const LIMIT: usize = 40;
    let brokers = kafka_brokers();
    let event = provision_event(&brokers, NAMESPACE, LIMIT as i64, 1).await;
    let layout = EventLayout::single(&event.id);
    let settings = || ApiSettings {
        namespace: NAMESPACE.into(),
        redis_url: redis_url(),
        kafka: kafka(&brokers),
        sold_out_recheck: Duration::from_millis(300),
        ..ApiSettings::default()
    };
    let (first, second) = (InProcessApi::start_ready(settings()).await, InProcessApi::start_ready(settings()).await);
    let client = reqwest::Client::new();
    // One holder's delivery ends at once (healing will find it without a row); the others
    // get theirs through the api.
    let mut conn = RedisHandle::connect_with_deadline(redis_url(), Duration::from_secs(10)).await.unwrap();
    let (GateDecision::Issued { slot: lost_slot, .. }, _) =
        keyspace::apply(&mut conn, &layout, "lost", Duration::from_millis(1), None).await.unwrap()
    else {
        panic!("issued")
    };
    let holders: Vec<String> = (1..LIMIT).map(|n| format!("holder-{n}")).collect();
    let answers: Vec<u16> = stream::iter(holders.iter())
        .map(|user| {
            let (client, url) = (client.clone(), first.apply_url(&event.id));
            async move { apply(&client, &url, user).await.0 }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(answers.iter().all(|status| *status == 201), "{answers:?}");
    assert_eq!(apply(&client, &second.apply_url(&event.id), "late-0").await.0, 410);
    let before = wait_until("the second api holds the holders", Duration::from_secs(10), || async {
        second.state.apply.holders_snapshot(&event.id)
    })
    .await;
    let metrics = &second.state.metrics;
    assert_eq!((metrics.holders_shards_read_whole.get(), metrics.holders_changes_read.get()), (1, 0));

    let cutoff = keyspace::server_time_ms(&mut conn).await.unwrap();
    let lost = OverdueEntry { user: "lost".into(), slot: lost_slot };
    assert_eq!(keyspace::heal(&mut conn, &layout, 0, cutoff, &[(lost, HealVerdict::Free)]).await.unwrap().healed, 1);
    let (status, body) = apply(&client, &first.apply_url(&event.id), "newcomer").await;
    assert_eq!((status, body["slot"].as_i64()), (201, Some(lost_slot)), "{body}");
    wait_until("the second api's holders refreshed", Duration::from_secs(10), || async {
        assert_eq!(apply(&client, &second.apply_url(&event.id), "late-1").await.0, 410);
        second.state.apply.holders_snapshot(&event.id).filter(|version| *version != before)
    })
    .await;
    let (status, answer) = apply(&client, &second.apply_url(&event.id), "newcomer").await;
    assert_eq!((status, answer["slot"].as_i64()), (409, Some(lost_slot)), "{answer}");
    assert_eq!(apply(&client, &second.apply_url(&event.id), "lost").await.0, 410);
    assert_eq!(metrics.holders_shards_read_whole.get(), 1, "the holders were not read whole again");
    assert_eq!(metrics.holders_changes_read.get(), 2, "the healed user and the newcomer");
}
