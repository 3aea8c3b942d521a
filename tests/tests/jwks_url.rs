//! Keys from the identity provider's JWKS URL (`JWT_JWKS_URL`), against the real api, Redis
//! and Kafka and a provider of the test's own served over real TLS (a CA made per test, the
//! server in this process on a port the system picks): keys rotated in the middle of a
//! crowd, tokens forged every way beside them, the provider down, broken or huge, and the
//! api started before the provider answers.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use coupon_service::app::ApiSettings;
use coupon_service::auth::jwks_url::FETCH_COOLDOWN;
use coupon_service::auth::{AuthSettings, JwksUrl, JwtKeys, JwtSettings};
use coupon_tests::jwt::*;
use coupon_tests::tls::{serve_https, TestCa};
use coupon_tests::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

/// What the provider serves, changed by the test as it goes.
#[derive(Default)]
struct Provider {
    document: Mutex<String>,
    /// Answer 503 instead of the document.
    down: AtomicBool,
    /// Take this long to answer.
    delay_ms: AtomicU64,
    fetches: AtomicUsize,
}

impl Provider {
    fn publish(&self, document: String) {
        *self.document.lock().unwrap() = document;
    }
}

async fn serve_jwks(State(provider): State<Arc<Provider>>) -> Response {
    provider.fetches.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(provider.delay_ms.load(Ordering::SeqCst))).await;
    if provider.down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "maintenance").into_response();
    }
    let document = provider.document.lock().unwrap().clone();
    // An hour: every fetch after the first is one the api asked for (a key id it lacked).
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "public, max-age=3600")], document).into_response()
}

/// The provider at `https://localhost:<port>/jwks.json`, trusted through `ca`.
struct ProviderServer {
    provider: Arc<Provider>,
    url: String,
}

async fn provider(ca: &TestCa, document: String) -> ProviderServer {
    let provider = Arc::new(Provider::default());
    provider.publish(document);
    let app = axum::Router::new().route("/jwks.json", axum::routing::get(serve_jwks)).with_state(provider.clone());
    let port = serve_https(ca, app).await;
    ProviderServer { provider, url: format!("https://localhost:{port}/jwks.json") }
}

fn settings(namespace: &str, url: &str, ca: &TestCa) -> ApiSettings {
    let source = JwksUrl::new(url, Some(std::fs::read(ca.ca()).unwrap())).unwrap();
    let auth = JwtSettings { issuer: Some(ISSUER.into()), audience: Some(AUDIENCE.into()), ..JwtSettings::new(JwtKeys::JwksUrl(source)) };
    ApiSettings {
        namespace: namespace.to_owned(),
        redis_url: redis_url(),
        kafka: kafka(&kafka_brokers()),
        auth: AuthSettings::Jwt(auth),
        ..ApiSettings::default()
    }
}

async fn apply(client: &reqwest::Client, url: &str, token: &str) -> (u16, Option<String>) {
    let response = client.post(url).header("authorization", bearer(token)).send().await.unwrap();
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    (response.status().as_u16(), challenge)
}

async fn readyz(api: &InProcessApi) -> Value {
    reqwest::get(format!("{}/readyz", api.ops_url)).await.unwrap().json().await.unwrap()
}

