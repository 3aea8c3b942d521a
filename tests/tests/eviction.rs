//! A Redis that may evict keys (a Redis shared with a cache): its `maxmemory-policy` read from
//! `INFO memory` on a real server of the test's own, as an operator of a managed service would
//! set it. Nothing is provisioned there and nothing is issued while it may evict the events'
//! keys; once it no longer may, the sale goes on.

use std::time::Duration;

use coupon_core::event::{EventConfig, EventId};
use coupon_core::provision::{self, ProvisionError};
use coupon_core::redis::keyspace;
use coupon_core::redis::RedisHandle;
use coupon_service::app::ApiSettings;
use coupon_tests::{apply, kafka, kafka_brokers, unique, wait_until, InProcessApi, OwnRedis};

const NAMESPACE: &str = "evict";
const MAXMEMORY: u64 = 256 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_may_evict_the_events_keys_gets_nothing_provisioned_and_nothing_issued() {
    let own = OwnRedis::start().await;
    let mut conn = RedisHandle::connect_with_deadline(&own.url(), Duration::from_secs(10)).await.unwrap();
    let admin = kafka(&kafka_brokers()).admin().unwrap();
    let name = unique("ev");
    let id = EventId::new(NAMESPACE, &name).unwrap();
    let config = EventConfig::open_now(10, &format!("coupons.{name}"), Duration::from_secs(600));

    // A cache: any key may go, or any key with a TTL (the gate's batch answers have one).
    for policy in ["allkeys-lru", "volatile-lru"] {
        keyspace::set_eviction_for_tests(&mut conn, MAXMEMORY, policy).await.unwrap();
        let refused = provision::provision_event(&mut conn, &admin, &id, &config, 1, 1).await.unwrap_err();
        assert!(matches!(refused, ProvisionError::Eviction(_)), "{refused}");
        assert!(refused.to_string().contains(policy) && refused.to_string().contains("noeviction"), "{refused}");
        assert!(keyspace::counters(&mut conn, &id).await.unwrap().is_none(), "nothing provisioned under {policy}");
    }
    keyspace::set_eviction_for_tests(&mut conn, MAXMEMORY, "noeviction").await.unwrap();
    provision::provision_event(&mut conn, &admin, &id, &config, 1, 1).await.unwrap();

    let settings =
        ApiSettings { namespace: NAMESPACE.into(), redis_url: own.url(), kafka: kafka(&kafka_brokers()), ..ApiSettings::default() };
    let api = InProcessApi::start_ready(settings).await;
    let http = reqwest::Client::new();
    let url = api.apply_url(&id);
    assert_eq!(apply(&http, &url, "user-1").await.0, 201);

    // Someone turns it into a cache mid-sale: within its probe's period (a second) the api
    // says so in its readiness report (a pod that was ready stays in the Service through a
    // Redis outage, answering 503: `health.rs`) and issues nothing.
    keyspace::set_eviction_for_tests(&mut conn, MAXMEMORY, "allkeys-lfu").await.unwrap();
    let base = &api.base_url;
    wait_until("the api sees the policy", Duration::from_secs(10), || async move {
        (coupon_tests::readyz(base).await.1["components"]["redis"] == false).then_some(())
    })
    .await;
    let (http_ref, url_ref) = (&http, &url);
    for user in ["user-2", "user-3"] {
        assert_eq!(apply(http_ref, url_ref, user).await.0, 503);
    }
    let counters = keyspace::counters(&mut conn, &id).await.unwrap().unwrap();
    assert_eq!(counters.issued, 1, "nothing issued while keys may be evicted");

    // Back to noeviction: the sale goes on where it was.
    keyspace::set_eviction_for_tests(&mut conn, MAXMEMORY, "noeviction").await.unwrap();
    let slot = wait_until("issuing again", Duration::from_secs(10), || async move {
        let (status, body) = apply(http_ref, url_ref, "user-2").await;
        (status == 201).then(|| body["slot"].as_i64().unwrap())
    })
    .await;
    assert_eq!(slot, 2);
}
