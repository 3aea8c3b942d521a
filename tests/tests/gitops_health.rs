//! What GitOps tools make of a CouponEvent, against the local control plane's real API
//! server and a real operator: kstatus (the library Flux, kpt and cli-utils' `apply --wait`
//! wait on) and the Argo CD health check of `docs/gitops/couponevent-health.lua`, both run by
//! `coupon-health` (tests/kube/health, built by tests/kube/build) on the objects exactly as
//! the server serves them.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use coupon_operator::crd::{CouponEvent, OnDelete};
use coupon_tests::local_cluster::operator::*;
use coupon_tests::local_cluster::{tool, workspace_root, NamespacedCluster};
use k8s_openapi::jiff::SignedDuration;
use kube::ResourceExt;
use serde::Deserialize;
use serde_json::json;

/// What the two tools said of one object.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Verdict {
    kstatus: String,
    kstatus_message: String,
    argocd: String,
    argocd_message: String,
}

/// The verdicts on `name` as the server serves it now (`kubectl get -o json`).
fn verdict(cluster: &NamespacedCluster, name: &str) -> Verdict {
    let served = cluster.cluster.kubectl().args(["get", "couponevent", name, "-n", &cluster.namespace, "-o", "json"]).output().unwrap();
    assert!(served.status.success(), "kubectl get: {}", String::from_utf8_lossy(&served.stderr));
    let script = workspace_root().join("docs/gitops/couponevent-health.lua");
    let mut judge =
        std::process::Command::new(tool("coupon-health")).arg(script).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    judge.stdin.take().unwrap().write_all(&served.stdout).unwrap();
    let judged = judge.wait_with_output().unwrap();
    assert!(judged.status.success(), "coupon-health failed on {}", String::from_utf8_lossy(&served.stdout));
    serde_json::from_slice(&judged.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&judged.stdout)))
}

