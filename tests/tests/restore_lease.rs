//! A restore after a lost configuration waits out the longest produce any api may still
//! hold, against a real Redis running the real scripts. The configuration written back
//! (marked recovering) no longer knows the apis' delivery lease; the api that calls the gate
//! during the recovery (answered 503) raises it again, and the restore waits for it, so a
//! late acknowledgement from a produce begun before the loss cannot land after the restore
//! and have its slot handed out a second time.

use std::time::Duration;

use coupon_core::event::{EventConfig, EventId};
use coupon_core::provision::{self, RedisOutcome};
use coupon_core::redis::keyspace::{self, EventLayout, GateDecision, RestoreStep};
use coupon_tests::unique;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_after_a_lost_configuration_waits_out_an_apis_produce_lease() {
    let mut conn = coupon_tests::redis().await;
    let id = EventId::new("lease", &unique("ev")).unwrap();
    let layout = EventLayout::single(&id);
    let config = EventConfig::open_now(10, "coupon_create", Duration::from_secs(600));
    // Redis lost the event: its configuration is written back marked recovering, as the
    // operator (or `event create --recover`) does.
    let written = provision::provision_redis(&mut conn, &id, &config, true).await.unwrap();
    assert_eq!(written, RedisOutcome::CreatedRecovering);
    let marked = jiff::Timestamp::now().as_millisecond();

    // An api whose produce timeout is 20 s (a lease of 21 s) applies during the recovery.
    let (decision, _) = keyspace::apply(&mut conn, &layout, "user-1", Duration::from_secs(21), None).await.unwrap();
    assert_eq!(decision, GateDecision::Recovering);

    // A consumer whose settle time (10 s) has passed would begin the restore: too early,
    // the api's lease has not run out since the mark.
    let begin = |not_after_ms: i64| {
        let (mut conn, layout) = (conn.clone(), layout.clone());
        async move { keyspace::restore_begin(&mut conn, &layout, 0, "token", "consumer-1", not_after_ms, 1).await.unwrap() }
    };
    assert_eq!(begin(marked + 10_000).await, RestoreStep::TooEarly, "the restore waits for the api's lease");
    assert_eq!(begin(marked + 20_000).await, RestoreStep::TooEarly);
    // Once the lease is out (from the mark), it begins.
    assert_ne!(begin(marked + 22_000).await, RestoreStep::TooEarly);
    keyspace::delete_event(&mut conn, &id).await.unwrap();
}