/// A crowd of 300 users applies while the provider rotates: once a third of the first
/// half is answered, it publishes a second key and signs with it at once (the worst case: the
/// api has not seen it). Beside them, 120 forged tokens: another key under the provider's key
/// ids (the new one included), made-up key ids (each asking for a fetch), no key id at all.
/// - every valid token gets its coupon (201), the new key's included: none is refused;
/// - every forged token is 401 and issues nothing (exactly 300 issued);
/// - the made-up key ids cost the provider at most one fetch per cool-down, however many
///   there are;
/// - a token without a key id signed by a key published later is refused, asks for a fetch,
///   and is accepted once it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_rotated_mid_crowd_are_fetched_and_forged_tokens_never_pass() {
    let ca = TestCa::new();
    let (old, new, attacker) = (rsa_key("rs256.pem"), ec_key(), rsa_key("rs256-other.pem"));
    let server = provider(&ca, jwks(&[(&old, Algorithm::RS256, "k1")])).await;
    let namespace = unique("jwksurl");
    let event = provision_event(&kafka_brokers(), &namespace, 1000, 1).await;
    let api = InProcessApi::start_ready(settings(&namespace, &server.url, &ca)).await;
    assert_eq!(server.provider.fetches.load(Ordering::SeqCst), 1, "one fetch at start");
    let url = api.apply_url(&event.id);
    let client = reqwest::Client::new();

    let started = Instant::now();
    let answered = Arc::new(AtomicUsize::new(0));
    let mut valid = tokio::task::JoinSet::new();
    let mut forged = tokio::task::JoinSet::new();
    let send = |token: String| {
        let (client, url, answered) = (client.clone(), url.clone(), answered.clone());
        async move {
            let answer = apply(&client, &url, &token).await;
            answered.fetch_add(1, Ordering::SeqCst);
            answer
        }
    };
    for i in 0..150 {
        valid.spawn(send(sign(&claims(&format!("before-{i}")), Algorithm::RS256, &old, Some("k1"))));
    }
    let forgery = |i: usize| {
        let claims = claims(&format!("victim-{i}"));
        match i % 4 {
            0 => sign(&claims, Algorithm::RS256, &attacker, Some("k1")),
            1 => sign(&claims, Algorithm::RS256, &attacker, Some(&format!("made-up-{i}"))),
            2 => sign(&claims, Algorithm::RS256, &attacker, None),
            // The new key id, signed by the attacker: known once fetched, and still refused.
            _ => sign(&claims, Algorithm::ES256, &fresh_ec_key(), Some("k2")),
        }
    };
    for i in 0..60 {
        forged.spawn(send(forgery(i)));
    }
    wait_until("a third of the first half answered", Duration::from_secs(30), || {
        let answered = answered.clone();
        async move { (answered.load(Ordering::SeqCst) >= 50).then_some(()) }
    })
    .await;
    // The rotation, mid-crowd.
    server.provider.publish(jwks(&[(&old, Algorithm::RS256, "k1"), (&new, Algorithm::ES256, "k2")]));
    for i in 0..150 {
        valid.spawn(send(sign(&claims(&format!("after-{i}")), Algorithm::ES256, &new, Some("k2"))));
    }
    for i in 60..120 {
        forged.spawn(send(forgery(i)));
    }
    let valid = valid.join_all().await;
    let forged = forged.join_all().await;
    let elapsed = started.elapsed();

    let refused: Vec<_> = valid.iter().filter(|(status, _)| *status != 201).collect();
    assert!(refused.is_empty(), "valid tokens refused: {refused:?}");
    for (status, challenge) in &forged {
        assert_eq!(*status, 401, "a forged token passed: {challenge:?}");
    }
    assert_eq!(redis_snapshot(&event.id).await.count, Some(300), "forged tokens issued coupons");
    let fetches = server.provider.fetches.load(Ordering::SeqCst);
    let allowed = 2 + (elapsed.as_secs_f64() / FETCH_COOLDOWN.as_secs_f64()).ceil() as usize;
    println!("{fetches} fetches in {elapsed:?} (at most {allowed})");
    assert!(fetches >= 2, "the rotation was never fetched");
    assert!(fetches <= allowed, "{fetches} fetches in {elapsed:?}: made-up key ids are not rate-limited");

    // No key id, a key published later: refused, then accepted once the fetch it asked for
    // is done (every key was tried, none verified it).
    let later = fresh_ec_key();
    server.provider.publish(jwks(&[(&old, Algorithm::RS256, "k1"), (&new, Algorithm::ES256, "k2"), (&later, Algorithm::ES256, "k3")]));
    let unnamed = sign(&claims("unnamed"), Algorithm::ES256, &later, None);
    let (status, challenge) = apply(&client, &url, &unnamed).await;
    assert_eq!(status, 401);
    assert!(challenge.unwrap().contains("bad signature"));
    wait_until("a token without a key id accepted once its key is fetched", FETCH_COOLDOWN * 3, || {
        let (client, url, unnamed) = (client.clone(), url.clone(), unnamed.clone());
        async move { (apply(&client, &url, &unnamed).await.0 == 201).then_some(()) }
    })
    .await;
}

