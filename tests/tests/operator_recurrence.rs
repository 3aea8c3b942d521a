//! A recurring event against the local control plane's real API server and real Redis,
//! Kafka and SQL: each occurrence is warmed up, opened, drained and closed by the operator
//! as a sale of its own.

use std::time::Duration;

use coupon_operator::crd::{CouponEvent, Phase, RecurrenceSpec, Schedule};
use coupon_tests::local_cluster::operator::*;
use coupon_tests::local_cluster::NamespacedCluster;
use coupon_tests::{kafka_brokers, wait_until, InProcessApi, InProcessConsumer};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// The object once its status names the occurrence starting at `start` and is in `phase`.
async fn wait_for_occurrence(cluster: &NamespacedCluster, name: &str, start: Option<Timestamp>, phase: Phase) -> CouponEvent {
    wait_until(&format!("{name}: occurrence {start:?} {phase:?}"), Duration::from_secs(150), || async move {
        cluster.get::<CouponEvent>(name).await.filter(|e| {
            e.status.as_ref().is_some_and(|s| {
                s.phase == phase
                    && s.occurrence.is_some()
                    && start.is_none_or(|start| s.occurrence.as_ref().is_some_and(|o| o.start.0 == start))
            })
        })
    })
    .await
}

/// A recurring event every `cron` for `duration` with a 30-second warm-up and no cool-down,
/// two coupons each.
fn recurring_event(cluster: &NamespacedCluster, cron: &str, duration: &str, count: Option<u32>, from: Timestamp) -> CouponEvent {
    let mut event = coupon_event(cluster, 2, SignedDuration::from_secs(-1), SignedDuration::from_secs(300));
    event.spec.schedule = Schedule {
        start: None,
        end: None,
        recurrence: Some(RecurrenceSpec {
            cron: cron.into(),
            time_zone: "Asia/Seoul".into(),
            duration: duration.into(),
            from: Some(Time(from)),
            count,
            until: None,
        }),
        warm_up: Some("30s".into()),
        cool_down: Some("0s".into()),
    };
    event
}

/// Every minute for 20 seconds, twice, two coupons each: the users who won the first win
/// again in the second (each occurrence its own allotment), the rows of each are keyed by
/// their occurrence, the status names the occurrence and the next, and after the last the
/// event is closed for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_occurrence_is_a_sale_of_its_own() {
    let cluster = cluster().await;
    let operator = start_operator(&cluster, "operator-0").await;
    let database = coupon_tests::sqlite_url();
    let store = coupon_tests::migrated_store(&database).await;
    let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap();
    let event = recurring_event(&cluster, "* * * * *", "20s", Some(2), now);
    let topic = event.spec.topic.clone();
    let event = cluster.create(&event).await;
    let name = event.metadata.name.clone().unwrap();
    let consumer = InProcessConsumer::start(&database, &[topic.as_str()], &kafka_brokers());
    let api = InProcessApi::start(&cluster.namespace, &kafka_brokers()).await;
    let users = || (1..=5).map(|u| format!("user-{u}"));

    let first = wait_for_occurrence(&cluster, &name, None, Phase::Open).await;
    let status = first.status.clone().unwrap();
    let occurrence = status.occurrence.clone().unwrap();
    assert_eq!(occurrence.start.0.as_second() % 60, 0, "on a minute");
    assert_eq!(occurrence.end.0, occurrence.start.0 + SignedDuration::from_secs(20));
    let next = status.next_occurrence.clone().expect("the next occurrence is shown");
    assert_eq!(next.start.0, occurrence.start.0 + SignedDuration::from_secs(60));
    let key = |start: Timestamp| format!("{}-o{}", key_of(&first), start.as_second());
    assert_eq!(apply_all(&api, &cluster.namespace, &name, users()).await, vec![1, 2]);
    assert_eq!(apply_all(&api, &cluster.namespace, &name, users()).await, Vec::<i64>::new(), "two coupons in this occurrence");
    coupon_tests::wait_for_rows(&store, &key(occurrence.start.0), 2, Duration::from_secs(30)).await;

    // The next occurrence: its own two coupons, the same users among the winners.
    let second = wait_for_occurrence(&cluster, &name, Some(next.start.0), Phase::Open).await;
    assert_eq!(second.status.as_ref().unwrap().issued, 0, "counted from zero");
    assert_eq!(second.status.as_ref().unwrap().next_occurrence, None, "the last of two");
    assert_eq!(apply_all(&api, &cluster.namespace, &name, users()).await, vec![1, 2]);
    coupon_tests::wait_for_rows(&store, &key(next.start.0), 2, Duration::from_secs(30)).await;

    // Over: closed for good once written, the last occurrence kept in the status.
    let closed = wait_for_occurrence(&cluster, &name, Some(next.start.0), Phase::Closed).await;
    assert_eq!(closed.status.as_ref().unwrap().issued, 2);
    assert_eq!(apply_all(&api, &cluster.namespace, &name, users()).await, Vec::<i64>::new(), "nothing after the last");
    for start in [occurrence.start.0, next.start.0] {
        assert_eq!(coupon_tests::wait_for_stable_rows(&store, &key(start), Duration::from_secs(3)).await, 2, "exactly two of {start}");
    }
    assert!(store.failed_events(&topic).await.unwrap().is_empty(), "nothing failed");
    consumer.stop().await.unwrap();
    assert_nothing_refused(&cluster);
    operator.kill(&cluster);
}

