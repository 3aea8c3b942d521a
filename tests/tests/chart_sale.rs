//! One whole sale through the chart's own Pods on the local control plane: Helm installs the
//! chart, the stand-in node runs its operator, api and consumer Pods as processes of this
//! workspace's binaries, a CouponEvent is applied, the operator scales the api on its own
//! timer before the start, a crowd is sent to the api Pods' addresses, exactly `limit` rows
//! land in SQL (signed by the api Pods with the key file the chart mounts) and the phase
//! becomes SoldOut; then the event, the release and the namespace
//! are deleted, in that order, and nothing is left.
//!
//! Needs `dev/stack up` and `dev/stack up kube` (after `cargo build --workspace --bins`: the
//! node runs `target/debug/coupon-service` and `coupon-operator`).

use std::process::Command;
use std::time::{Duration, Instant};

use coupon_core::event::EventId;
use coupon_core::redis::keyspace::{self, EventPresence};
use coupon_operator::crd::{CouponEvent, Phase};
use coupon_tests::local_cluster::{tool, workspace_root, LocalCluster};
use coupon_tests::{kafka_brokers, postgres_url, redis_url, unique, wait_until};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::Api;
use serde_json::json;

const JWT_SECRET: &str = "a-shared-secret-of-the-shop-idp-for-the-chart-test";
/// The claims the chart requires of a token in jwt mode (it renders jwt mode only with both).
const ISSUER: &str = "https://id.chart.test";
const AUDIENCE: &str = "coupons";
/// The key file the api signs records with and the consumer verifies them with.
const RECORD_KEYS: &str = "sale=MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n";
const LIMIT: usize = 40;
const CROWD: usize = 300;

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn helm(namespace: &str) -> Command {
    let mut command = Command::new(tool("helm"));
    command.env("KUBECONFIG", coupon_tests::local_cluster::kubeconfig_path()).args(["--namespace", namespace]);
    command
}

fn token(user: &str) -> String {
    let now = Timestamp::now().as_second();
    let claims = json!({"sub": user, "exp": now + 600, "iat": now, "iss": ISSUER, "aud": AUDIENCE});
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(JWT_SECRET.as_bytes())).unwrap()
}