/// A request that gives up while the fetch it asked for runs (its client gone) never cuts
/// that fetch short for the others: the fetch is the fetch task's, not the request's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_gives_up_never_cuts_the_fetch_short_for_the_others() {
    let ca = TestCa::new();
    let (old, new) = (rsa_key("rs256.pem"), ec_key());
    let server = provider(&ca, jwks(&[(&old, Algorithm::RS256, "k1")])).await;
    let namespace = unique("jwksgone");
    let event = provision_event(&kafka_brokers(), &namespace, 10, 1).await;
    let api = InProcessApi::start_ready(settings(&namespace, &server.url, &ca)).await;
    let url = api.apply_url(&event.id);
    server.provider.publish(jwks(&[(&old, Algorithm::RS256, "k1"), (&new, Algorithm::ES256, "k2")]));
    server.provider.delay_ms.store(1500, Ordering::SeqCst);
    let before = server.provider.fetches.load(Ordering::SeqCst);
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let first = sign(&claims("impatient"), Algorithm::ES256, &new, Some("k2"));
    assert!(impatient.post(&url).header("authorization", bearer(&first)).send().await.is_err(), "the impatient client waited");
    let patient = sign(&claims("patient"), Algorithm::ES256, &new, Some("k2"));
    assert_eq!(apply(&reqwest::Client::new(), &url, &patient).await.0, 201, "the fetch was cut short with the client that asked for it");
    // One fetch served both: the one the impatient client asked for was not started again.
    assert_eq!(server.provider.fetches.load(Ordering::SeqCst), before + 1);
}

/// More requests waiting for a fetch than the cap (256): those beyond are told to come back
/// (503 with `Retry-After`), not refused as if their key were forged; the waiting ones, whose
/// made-up key ids the fetch does not bring, are 401. Nothing is issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_beyond_the_waiting_cap_are_told_to_come_back() {
    let ca = TestCa::new();
    let (key, attacker) = (rsa_key("rs256.pem"), rsa_key("rs256-other.pem"));
    let server = provider(&ca, jwks(&[(&key, Algorithm::RS256, "k1")])).await;
    let namespace = unique("jwkscap");
    let event = provision_event(&kafka_brokers(), &namespace, 10, 1).await;
    let api = InProcessApi::start_ready(settings(&namespace, &server.url, &ca)).await;
    let url = api.apply_url(&event.id);
    let client = reqwest::Client::new();
    let mut crowd = tokio::task::JoinSet::new();
    for i in 0..400 {
        let (client, url) = (client.clone(), url.clone());
        let token = sign(&claims(&format!("victim-{i}")), Algorithm::RS256, &attacker, Some(&format!("made-up-{i}")));
        crowd.spawn(async move {
            let response = client.post(&url).header("authorization", bearer(&token)).send().await.unwrap();
            (response.status().as_u16(), response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned()))
        });
    }
    let answers = crowd.join_all().await;
    let told_to_come_back = answers.iter().filter(|(status, retry)| *status == 503 && retry.as_deref() == Some("1")).count();
    let refused = answers.iter().filter(|(status, _)| *status == 401).count();
    assert_eq!(told_to_come_back + refused, 400, "{answers:?}");
    assert!(told_to_come_back >= 400 - 256, "{told_to_come_back} told to come back");
    assert!(refused > 0, "nobody waited for the fetch");
    assert_eq!(redis_snapshot(&event.id).await.count.unwrap_or(0), 0, "a forged token issued a coupon");
}

