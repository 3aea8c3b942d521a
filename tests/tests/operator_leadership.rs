//! Leader election of the real operator against the local control plane's real API server:
//! one writer of two instances, a hand-over within the Lease, a leader cut off that steps
//! down before anyone else can lead and stays a Ready candidate, and a Lease judged by this
//! process' own clock, never the holder's. Each instance reaches the server through a TCP
//! gate the test can close (a process cut off or a node partitioned); what each one called is
//! read from the API server's audit log.

use std::time::{Duration, Instant};

use coupon_operator::crd::{CouponEvent, Phase};
use coupon_tests::local_cluster::operator::*;
use coupon_tests::local_cluster::Recorded;
use coupon_tests::wait_until;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_operators_exactly_one_writes_and_a_killed_leader_hands_over_within_the_lease() {
    let cluster = cluster().await;
    let first = start_operator(&cluster, "operator-a").await;
    wait_for_leader(&cluster, "operator-a", Duration::from_secs(15)).await;
    let second = start_operator(&cluster, "operator-b").await;
    let event = cluster.create(&coupon_event(&cluster, 10, SignedDuration::from_hours(1), SignedDuration::from_hours(2))).await;
    let name = event.metadata.name.clone().unwrap();
    wait_for_phase(&cluster, &name, Phase::Scheduled).await;
    // Long enough for the second instance to have acted if it were going to.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let is_effect = |r: &&Recorded| r.is_write() && !r.path.contains("/leases");
    let writers: std::collections::BTreeSet<_> = cluster.requests().iter().filter(is_effect).map(|r| r.client.clone()).collect();
    assert_eq!(writers, ["operator-a".to_owned()].into(), "only the leader writes");

    first.kill(&cluster);
    let killed = Instant::now();
    // An edit made right after the leader died is acted on by the next one.
    cluster.patch::<CouponEvent>(&name, json!({ "spec": { "limit": 20 } })).await;
    wait_for_leader(&cluster, "operator-b", lease() + Duration::from_secs(5)).await;
    let handed_over = killed.elapsed();
    let (cluster, name) = (&cluster, &name);
    wait_until("the edit is acted on", Duration::from_secs(10), || async move {
        let limit = cluster.get::<CouponEvent>(name).await.and_then(|e| e.status?.last_accepted_spec).map(|s| s.limit);
        (limit == Some(20)).then_some(())
    })
    .await;
    println!("hand-over {handed_over:?} after the leader died (lease {:?})", lease());
    // The lease's duration counted from when the candidate last saw it renewed, plus one
    // retry period to look again.
    assert!(handed_over <= lease() + Duration::from_millis(1500), "hand-over took {handed_over:?}");
    // (A read it sent as it died may still arrive: only a write would be an effect.)
    let late: Vec<_> =
        cluster.requests().iter().filter(|r| r.at > killed && r.client == "operator-a" && r.is_write()).map(|r| r.path.clone()).collect();
    assert!(late.is_empty(), "the dead leader had effects: {late:?}");
    assert_nothing_refused(cluster);
    second.kill(cluster);
}