/// Waits until `accept` takes what the two tools say of `name`, and returns it.
async fn wait_for(cluster: &NamespacedCluster, name: &str, what: &str, accept: impl Fn(&Verdict) -> bool) -> Verdict {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let verdict = verdict(cluster, name);
        if accept(&verdict) {
            return verdict;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name}: never {what}; last {verdict:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until kstatus and Argo CD say `(kstatus, argocd)` of `name`.
async fn wait_for_verdict(cluster: &NamespacedCluster, name: &str, expected: (&str, &str)) -> Verdict {
    wait_for(cluster, name, &format!("{expected:?}"), |v| (v.kstatus.as_str(), v.argocd.as_str()) == expected).await
}

/// Every state a GitOps tool must tell apart, each reached on a real operator:
/// - created, not yet looked at (the CRD's defaulted status): InProgress / Progressing;
/// - accepted (the window ahead): Current / Healthy;
/// - open while its api has no available pod (these Deployments' pods never run):
///   InProgress / Progressing, saying so;
/// - paused: Current / Healthy, saying so (the spec asks for it; Argo CD's Suspended would
///   hold a sync wave for ever);
/// - refused (another event holds its eventId): Failed / Degraded, with the reason;
/// - edited while no operator runs (generation ahead of observedGeneration): InProgress /
///   Progressing, then Current again once an operator takes the edit;
/// - being deleted (held by a finalizer): Terminating / Progressing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitops_tools_read_each_state_the_operator_writes() {
    let cluster = cluster().await;
    // Ahead: the Deployments are not due to be ready yet.
    let window = || coupon_event(&cluster, 10, SignedDuration::from_secs(600), SignedDuration::from_secs(1200));
    let sale = cluster.create(&window()).await.name_any();
    let early = verdict(&cluster, &sale);
    assert_eq!((early.kstatus.as_str(), early.argocd.as_str()), ("InProgress", "Progressing"), "before any operator: {early:?}");
    assert!(early.kstatus_message.contains("observed generation is 0"), "{early:?}");

    let operator = start_operator(&cluster, "operator-0").await;
    let healthy = wait_for_verdict(&cluster, &sale, ("Current", "Healthy")).await;
    assert_eq!(healthy.argocd_message, "phase Scheduled, 0 of 10 coupons issued", "{healthy:?}");

    let open = coupon_event(&cluster, 10, SignedDuration::from_secs(-1), SignedDuration::from_secs(600));
    let open = cluster.create(&open).await.name_any();
    let short = wait_for(&cluster, &open, "short of replicas", |v| {
        v.kstatus == "InProgress" && v.argocd == "Progressing" && v.argocd_message.starts_with("NotReady: short of available replicas")
    })
    .await;
    assert!(short.kstatus_message.contains("coupon-api has 0 of 3"), "{short:?}");

    let mut paused = window();
    paused.spec.paused = true;
    let paused = cluster.create(&paused).await.name_any();
    let pause = wait_for_verdict(&cluster, &paused, ("Current", "Healthy")).await;
    assert!(pause.argocd_message.starts_with("paused: "), "{pause:?}");

    let shared = |name: &str| {
        let mut event = window();
        event.metadata.name = Some(format!("{sale}-{name}"));
        event.spec.event_id = Some(format!("{sale}-shared"));
        event.spec.on_delete = OnDelete::Retain;
        event
    };
    let first = cluster.create(&shared("first")).await.name_any();
    wait_for_verdict(&cluster, &first, ("Current", "Healthy")).await;
    let second = cluster.create(&shared("second")).await.name_any();
    let refused = wait_for_verdict(&cluster, &second, ("Failed", "Degraded")).await;
    assert!(refused.kstatus_message.contains(&first) && refused.argocd_message.starts_with("EventIdInUse: "), "{refused:?}");

    operator.kill(&cluster);
    cluster.patch::<CouponEvent>(&sale, json!({"spec": {"limit": 20}})).await;
    let edited = verdict(&cluster, &sale);
    assert_eq!((edited.kstatus.as_str(), edited.argocd.as_str()), ("InProgress", "Progressing"), "an edit no operator saw: {edited:?}");
    assert!(edited.argocd_message.contains("generation 2"), "{edited:?}");
    let operator = start_operator(&cluster, "operator-1").await;
    let taken = wait_for_verdict(&cluster, &sale, ("Current", "Healthy")).await;
    assert_eq!(taken.argocd_message, "phase Scheduled, 0 of 20 coupons issued", "{taken:?}");

    // Held beside the operator's own finalizer, which its clean-up removes.
    let hold = "coupons.test/hold";
    let finalizers = |event: CouponEvent| event.finalizers().to_vec();
    let mut held = finalizers(cluster.get::<CouponEvent>(&paused).await.unwrap());
    held.push(hold.into());
    cluster.patch::<CouponEvent>(&paused, json!({"metadata": {"finalizers": held}})).await;
    cluster.delete::<CouponEvent>(&paused).await;
    let deleting = wait_for_verdict(&cluster, &paused, ("Terminating", "Progressing")).await;
    assert!(deleting.argocd_message.starts_with("being deleted"), "{deleting:?}");
    let mut released = finalizers(cluster.get::<CouponEvent>(&paused).await.unwrap());
    released.retain(|f| f != hold);
    cluster.patch::<CouponEvent>(&paused, json!({"metadata": {"finalizers": released}})).await;
    assert_nothing_refused(&cluster);
    operator.kill(&cluster);
}

/// A backend out of reach is a wait, not a failure: the operator retries (Reconciling), so
/// kstatus says InProgress and Argo CD Progressing with the reason, until it is back. (The
/// operator writes only its conditions then, each marked with the generation it looked at;
/// `status.observedGeneration` stays where it was.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_backend_reads_as_progressing_not_failed() {
    let cluster = cluster().await;
    let operator = start_operator_on(&cluster, "operator-0", "redis://127.0.0.1:1").await;
    let sale = cluster.create(&coupon_event(&cluster, 10, SignedDuration::from_secs(600), SignedDuration::from_secs(1200))).await;
    let waiting = wait_for(&cluster, &sale.name_any(), "the operator's word on the backend", |v| {
        v.kstatus == "InProgress" && v.argocd == "Progressing" && v.argocd_message.starts_with("BackendUnavailable: ")
    })
    .await;
    assert!(waiting.argocd_message.contains("Redis"), "{waiting:?}");
    // The operator's own word, not only the generation check kstatus stops at.
    let event = cluster.get::<CouponEvent>(&sale.name_any()).await.unwrap();
    assert_eq!(condition(&event, "Reconciling"), Some(("True".into(), "BackendUnavailable".into())));
    assert_eq!(condition(&event, "Stalled"), Some(("False".into(), "NotStalled".into())));
    operator.kill(&cluster);
}