/// The recurrence edited while an occurrence is open, so that the occurrence is not one of
/// it any more (`from` moved past its start): it runs to its end (never closed early, never
/// reopened, never a second sale in its minute), and the next occurrence opens after it as a
/// sale of its own, at once (not held back as if Redis had lost it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_of_the_recurrence_lets_the_open_occurrence_run_to_its_end() {
    let cluster = cluster().await;
    let operator = start_operator(&cluster, "operator-0").await;
    let database = coupon_tests::sqlite_url();
    let store = coupon_tests::migrated_store(&database).await;
    // Every minute for 25 seconds, from the first with its whole warm-up ahead.
    let soon = Timestamp::now().as_second() + 35;
    let from = Timestamp::from_second(soon + (60 - soon.rem_euclid(60)) % 60).unwrap();
    let event = cluster.create(&recurring_event(&cluster, "* * * * *", "25s", None, from)).await;
    let name = event.metadata.name.clone().unwrap();
    let topic = event.spec.topic.clone();
    let consumer = InProcessConsumer::start(&database, &[topic.as_str()], &kafka_brokers());
    let api = InProcessApi::start(&cluster.namespace, &kafka_brokers()).await;
    let user = |n: usize| std::iter::once(format!("user-{n}"));

    let open = wait_for_occurrence(&cluster, &name, Some(from), Phase::Open).await;
    let first = open.status.unwrap().occurrence.unwrap();
    assert_eq!(apply_all(&api, &cluster.namespace, &name, user(1)).await, vec![1]);
    // From a second past its start: the open occurrence is not one of the recurrence now.
    let moved = (from + SignedDuration::from_secs(1)).to_string();
    cluster.patch::<CouponEvent>(&name, serde_json::json!({"spec": {"schedule": {"recurrence": {"from": moved}}}})).await;
    let generation = cluster.get::<CouponEvent>(&name).await.unwrap().metadata.generation;
    wait_until("the edit looked at", Duration::from_secs(30), || async {
        cluster
            .get::<CouponEvent>(&name)
            .await
            .filter(|e| e.status.as_ref().is_some_and(|s| s.observed_generation == generation))
            .map(|_| ())
    })
    .await;
    assert!(Timestamp::now() < first.end.0, "the test reached here within the occurrence");
    assert_eq!(apply_all(&api, &cluster.namespace, &name, user(2)).await, vec![2], "still open after the edit");
    let edited = cluster.get::<CouponEvent>(&name).await.unwrap();
    assert_eq!(edited.status.as_ref().unwrap().occurrence.as_ref().unwrap().start, first.start, "the open one is reported");

    // The next minute: its own sale, open at once.
    let next_start = from + SignedDuration::from_secs(60);
    wait_for_occurrence(&cluster, &name, Some(next_start), Phase::Open).await;
    assert_eq!(apply_all(&api, &cluster.namespace, &name, user(1)).await, vec![1], "a new sale, answered at once");
    let key = |start: Timestamp| format!("{}-o{}", key_of(&event), start.as_second());
    coupon_tests::wait_for_rows(&store, &key(from), 2, Duration::from_secs(30)).await;
    coupon_tests::wait_for_rows(&store, &key(next_start), 1, Duration::from_secs(30)).await;
    assert_eq!(coupon_tests::wait_for_stable_rows(&store, &key(from), Duration::from_secs(3)).await, 2);
    consumer.stop().await.unwrap();
    assert_nothing_refused(&cluster);
    operator.kill(&cluster);
}
