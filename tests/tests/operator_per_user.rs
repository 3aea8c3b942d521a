//! `spec.perUserLimit` through the operator, against the local control plane's real API
//! server and real Redis, Kafka and SQL: what the spec says is what the gate enforces, and an
//! edit of it takes effect on the live sale.

use std::time::Duration;

use coupon_operator::crd::{CouponEvent, Phase};
use coupon_tests::local_cluster::operator::*;
use coupon_tests::{kafka_brokers, wait_until, InProcessApi, InProcessConsumer};
use k8s_openapi::jiff::SignedDuration;

/// Three per user: one user's five applies get three coupons, each its own slot and row;
/// raised to four, the same user gets one more, and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_specs_per_user_limit_is_enforced_and_an_edit_raises_it() {
    let cluster = cluster().await;
    let operator = start_operator(&cluster, "operator-0").await;
    let database = coupon_tests::sqlite_url();
    let store = coupon_tests::migrated_store(&database).await;
    let mut event = coupon_event(&cluster, 10, SignedDuration::from_secs(-1), SignedDuration::from_secs(300));
    event.spec.per_user_limit = 3;
    let event = cluster.create(&event).await;
    let name = event.metadata.name.clone().unwrap();
    let topic = event.spec.topic.clone();
    wait_for_phase(&cluster, &name, Phase::Open).await;
    let consumer = InProcessConsumer::start(&database, &[topic.as_str()], &kafka_brokers());
    let api = InProcessApi::start(&cluster.namespace, &kafka_brokers()).await;
    let same_user = |times: usize| std::iter::repeat_n("user-1".to_owned(), times);

    assert_eq!(apply_all(&api, &cluster.namespace, &name, same_user(5)).await, vec![1, 2, 3]);
    coupon_tests::wait_for_rows(&store, &key_of(&event), 3, Duration::from_secs(30)).await;

    cluster.patch::<CouponEvent>(&name, serde_json::json!({"spec": {"perUserLimit": 4}})).await;
    let generation = cluster.get::<CouponEvent>(&name).await.unwrap().metadata.generation;
    wait_until("the edit in effect", Duration::from_secs(30), || async {
        cluster
            .get::<CouponEvent>(&name)
            .await
            .filter(|e| {
                e.status.as_ref().is_some_and(|s| {
                    s.observed_generation == generation && s.last_accepted_spec.as_ref().is_some_and(|a| a.per_user_limit == 4)
                })
            })
            .map(|_| ())
    })
    .await;
    assert_eq!(apply_all(&api, &cluster.namespace, &name, same_user(3)).await, vec![4], "one more, and no more");
    coupon_tests::wait_for_rows(&store, &key_of(&event), 4, Duration::from_secs(30)).await;
    assert_eq!(coupon_tests::wait_for_stable_rows(&store, &key_of(&event), Duration::from_secs(3)).await, 4);
    wait_until("the status counts four", Duration::from_secs(30), || async {
        cluster.get::<CouponEvent>(&name).await.filter(|e| e.status.as_ref().is_some_and(|s| s.issued == 4)).map(|_| ())
    })
    .await;
    consumer.stop().await.unwrap();
    assert_nothing_refused(&cluster);
    operator.kill(&cluster);
}