/// A leader cut off from the API server (alive, but its renewals fail) stops acting before
/// its Lease can expire, so the next leader is never a second writer; it stays a Ready
/// candidate in the same process and leads again when its turn comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_steps_down_before_another_takes_over_and_stays_a_candidate() {
    let cluster = cluster().await;
    let first = start_operator(&cluster, "operator-a").await;
    wait_for_leader(&cluster, "operator-a", Duration::from_secs(15)).await;
    let second = start_operator(&cluster, "operator-b").await;
    assert!(first.leading.load(std::sync::atomic::Ordering::SeqCst));
    let (readiness, standby) = (&second.ready, &second.leading);
    wait_until("the standby is Ready without leading", Duration::from_secs(10), || async move {
        readiness.load(std::sync::atomic::Ordering::SeqCst).then_some(())
    })
    .await;
    assert!(!standby.load(std::sync::atomic::Ordering::SeqCst), "operator-b does not lead");
    let cut = Instant::now();
    cluster.cut("operator-a");
    // The Lease as the leader last renewed it: it expires at that renewal plus its duration.
    let last_renewal = cluster.get::<Lease>("coupon-operator").await.and_then(|l| l.spec?.renew_time).unwrap().0;
    let expires = last_renewal + SignedDuration::try_from(lease()).unwrap();
    // Both moments, polled side by side: when the old leader stops acting, when the new
    // one holds the Lease.
    let (mut stepped_down, mut taken_over) = (None, None);
    while (stepped_down.is_none() || taken_over.is_none()) && cut.elapsed() < lease() + Duration::from_secs(5) {
        if stepped_down.is_none() && !first.leading.load(std::sync::atomic::Ordering::SeqCst) {
            stepped_down = Some(cut.elapsed());
            assert!(Timestamp::now() < expires, "stepped down only after the Lease could expire ({expires})");
        }
        if taken_over.is_none() && lease_holder(&cluster).await.as_deref() == Some("operator-b") {
            taken_over = Some(cut.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (stepped_down, taken_over) = (stepped_down.expect("the cut-off leader stops"), taken_over.expect("operator-b leads"));
    println!("stepped down {stepped_down:?} and taken over {taken_over:?} after the cut (lease {:?})", lease());
    assert!(stepped_down < taken_over, "the old leader stopped ({stepped_down:?}) only after the new one led ({taken_over:?})");
    assert!(!first.task.is_finished(), "the instance that lost the Lease is a candidate again, not gone");
    assert!(first.ready.load(std::sync::atomic::Ordering::SeqCst), "and stays Ready");

    // Back in reach, it waits its turn; when the leader dies, it leads again in-process.
    cluster.reconnect("operator-a").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!first.leading.load(std::sync::atomic::Ordering::SeqCst), "a candidate does not take a held Lease");
    assert_eq!(lease_holder(&cluster).await.as_deref(), Some("operator-b"));
    second.kill(&cluster);
    wait_for_leader(&cluster, "operator-a", lease() + Duration::from_secs(5)).await;
    let leading = &first.leading;
    wait_until("operator-a acts again", Duration::from_secs(5), || async move {
        leading.load(std::sync::atomic::Ordering::SeqCst).then_some(())
    })
    .await;
    assert_nothing_refused(&cluster);
    first.kill(&cluster);
}

/// A candidate judges a held Lease by when it saw the record change, never by the holder's
/// clock: a live holder on a node whose clock is an hour behind (its `renewTime`s lie in
/// the past) keeps the Lease, and it is taken only once renewals stop for its duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_with_a_clock_behind_keeps_its_lease_while_it_renews() {
    let cluster = cluster().await;
    let skewed = |at: Timestamp| k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(at - SignedDuration::from_hours(1));
    let seconds = lease().as_secs() as i32;
    let record = |at: Timestamp| {
        json!({ "spec": { "holderIdentity": "operator-elsewhere", "leaseDurationSeconds": seconds,
                          "acquireTime": skewed(at), "renewTime": skewed(at), "leaseTransitions": 1 } })
    };
    cluster
        .create::<Lease>(
            &serde_json::from_value(json!({ "metadata": { "name": "coupon-operator" }, "spec": record(Timestamp::now())["spec"] }))
                .unwrap(),
        )
        .await;
    let candidate = start_operator(&cluster, "operator-a").await;
    // The holder renews every second, with its clock an hour behind, for three durations.
    let renewing = Instant::now();
    while renewing.elapsed() < lease() * 3 {
        cluster.patch::<Lease>("coupon-operator", record(Timestamp::now())).await;
        assert_eq!(lease_holder(&cluster).await.as_deref(), Some("operator-elsewhere"), "taken from a live holder");
        assert!(!candidate.leading.load(std::sync::atomic::Ordering::SeqCst));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The holder dies: the candidate takes over after the duration, counted on its own clock.
    let stopped = Instant::now();
    wait_for_leader(&cluster, "operator-a", lease() + Duration::from_secs(5)).await;
    let waited = stopped.elapsed();
    println!("taken over {waited:?} after the last renewal (lease {:?})", lease());
    assert!(waited >= lease() - Duration::from_secs(1), "taken over {waited:?} after the last renewal");
    candidate.kill(&cluster);
}
