//! `spec.ttlAfterFinished` against the local control plane's real API server and real Redis,
//! Kafka and SQL: a finished sale's Redis state goes, its rows and counts stay, and it is
//! never restored as if Redis had lost it.

use std::time::Duration;

use coupon_core::event::EventId;
use coupon_core::redis::keyspace;
use coupon_operator::crd::{CouponEvent, Phase};
use coupon_tests::local_cluster::operator::*;
use coupon_tests::{kafka_brokers, wait_until, InProcessApi, InProcessConsumer};
use k8s_openapi::jiff::SignedDuration;

fn event_uid(event: &CouponEvent) -> &str {
    event.metadata.uid.as_deref().unwrap()
}

/// Open for 15 seconds, two coupons issued and written; five seconds after its end the
/// state is removed from Redis, the status keeps its counts, and an edit of the spec later
/// (a reconcile that finds the state missing) does not bring it back; an edit that moves the
/// end later reopens the sale restored from SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_sales_redis_state_goes_after_its_time_to_live_and_stays_gone() {
    let cluster = cluster().await;
    let operator = start_operator(&cluster, "operator-0").await;
    let database = coupon_tests::sqlite_url();
    let store = coupon_tests::migrated_store(&database).await;
    let mut event = coupon_event(&cluster, 5, SignedDuration::from_secs(-1), SignedDuration::from_secs(15));
    event.spec.ttl_after_finished = Some("5s".into());
    let event = cluster.create(&event).await;
    let name = event.metadata.name.clone().unwrap();
    let topic = event.spec.topic.clone();
    let id = EventId::new(&cluster.namespace, &name).unwrap();
    wait_for_phase(&cluster, &name, Phase::Open).await;
    let consumer = InProcessConsumer::start(&database, &[topic.as_str()], &kafka_brokers());
    let api = InProcessApi::start(&cluster.namespace, &kafka_brokers()).await;
    assert_eq!(apply_all(&api, &cluster.namespace, &name, (1..=2).map(|u| format!("user-{u}"))).await, vec![1, 2]);
    coupon_tests::wait_for_rows(&store, &key_of(&event), 2, Duration::from_secs(30)).await;

    let mut redis = coupon_tests::redis().await;
    let (redis_ref, id_ref) = (&redis, &id);
    wait_until("the state released", Duration::from_secs(60), || async move {
        let mut redis = redis_ref.clone();
        keyspace::counters(&mut redis, id_ref).await.unwrap().is_none().then_some(())
    })
    .await;
    let closed = wait_for_phase(&cluster, &name, Phase::Closed).await;
    let status = closed.status.as_ref().unwrap();
    assert_eq!((status.issued, status.persisted), (2, 2), "the counts stay in the status");

    // A reconcile finds the state missing: released, not lost.
    cluster.patch::<CouponEvent>(&name, serde_json::json!({"spec": {"limit": 6}})).await;
    let generation = cluster.get::<CouponEvent>(&name).await.unwrap().metadata.generation;
    wait_until("the edit looked at", Duration::from_secs(30), || async {
        cluster
            .get::<CouponEvent>(&name)
            .await
            .filter(|e| e.status.as_ref().is_some_and(|s| s.observed_generation == generation))
            .map(|_| ())
    })
    .await;
    // Through the look the edit asked for, and a while after.
    for _ in 0..40 {
        assert!(keyspace::counters(&mut redis, &id).await.unwrap().is_none(), "not provisioned again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = cluster.get::<CouponEvent>(&name).await.unwrap();
    assert_eq!(after.status.as_ref().unwrap().phase, Phase::Closed);
    assert_eq!(after.status.as_ref().unwrap().issued, 2);
    assert_eq!(coupon_tests::wait_for_stable_rows(&store, &key_of(&event), Duration::from_secs(2)).await, 2, "the rows stay");
    assert_eq!(after.metadata.annotations.as_ref().unwrap()["coupons.fcfs.dev/released"], event_uid(&after));

    // The end moved later: the sale reopens from what SQL holds (two coupons), never from zero.
    let end = (k8s_openapi::jiff::Timestamp::now() + SignedDuration::from_secs(60)).to_string();
    cluster.patch::<CouponEvent>(&name, serde_json::json!({"spec": {"schedule": {"end": end}}})).await;
    wait_for_phase_within(&cluster, &name, Phase::Open, Duration::from_secs(60)).await;
    let (redis_ref, id_ref) = (&redis, &id);
    wait_until("restored from SQL", Duration::from_secs(60), || async move {
        let mut redis = redis_ref.clone();
        keyspace::counters(&mut redis, id_ref).await.unwrap().filter(|c| !c.recovering).map(|c| c.issued)
    })
    .await;
    assert_eq!(
        apply_all(&api, &cluster.namespace, &name, (1..=3).map(|u| format!("user-{u}"))).await,
        vec![3],
        "the two winners keep theirs; the next slot is 3"
    );
    coupon_tests::wait_for_rows(&store, &key_of(&event), 3, Duration::from_secs(30)).await;
    consumer.stop().await.unwrap();
    assert_nothing_refused(&cluster);
    operator.kill(&cluster);
}