/// A P-256 key made for this test, known to nobody else.
fn fresh_ec_key() -> EncodingKey {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap()
}

/// The provider's outages:
/// - the api starts while it is down, and is not ready (`identity` false) until it answers,
///   then ready without a restart;
/// - down again, broken, or serving a huge document, the last good keys keep serving (a
///   valid token still gets its coupon, readiness stays), and a token for a key the api never
///   saw is refused;
/// - a JWKS URL in clear is refused at start, naming the variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_last_good_keys_serve_while_the_provider_is_down_and_readiness_waits_for_the_first() {
    let ca = TestCa::new();
    let key = rsa_key("rs256.pem");
    let server = provider(&ca, jwks(&[(&key, Algorithm::RS256, "k1")])).await;
    server.provider.down.store(true, Ordering::SeqCst);
    let namespace = unique("jwksdown");
    let event = provision_event(&kafka_brokers(), &namespace, 100, 1).await;
    let api = InProcessApi::start_with(settings(&namespace, &server.url, &ca)).await;
    let url = api.apply_url(&event.id);
    let client = reqwest::Client::new();
    wait_until("a fetch refused", Duration::from_secs(10), || async {
        (server.provider.fetches.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await;
    let waiting = readyz(&api).await;
    assert_eq!((waiting["ready"].clone(), waiting["components"]["identity"].clone()), (json!(false), json!(false)), "{waiting}");
    let early = sign(&claims("early"), Algorithm::RS256, &key, Some("k1"));
    let (status, challenge) = apply(&client, &url, &early).await;
    assert_eq!(status, 401);
    assert!(challenge.unwrap().contains("signing keys not loaded yet"));

    server.provider.down.store(false, Ordering::SeqCst);
    wait_until("ready once the provider answers", Duration::from_secs(20), || async {
        (readyz(&api).await["ready"] == json!(true)).then_some(())
    })
    .await;
    assert_eq!(apply(&client, &url, &early).await.0, 201);

    let unseen = rsa_key("rs256-other.pem");
    for what in ["down", "broken", "huge"] {
        let provider = &server.provider;
        let kid = format!("k9-{what}");
        match what {
            "down" => provider.down.store(true, Ordering::SeqCst),
            "broken" => {
                provider.down.store(false, Ordering::SeqCst);
                provider.publish("{ not json".into());
            }
            _ => {
                // Usable, and holding the very key the token below is signed with: only the
                // size cap refuses it.
                let mut document: Value =
                    serde_json::from_str(&jwks(&[(&key, Algorithm::RS256, "k1"), (&unseen, Algorithm::RS256, &kid)])).unwrap();
                document["padding"] = json!("x".repeat(2 * 1024 * 1024));
                provider.publish(document.to_string());
            }
        }
        let before = server.provider.fetches.load(Ordering::SeqCst);
        // A key id the api lacks asks for a fetch, which fails: refused, the old keys kept.
        let stranger = sign(&claims(&format!("stranger-{what}")), Algorithm::RS256, &unseen, Some(&kid));
        assert_eq!(apply(&client, &url, &stranger).await.0, 401, "{what}");
        assert!(server.provider.fetches.load(Ordering::SeqCst) > before, "{what}: no fetch for an unknown key id");
        let token = sign(&claims(&format!("during-{what}")), Algorithm::RS256, &key, Some("k1"));
        assert_eq!(apply(&client, &url, &token).await.0, 201, "{what}: the last good keys must keep serving");
        assert_eq!(readyz(&api).await["ready"], json!(true), "{what}: readiness must not follow the provider");
    }

    let clear = JwksUrl::new("http://localhost/jwks.json", None).unwrap_err();
    assert!(clear.contains("JWT_JWKS_URL") && clear.contains("https://"), "{clear}");
}
