//! Who the user is: bearer tokens (HS256 with a shared secret; RS256 and ES256 from a JWKS
//! file that is re-read when it changes) and a gateway's header, against the real api, Redis
//! and Kafka. Every refused request must be 401 with a `WWW-Authenticate` challenge and leave
//! the event's Redis state exactly as it was.

use std::path::PathBuf;
use std::time::Duration;

use axum::http::HeaderName;
use coupon_service::app::ApiSettings;
use coupon_service::auth::{AuthSettings, JwtKeys, JwtSettings};
use coupon_tests::jwt::*;
use coupon_tests::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

const SECRET: &str = "a-shared-secret-of-the-shop-idp-32+";

fn hs256(claims: &Value) -> String {
    sign(claims, Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()), None)
}

/// A token with `alg: none` and no signature, as an attacker would send it.
fn unsigned(claims: &Value) -> String {
    use base64_url as b64;
    format!("{}.{}.", b64::encode(br#"{"alg":"none","typ":"JWT"}"#), b64::encode(claims.to_string().as_bytes()))
}

/// Minimal base64url without padding (the tests' own, to forge tokens the library refuses
/// to make).
mod base64_url {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

/// The api with `auth`, ready (Redis and the broker reached).
async fn api_with(namespace: &str, auth: AuthSettings) -> InProcessApi {
    let settings = ApiSettings {
        namespace: namespace.to_owned(),
        redis_url: redis_url(),
        kafka: kafka(&kafka_brokers()),
        auth,
        ..ApiSettings::default()
    };
    InProcessApi::start_ready(settings).await
}

fn jwt_settings(keys: JwtKeys) -> AuthSettings {
    AuthSettings::Jwt(JwtSettings { issuer: Some(ISSUER.into()), audience: Some(AUDIENCE.into()), ..JwtSettings::new(keys) })
}

struct Answer {
    status: u16,
    challenge: Option<String>,
    body: Value,
}

async fn post(url: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    send(reqwest::Client::new().post(url).header("content-type", "application/json").body(body.to_owned()), headers).await
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    send(reqwest::Client::new().get(url), headers).await
}

/// Sends `request` with `headers` added; the status, the challenge and the JSON body.
async fn send(mut request: reqwest::RequestBuilder, headers: &[(&str, &str)]) -> Answer {
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    Answer { status, challenge, body: response.json().await.unwrap_or(Value::Null) }
}

/// A refused request: what it is, its headers, and what its challenge must say.
type RefusedCase<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);

/// Sends each refused request and checks the 401, its challenge and that Redis is untouched.
async fn assert_refused(api: &InProcessApi, event: &TestEvent, cases: &[RefusedCase<'_>]) {
    let before = redis_snapshot(&event.id).await;
    for (what, headers, reason) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = post(&api.apply_url(&event.id), &headers, r#"{"userId":"victim"}"#).await;
        assert_eq!(answer.status, 401, "{what}: {:?}", answer.body);
        assert_eq!(answer.body, json!({"status": "unauthorized"}), "{what}");
        let challenge = answer.challenge.unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
        assert!(challenge.contains(reason), "{what}: challenge {challenge:?} should say {reason:?}");
    }
    assert_eq!(redis_snapshot(&event.id).await, before, "a refused request changed the event's Redis state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hs256_tokens_prove_the_user_and_every_bad_token_is_refused_with_nothing_counted() {
    let namespace = unique("jwt");
    let event = provision_event(&kafka_brokers(), &namespace, 10, 1).await;
    let api = api_with(&namespace, jwt_settings(JwtKeys::Secret(SECRET.as_bytes().to_vec()))).await;

    let expired = json!({"sub": "victim", "iss": ISSUER, "aud": AUDIENCE, "exp": now() - 120});
    let immature = json!({"sub": "victim", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 300, "nbf": now() + 120});
    let wrong_issuer = json!({"sub": "victim", "iss": "https://evil.test", "aud": AUDIENCE, "exp": now() + 300});
    let wrong_audience = json!({"sub": "victim", "iss": ISSUER, "aud": "payments", "exp": now() + 300});
    let no_audience = json!({"sub": "victim", "iss": ISSUER, "exp": now() + 300});
    let no_expiry = json!({"sub": "victim", "iss": ISSUER, "aud": AUDIENCE});
    let bad_user = json!({"sub": "two words", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 300});
    let no_user = json!({"name": "victim", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 300});
    let forged = sign(&claims("victim"), Algorithm::HS256, &EncodingKey::from_secret(b"guessed-secret-guessed-secret-guessed"), None);
    let valid_for_alice = hs256(&claims("alice"));
    // Alice's signature over Bob's claims.
    let (alice_head, alice_sig) = (valid_for_alice.split('.').next().unwrap(), valid_for_alice.rsplit('.').next().unwrap());
    let bob_payload = hs256(&claims("bob")).split('.').nth(1).unwrap().to_owned();
    let tampered = format!("{alice_head}.{bob_payload}.{alice_sig}");
    let hs512 = sign(&claims("victim"), Algorithm::HS512, &EncodingKey::from_secret(SECRET.as_bytes()), None);
    let auth = "authorization";
    assert_refused(
        &api,
        &event,
        &[
            ("no Authorization header", vec![("x-user-id", "victim".into())], r#"Bearer realm="coupons""#),
            ("not a bearer scheme", vec![(auth, format!("Basic {}", valid_for_alice))], "not a bearer token"),
            ("empty bearer", vec![(auth, "Bearer ".into())], "error=\"invalid_token\""),
            ("garbage", vec![(auth, bearer("not.a.jwt"))], "malformed token"),
            ("expired beyond the skew", vec![(auth, bearer(&hs256(&expired)))], "token expired"),
            ("not yet valid", vec![(auth, bearer(&hs256(&immature)))], "token not yet valid"),
            ("wrong issuer", vec![(auth, bearer(&hs256(&wrong_issuer)))], "wrong issuer"),
            ("wrong audience", vec![(auth, bearer(&hs256(&wrong_audience)))], "wrong audience"),
            ("no audience", vec![(auth, bearer(&hs256(&no_audience)))], "lacks a required claim"),
            ("no expiry", vec![(auth, bearer(&hs256(&no_expiry)))], "lacks a required claim"),
            ("bad signature", vec![(auth, bearer(&forged))], "bad signature"),
            ("payload swapped under a valid signature", vec![(auth, bearer(&tampered))], "bad signature"),
            ("alg none", vec![(auth, bearer(&unsigned(&claims("victim"))))], "malformed token"),
            ("an algorithm the key is not for", vec![(auth, bearer(&hs512))], "algorithm not accepted"),
            ("user claim not a valid user id", vec![(auth, bearer(&hs256(&bad_user)))], "user claim is not a valid user id"),
            ("no user claim", vec![(auth, bearer(&hs256(&no_user)))], "token has no user claim"),
            ("two Authorization headers", vec![(auth, bearer(&valid_for_alice)), (auth, bearer(&valid_for_alice))], "more than once"),
            (
                "a token over 8 KiB",
                vec![(
                    auth,
                    bearer(&hs256(&json!({"sub": "victim", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 300, "pad": "x".repeat(9000)}))),
                )],
                "token too long",
            ),
        ],
    )
    .await;

    // A valid token: the user is the token's, whatever else the request says.
    let alice = bearer(&valid_for_alice);
    let issued = post(&api.apply_url(&event.id), &[("authorization", &alice)], "").await;
    assert_eq!((issued.status, &issued.body["status"]), (201, &json!("issued")), "{:?}", issued.body);
    let slot = issued.body["slot"].as_i64().unwrap();
    let again = post(&api.apply_url(&event.id), &[("authorization", &alice)], r#"{"userId":"alice"}"#).await;
    assert_eq!((again.status, again.body["slot"].as_i64()), (409, Some(slot)), "{:?}", again.body);

    // A body naming someone else is refused and changes nothing.
    let before = redis_snapshot(&event.id).await;
    let bob_token = bearer(&hs256(&claims("bob")));
    let other = post(&api.apply_url(&event.id), &[("authorization", &bob_token)], r#"{"userId":"alice"}"#).await;
    assert_eq!(other.status, 400, "{:?}", other.body);
    assert_eq!(redis_snapshot(&event.id).await, before);

    // Expired within the allowed skew still counts.
    let carol = json!({"sub": "carol", "iss": ISSUER, "aud": AUDIENCE, "exp": now() - 10});
    let carol = bearer(&hs256(&carol));
    assert_eq!(post(&api.apply_url(&event.id), &[("authorization", &carol)], "{}").await.status, 201);

    // The lookup answers only the caller's own coupon.
    let alice_url = format!("{}/v1/events/{}/users/alice", api.base_url, event.id.name());
    let own = get(&alice_url, &[("authorization", &alice)]).await;
    assert_eq!((own.status, own.body["slot"].as_i64()), (200, Some(slot)), "{:?}", own.body);
    let foreign = get(&alice_url, &[("authorization", &bob_token)]).await;
    assert_eq!((foreign.status, &foreign.body), (403, &json!({"status": "forbidden"})));
    let anonymous = get(&alice_url, &[]).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.challenge.as_deref(), Some(r#"Bearer realm="coupons""#));

    // Refusals are counted apart from the apply answers.
    let metrics = reqwest::get(format!("{}/metrics", api.ops_url)).await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l.contains(r#"status="unauthorized""#) && !l.ends_with(" 0")), "{metrics}");
}

/// Replaces the file the way a mounted Secret is updated: a new file moved over the old.
fn replace(path: &PathBuf, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rs256_and_es256_tokens_verify_against_a_jwks_file_and_rotated_keys_are_picked_up() {
    let namespace = unique("jwks");
    let event = provision_event(&kafka_brokers(), &namespace, 10, 1).await;
    let dir = std::env::temp_dir().join(unique("jwks"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("jwks.json");
    let (rsa, other, ec) = (rsa_key("rs256.pem"), rsa_key("rs256-other.pem"), ec_key());
    // With keys this api cannot use beside them (an unknown key type, a symmetric key, a
    // curve it does not know): skipped, the others serve.
    let mut document: Value = serde_json::from_str(&jwks(&[(&rsa, Algorithm::RS256, "rsa-1"), (&ec, Algorithm::ES256, "ec-1")])).unwrap();
    let odd = document["keys"].as_array_mut().unwrap();
    odd.push(json!({"kty": "XYZ", "kid": "future-1"}));
    odd.push(json!({"kty": "oct", "kid": "hmac-1", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"}));
    odd.push(json!({"kty": "EC", "kid": "k1", "crv": "secp256k1", "x": "AA", "y": "AA"}));
    replace(&file, &document.to_string());
    let api = api_with(&namespace, jwt_settings(JwtKeys::JwksFile(file.clone()))).await;
    let url = api.apply_url(&event.id);

    let rs = bearer(&sign(&claims("rs-user"), Algorithm::RS256, &rsa, Some("rsa-1")));
    assert_eq!(post(&url, &[("authorization", &rs)], "").await.status, 201);
    let es = bearer(&sign(&claims("es-user"), Algorithm::ES256, &ec, Some("ec-1")));
    assert_eq!(post(&url, &[("authorization", &es)], "").await.status, 201);
    let no_kid = bearer(&sign(&claims("nokid-user"), Algorithm::RS256, &rsa, None));
    assert_eq!(post(&url, &[("authorization", &no_kid)], "").await.status, 201, "without a kid, the keys of the set are tried");

    // An HMAC token naming an RSA key's kid (algorithm confusion: HS256 "signed" with
    // public material): the keys decide the algorithm, so it never reaches a key.
    let public_jwk = jwks(&[(&rsa, Algorithm::RS256, "rsa-1")]);
    let confused = sign(&claims("victim"), Algorithm::HS256, &EncodingKey::from_secret(public_jwk.as_bytes()), Some("rsa-1"));
    let auth = "authorization";
    assert_refused(
        &api,
        &event,
        &[
            (
                "signed by a key the set does not hold",
                vec![(auth, bearer(&sign(&claims("victim"), Algorithm::RS256, &other, Some("rsa-1"))))],
                "bad signature",
            ),
            ("unknown kid", vec![(auth, bearer(&sign(&claims("victim"), Algorithm::RS256, &other, Some("rsa-9"))))], "unknown signing key"),
            ("HS256 naming an RSA key", vec![(auth, bearer(&confused))], "algorithm not accepted"),
            (
                "RSA key used for ES256's kid",
                vec![(auth, bearer(&sign(&claims("victim"), Algorithm::RS256, &rsa, Some("ec-1"))))],
                "unknown signing key",
            ),
            ("alg none", vec![(auth, bearer(&unsigned(&claims("victim"))))], "malformed token"),
        ],
    )
    .await;

    // Rotation: the provider now signs with another key; the old one is withdrawn.
    replace(&file, &jwks(&[(&other, Algorithm::RS256, "rsa-2")]));
    let rotated = bearer(&sign(&claims("rotated-user"), Algorithm::RS256, &other, Some("rsa-2")));
    wait_until("the rotated key is accepted", Duration::from_secs(20), || {
        let (url, rotated) = (url.clone(), rotated.clone());
        async move { (post(&url, &[("authorization", &rotated)], "").await.status == 201).then_some(()) }
    })
    .await;
    let withdrawn = bearer(&sign(&claims("late-user"), Algorithm::RS256, &rsa, Some("rsa-1")));
    assert_eq!(post(&url, &[("authorization", &withdrawn)], "").await.status, 401, "a withdrawn key no longer proves anyone");
    assert_eq!(post(&url, &[("authorization", &rs)], "").await.status, 401, "a token verified with a withdrawn key is forgotten");

    // A broken document keeps the keys in use.
    replace(&file, "{ not json");
    tokio::time::sleep(coupon_service::auth::JWKS_RELOAD_INTERVAL * 2).await;
    let still = bearer(&sign(&claims("still-user"), Algorithm::RS256, &other, Some("rsa-2")));
    assert_eq!(post(&url, &[("authorization", &still)], "").await.status, 201, "a broken JWKS file must not lock everyone out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn header_mode_honours_only_the_configured_header() {
    let namespace = unique("hdr");
    let event = provision_event(&kafka_brokers(), &namespace, 10, 1).await;
    let api = api_with(&namespace, AuthSettings::Header { header: HeaderName::from_static("x-shop-user") }).await;
    let token = bearer(&hs256(&claims("victim")));
    assert_refused(
        &api,
        &event,
        &[
            ("no header", vec![], "missing identity header"),
            ("another header", vec![("x-user-id", "victim".into())], "missing identity header"),
            ("a bearer token", vec![("authorization", token)], "missing identity header"),
            ("empty", vec![("x-shop-user", String::new())], "not a valid user id"),
            ("twice", vec![("x-shop-user", "a".into()), ("x-shop-user", "b".into())], "more than once"),
        ],
    )
    .await;
    let issued = post(&api.apply_url(&event.id), &[("x-shop-user", "gw-user")], "").await;
    assert_eq!(issued.status, 201, "{:?}", issued.body);
    let mismatch = post(&api.apply_url(&event.id), &[("x-shop-user", "gw-other")], r#"{"userId":"gw-user"}"#).await;
    assert_eq!(mismatch.status, 400);
    let lookup = format!("{}/v1/events/{}/users/gw-user", api.base_url, event.id.name());
    assert_eq!(get(&lookup, &[("x-shop-user", "gw-user")]).await.status, 200);
    assert_eq!(get(&lookup, &[("x-shop-user", "gw-other")]).await.status, 403);
}

#[tokio::test]
async fn an_api_with_unusable_key_material_does_not_start() {
    use coupon_service::auth::Authenticator;
    let short = AuthSettings::Jwt(JwtSettings::new(JwtKeys::Secret(b"short".to_vec())));
    assert!(Authenticator::start(&short).err().unwrap().to_string().contains("at least 32 bytes"));
    let missing = AuthSettings::Jwt(JwtSettings::new(JwtKeys::JwksFile("/nonexistent/jwks.json".into())));
    assert!(Authenticator::start(&missing).err().unwrap().to_string().contains("/nonexistent/jwks.json"));
    let dir = std::env::temp_dir().join(unique("jwks-bad"));
    std::fs::create_dir_all(&dir).unwrap();
    let hmac_only = dir.join("jwks.json");
    std::fs::write(&hmac_only, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","alg":"HS256"}]}"#).unwrap();
    assert!(Authenticator::start(&AuthSettings::Jwt(JwtSettings::new(JwtKeys::JwksFile(hmac_only))))
        .err()
        .unwrap()
        .to_string()
        .contains("no signing key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sold_out_answers_need_a_valid_token_too_and_never_tell_who_holds() {
    let namespace = unique("jwt-sold");
    let event = provision_event(&kafka_brokers(), &namespace, 1, 1).await;
    let api = api_with(&namespace, jwt_settings(JwtKeys::Secret(SECRET.as_bytes().to_vec()))).await;
    let url = api.apply_url(&event.id);
    let alice = bearer(&hs256(&claims("alice")));
    let issued = post(&url, &[("authorization", &alice)], "").await;
    assert_eq!(issued.status, 201, "{:?}", issued.body);
    let slot = issued.body["slot"].as_i64();
    let bob = bearer(&hs256(&claims("bob")));
    assert_eq!(post(&url, &[("authorization", &bob)], "").await.status, 410);

    let before = redis_snapshot(&event.id).await;
    let forge = |user: &str| {
        bearer(&sign(&claims(user), Algorithm::HS256, &EncodingKey::from_secret(b"not-the-secret-not-the-secret-not-the"), None))
    };
    let expired_alice = bearer(&hs256(&json!({"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": now() - 600})));
    // Twice each: the second answer comes from the verified-token memory where there is one.
    for _ in 0..2 {
        for (what, authorization, expected) in [
            ("a valid non-holder", bob.clone(), 410),
            ("the holder's valid token", alice.clone(), 409),
            ("a forged token of a non-holder", forge("carol"), 401),
            ("a forged token of the holder: the same answer as anyone's forged token", forge("alice"), 401),
            ("an expired token of the holder", expired_alice.clone(), 401),
            ("a token that does not parse", bearer("not.a.jwt"), 401),
        ] {
            let answer = post(&url, &[("authorization", &authorization)], "").await;
            assert_eq!(answer.status, expected, "{what}: {:?}", answer.body);
            if expected == 409 {
                assert_eq!(answer.body["slot"].as_i64(), slot, "{what}");
            }
        }
    }
    assert_eq!(post(&url, &[], r#"{"userId":"alice"}"#).await.status, 401, "no token at all is refused");
    assert_eq!(redis_snapshot(&event.id).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_hs256_token_with_a_providers_key_id_is_accepted() {
    let namespace = unique("jwt-kid");
    let event = provision_event(&kafka_brokers(), &namespace, 5, 1).await;
    let api = api_with(&namespace, jwt_settings(JwtKeys::Secret(SECRET.as_bytes().to_vec()))).await;
    let with_kid = bearer(&sign(&claims("kid-user"), Algorithm::HS256, &EncodingKey::from_secret(SECRET.as_bytes()), Some("realm-hmac-1")));
    assert_eq!(post(&api.apply_url(&event.id), &[("authorization", &with_kid)], "").await.status, 201);
}