/// The running, ready Pods of a component, by their pod IPs.
async fn ready_pod_ips(pods: &Api<Pod>, component: &str) -> Vec<String> {
    let list = pods.list(&ListParams::default().labels(&format!("app.kubernetes.io/name={component}"))).await.unwrap();
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let status = p.status?;
            let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some(status.pod_ip?)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_sale_through_the_charts_pods_then_nothing_is_left() {
    let cluster = LocalCluster::connect().await;
    // This commit's CRD (Helm installs the chart's only where there is none yet).
    cluster.install_crd().await;
    let namespace = cluster.namespace("sale").await;
    let release = "coupons";
    let topic = format!("sale.{namespace}");
    let secrets = Api::<Secret>::namespaced(cluster.admin.clone(), &namespace);
    for (name, data) in [
        ("coupon-connections", json!({"REDIS_URL": redis_url(), "DATABASE_URL": postgres_url()})),
        ("coupon-jwt", json!({"JWT_SECRET": JWT_SECRET})),
        ("coupon-record-keys", json!({"record-keys": RECORD_KEYS})),
    ] {
        let secret: Secret = serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap();
        secrets.create(&PostParams::default(), &secret).await.unwrap();
    }

    // Helm installs the chart (its CRD too, on a cluster that has none yet).
    let chart = workspace_root().join("charts/coupon-system");
    run(helm(&namespace).args(["install", release]).arg(&chart).args([
        "--set",
        &format!("connections.kafkaBrokers={}", kafka_brokers()),
        "--set",
        &format!("consumer.topics={{{topic}}}"),
        "--set",
        "operator.logFormat=text",
        "--set",
        &format!("api.auth.jwt.issuer={ISSUER}"),
        "--set",
        &format!("api.auth.jwt.audience={AUDIENCE}"),
        "--set",
        "recordSigning.secret=coupon-record-keys",
        "--wait=false",
    ]));
    let pods = Api::<Pod>::namespaced(cluster.admin.clone(), &namespace);
    let pods_ref = &pods;
    wait_until("the operator Pod ready", Duration::from_secs(60), || async move {
        (!ready_pod_ips(pods_ref, "coupon-operator").await.is_empty()).then_some(())
    })
    .await;

    // An event whose warm-up begins a few seconds from now: the operator scales the api on
    // its own timer before the start.
    let name = unique("sale");
    let start = Timestamp::now() + SignedDuration::from_secs(35);
    let event: CouponEvent = serde_json::from_value(json!({
        "apiVersion": "coupons.fcfs.dev/v1", "kind": "CouponEvent",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "limit": LIMIT, "topic": topic, "partitions": 1,
            "schedule": {"start": start.to_string(), "end": (start + SignedDuration::from_mins(5)).to_string(), "warmUp": "30s"},
            "api": {"deployment": "coupon-api", "replicas": 2, "idleReplicas": 0},
            "consumer": {"deployment": "coupon-consumer", "replicas": 1, "idleReplicas": 0},
            "onDelete": "Delete",
        }
    }))
    .unwrap();
    let events = Api::<CouponEvent>::namespaced(cluster.admin.clone(), &namespace);
    let event = events.create(&PostParams::default(), &event).await.unwrap();
    let uid = event.metadata.uid.clone().unwrap();
    let api_ips = wait_until("two api Pods ready before the start", Duration::from_secs(60), || async move {
        Some(ready_pod_ips(pods_ref, "coupon-api").await).filter(|ips| ips.len() == 2)
    })
    .await;
    assert!(Timestamp::now() < start, "the api was scaled only after the start");

    // The crowd, at the start, spread over the api Pods' addresses.
    let events_ref = &events;
    let name_ref = &name;
    wait_until("the event open", Duration::from_secs(40), || async move {
        let event = events_ref.get(name_ref).await.ok()?;
        (event.status?.phase == Phase::Open).then_some(())
    })
    .await;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let answers = futures::future::join_all((0..CROWD).map(|n| {
        let url = format!("http://{}:8080/v1/events/{name}/apply", api_ips[n % api_ips.len()]);
        let request = http.post(url).bearer_auth(token(&format!("user-{n}"))).header("content-type", "application/json").body("{}");
        async move { request.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
    }))
    .await;
    println!("{CROWD} applies in {:?}", started.elapsed());
    let issued = answers.iter().filter(|s| **s == 201).count();
    let refused: Vec<_> = answers.iter().filter(|s| !matches!(**s, 201 | 410)).collect();
    assert_eq!(issued, LIMIT, "exactly the limit issued; other answers: {refused:?}");
    assert!(refused.is_empty(), "only 201 and 410: {refused:?}");

    // Exactly `limit` rows, the phase SoldOut.
    let store = coupon_tests::migrated_store(&postgres_url()).await;
    let key = format!("{namespace}/{name}@{uid}");
    coupon_tests::wait_for_rows(&store, &key, LIMIT as i64, Duration::from_secs(60)).await;
    // The api Pods signed them with the key file the chart mounted.
    let record = coupon_tests::first_record_on(&topic);
    let keys = coupon_core::event::RecordKeys::parse(RECORD_KEYS).unwrap();
    assert_eq!(keys.verify(&record), coupon_core::event::Signature::Valid, "{record:?}");
    wait_until("SoldOut", Duration::from_secs(30), || async move {
        let event = events_ref.get(name_ref).await.ok()?;
        let status = event.status?;
        (status.phase == Phase::SoldOut && status.issued == LIMIT as i64).then_some(())
    })
    .await;

    // The event, then the release, then the namespace.
    events.delete(&name, &DeleteParams::default()).await.unwrap();
    wait_until("the event gone (finalizer done)", Duration::from_secs(60), || async move {
        events_ref.get_opt(name_ref).await.ok()?.is_none().then_some(())
    })
    .await;
    // Every address a Pod of the release had: the api's (its Pods may be gone already), and
    // the operator's and the consumer's.
    let mut addresses = api_ips.clone();
    addresses.extend(pods.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|p| p.status?.pod_ip));
    // The chart's own ServiceAccounts were refused nothing by the real authorizer.
    let accounts = format!("system:serviceaccount:{namespace}:");
    let operator_requests = cluster.audited(|user| user == format!("{accounts}coupon-operator"));
    assert!(!operator_requests.is_empty(), "the audit log holds no request of the chart's operator");
    let refused: Vec<_> = cluster
        .audited(|user| user.starts_with(&accounts))
        .into_iter()
        .filter(|r| r.code == 403 || r.code == 422)
        .map(|r| format!("{} {} {} -> {}", r.user, r.verb, r.uri, r.code))
        .collect();
    assert!(refused.is_empty(), "the API server refused the chart's Pods: {refused:#?}");
    run(helm(&namespace).args(["uninstall", release, "--wait", "--timeout", "2m"]));
    cluster.delete_namespace(&namespace, Duration::from_secs(120)).await;

    // Nothing left: no process listening at a Pod's address, no Redis key but the tombstone.
    for address in &addresses {
        for port in [8080, 8081] {
            let connected = tokio::net::TcpStream::connect((address.as_str(), port)).await.is_ok();
            assert!(!connected, "a process still listens on {address}:{port}");
        }
    }
    let mut redis = coupon_tests::redis().await;
    let id = EventId::new(&namespace, &name).unwrap();
    assert_eq!(keyspace::existing_keys(&mut redis, &id).await.unwrap(), 0, "no key of the event but its tombstone");
    assert_eq!(keyspace::presence(&mut redis, &id).await.unwrap(), EventPresence::Deleted, "the tombstone is there");
    assert_eq!(keyspace::snapshot(&mut redis, &id).await.unwrap().config.len(), 1, "the config key is only the deletion mark");
    let ttl = keyspace::tombstone_ttl(&mut redis, &id).await.unwrap().expect("a tombstone");
    assert!(ttl > 0 && ttl <= 86_400, "the tombstone expires within a day: {ttl}");
    assert!(!keyspace::registered_events(&mut redis).await.unwrap().contains(&id.to_string()), "unregistered");
}
