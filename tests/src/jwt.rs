//! Tokens as a shop's identity provider signs them, for the identity tests: claims with the
//! tests' issuer and audience, keys from `fixtures/jwt/`, and JWKS documents of their public
//! halves.

use std::path::Path;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

pub const ISSUER: &str = "https://id.shop.test";
pub const AUDIENCE: &str = "coupons";

pub fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Claims of a token for `user`, valid for five minutes.
pub fn claims(user: &str) -> Value {
    json!({"sub": user, "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 300, "iat": now()})
}

pub fn sign(claims: &Value, alg: Algorithm, key: &EncodingKey, kid: Option<&str>) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/jwt").join(name)).unwrap()
}

/// An RSA key of `fixtures/jwt/` (`rs256.pem`, `rs256-other.pem`).
pub fn rsa_key(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture(name)).unwrap()
}

/// The P-256 key of `fixtures/jwt/`.
pub fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(&fixture("es256.pem")).unwrap()
}

/// A JWKS document with the public halves of `keys`.
pub fn jwks(keys: &[(&EncodingKey, Algorithm, &str)]) -> String {
    let keys = keys
        .iter()
        .map(|(key, alg, kid)| {
            let mut jwk = Jwk::from_encoding_key(key, *alg).unwrap();
            jwk.common.key_id = Some((*kid).to_owned());
            jwk
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).unwrap()
}
