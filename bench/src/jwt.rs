//! Sold out with token verification (HS256, and RS256 / ES256 from a JWKS file) against the
//! same api without: each api answers the same sold-out event; rounds alternate so that drift
//! of the machine hits every side alike.

use coupon_service::auth::{AuthSettings, JwtKeys, JwtSettings};
use coupon_service::tools::load::LoadIdentity;

use crate::results::Measure;
use crate::setup::{api_with, burst, burst_as, event, median, unique, Setup, Sizes, CONCURRENCY};

pub async fn measure(setup: &Setup, url: &str, sizes: &Sizes) -> anyhow::Result<Vec<Measure>> {
    let mut measures = Vec::new();
    let (sold, _) = event(setup, 1).await?;
    burst(url, sold.name(), 10, 1, "first-").await?;
    let requests = sizes.requests;
    let secret = "bench-shared-secret-of-at-least-32-bytes";
    let fixture = |name: &str| std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/jwt").join(name));
    let rsa = jsonwebtoken::EncodingKey::from_rsa_pem(&fixture("rs256.pem")?)?;
    let ec = jsonwebtoken::EncodingKey::from_ec_pem(&fixture("es256.pem")?)?;
    let jwks_path = std::env::temp_dir().join(format!("{}.jwks.json", unique("bench")));
    let mut keys = Vec::new();
    for (key, alg, kid) in [(&rsa, jsonwebtoken::Algorithm::RS256, "rsa"), (&ec, jsonwebtoken::Algorithm::ES256, "ec")] {
        let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(key, alg)?;
        jwk.common.key_id = Some(kid.into());
        keys.push(jwk);
    }
    std::fs::write(&jwks_path, serde_json::to_vec(&jsonwebtoken::jwk::JwkSet { keys })?)?;
    let settings =
        |keys| AuthSettings::Jwt(JwtSettings { issuer: Some("bench".into()), audience: Some("coupons".into()), ..JwtSettings::new(keys) });
    let (hs_url, _) = api_with(setup, settings(JwtKeys::Secret(secret.as_bytes().to_vec()))).await?;
    let (jwks_url, _) = api_with(setup, settings(JwtKeys::JwksFile(jwks_path.clone()))).await?;
    let signed = |key: &jsonwebtoken::EncodingKey, algorithm, kid: Option<&str>| LoadIdentity::Jwt {
        key: key.clone(),
        algorithm,
        kid: kid.map(str::to_owned),
        issuer: Some("bench".into()),
        audience: Some("coupons".into()),
    };
    let hs = LoadIdentity::hs256(secret, Some("bench".into()), Some("coupons".into()));
    let rs = signed(&rsa, jsonwebtoken::Algorithm::RS256, Some("rsa"));
    let es = signed(&ec, jsonwebtoken::Algorithm::ES256, Some("ec"));
    let sides = [("none", url, LoadIdentity::Body), ("HS256", &hs_url, hs), ("RS256", &jwks_url, rs), ("ES256", &jwks_url, es)];
    // Two crowds: one that retries (each user's token sent ten times, as users press the
    // button again; a verified token is remembered) and one where every request is a new
    // user (every token verified: the worst case). Five rounds per crowd, each side once
    // per round in a rotating order; the median round counts.
    let crowds = [("a crowd retrying, 10 requests per user", Some(requests / 10)), ("every request a new user", None)];
    for (crowd, users) in crowds {
        let mut rounds: [Vec<f64>; 4] = Default::default();
        for round in 0..sizes.rounds {
            for k in 0..sides.len() {
                let i = (round + k) % sides.len();
                let (name, base, identity) = &sides[i];
                let prefix = format!("jwt{}{round}{name}-", users.is_some());
                let report = burst_as(base, sold.name(), requests, CONCURRENCY, &prefix, identity.clone(), users).await?;
                anyhow::ensure!(report.count(410) == requests as u64, "sold-out {name} run: {}", report.table());
                rounds[i].push(report.throughput());
            }
        }
        let medians: Vec<f64> = rounds.iter().map(|round| median(round)).collect();
        for (i, algorithm, id) in [(1, "HS256", "hs256"), (2, "RS256 (JWKS)", "rs256"), (3, "ES256 (JWKS)", "es256")] {
            let what = format!("sold-out req/s, {algorithm} tokens verified, {crowd}");
            let name = format!("soldout_{id}_{}_vs_no_token", if users.is_some() { "retrying" } else { "new_users" });
            measures.push(Measure::figure(&name, what, medians[i], "req/s", 0, ">= 0.9").against(medians[0], "same api, no token"));
        }
    }
    let _ = std::fs::remove_file(&jwks_path);
    Ok(measures)
}
