//! Bearer tokens: the signature, `exp`, `nbf`, `iss` and `aud` checked with a small clock
//! skew, and the user taken from one claim.
//!
//! Keys are either one HS256 secret shared with the identity provider, or the public keys
//! of a JWKS document in a file (an identity provider's `jwks_uri` content, mounted from a
//! ConfigMap or Secret). The file is read again every few seconds, so rotated keys are
//! picked up without a restart; a file that no longer parses keeps the keys in use and is
//! logged. Tokens without `alg` (`none`) or with an algorithm the keys are not for are
//! refused: the algorithm is decided by the keys, never by the token.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use coupon_core::event::validate_user_id;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::AuthError;

/// Shortest HS256 secret accepted: as long as the hash (RFC 7518, section 3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// Where the verification keys come from.
#[derive(Clone)]
pub enum JwtKeys {
    /// HS256 with this secret (`JWT_SECRET` or `JWT_SECRET_FILE`).
    Secret(Vec<u8>),
    /// Asymmetric keys of a JWKS file (`JWT_JWKS_FILE`).
    JwksFile(PathBuf),
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret(_) => f.write_str("Secret(***)"),
            Self::JwksFile(path) => f.debug_tuple("JwksFile").field(path).finish(),
        }
    }
}

/// What a token must satisfy.
#[derive(Clone, Debug)]
pub struct JwtSettings {
    pub keys: JwtKeys,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud` (one of the token's audiences), when set.
    pub audience: Option<String>,
    /// The claim holding the user id.
    pub user_claim: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

impl JwtSettings {
    pub fn new(keys: JwtKeys) -> Self {
        Self { keys, issuer: None, audience: None, user_claim: "sub".into(), leeway: Duration::from_secs(30) }
    }
}

/// Algorithms a JWKS key may be used with; HS256 only with the shared secret.
const ASYMMETRIC: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// One key and what it may verify.
struct Key {
    kid: Option<String>,
    /// The key's own `alg`, when the JWKS names one.
    algorithm: Option<Algorithm>,
    decoding: DecodingKey,
}

/// Checks tokens; with a JWKS file, keeps its keys current.
pub struct JwtVerifier {
    keys: Arc<RwLock<Arc<Vec<Key>>>>,
    /// Validation per algorithm, built once.
    validations: Vec<(Algorithm, Validation)>,
    user_claim: String,
    /// Stops the JWKS watcher with the verifier.
    _watcher: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for JwtVerifier {
    fn drop(&mut self) {
        if let Some(watcher) = &self._watcher {
            watcher.abort();
        }
    }
}

impl JwtVerifier {
    /// Loads the keys (refusing a short secret, an unreadable or keyless JWKS file) and,
    /// for a JWKS file, starts re-reading it every `reload`.
    pub fn start(settings: &JwtSettings, reload: Duration) -> Result<Self, AuthError> {
        let (keys, algorithms, watch) = match &settings.keys {
            JwtKeys::Secret(secret) => {
                if secret.len() < MIN_SECRET_BYTES {
                    return Err(AuthError::Keys(format!("JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")));
                }
                let key = Key { kid: None, algorithm: Some(Algorithm::HS256), decoding: DecodingKey::from_secret(secret) };
                (vec![key], vec![Algorithm::HS256], None)
            }
            JwtKeys::JwksFile(path) => (load_jwks(path)?, ASYMMETRIC.to_vec(), Some(path.clone())),
        };
        let validations = algorithms.into_iter().map(|algorithm| (algorithm, validation(settings, algorithm))).collect();
        let keys = Arc::new(RwLock::new(Arc::new(keys)));
        let watcher = watch.map(|path| tokio::spawn(watch_jwks(path, keys.clone(), reload)));
        Ok(Self { keys, validations, user_claim: settings.user_claim.clone(), _watcher: watcher })
    }

    /// The user a token proves, or why it proves none (a fixed phrase).
    pub fn user(&self, token: &str) -> Result<String, &'static str> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| reason(e.kind()))?;
        let validation = self.validations.iter().find(|(alg, _)| *alg == header.alg).map(|(_, v)| v).ok_or("algorithm not accepted")?;
        let keys = self.keys.read().map(|keys| keys.clone()).map_err(|_| "keys unavailable")?;
        let candidates =
            keys.iter().filter(|key| key.algorithm.is_none_or(|alg| alg == header.alg) && (header.kid.is_none() || key.kid == header.kid));
        let mut last = "unknown signing key";
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, validation) {
                Ok(data) => return self.user_of(&data.claims),
                // Another key of the set may have signed it (no `kid` given).
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat) => {
                    last = reason(e.kind());
                }
                Err(e) => return Err(reason(e.kind())),
            }
        }
        Err(last)
    }

    /// The user the token names, unverified (see `Authenticator::claimed_user`). On the
    /// sold-out path of every request, so it decodes the payload and reads the one claim
    /// without building the claims map.
    pub fn claimed_user(&self, token: &str) -> Option<String> {
        use base64::Engine as _;
        let mut parts = token.split('.');
        let (_header, payload, _signature, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else { return None };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
        let mut json = serde_json::Deserializer::from_slice(&bytes);
        let user = serde::de::DeserializeSeed::deserialize(OneClaim(&self.user_claim), &mut json).ok()??;
        validate_user_id(&user).ok()?;
        Some(user)
    }

    fn user_of(&self, claims: &Map<String, Value>) -> Result<String, &'static str> {
        let user = claims.get(&self.user_claim).and_then(Value::as_str).ok_or("token has no user claim")?;
        validate_user_id(user).map_err(|_| "user claim is not a valid user id")?;
        Ok(user.to_owned())
    }
}

fn validation(settings: &JwtSettings, algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = settings.leeway.as_secs();
    validation.validate_nbf = true;
    let mut required = vec!["exp"];
    match &settings.issuer {
        Some(issuer) => {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        None => validation.iss = None,
    }
    match &settings.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

/// A fixed phrase for each way a token fails.
fn reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::ImmatureSignature => "token not yet valid",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => "algorithm not accepted",
        ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim",
        ErrorKind::InvalidClaimFormat(_) => "token has a malformed claim",
        _ => "malformed token",
    }
}

/// The usable keys of a JWKS file: keys for signatures with an accepted algorithm.
fn load_jwks(path: &PathBuf) -> Result<Vec<Key>, AuthError> {
    let text = std::fs::read(path).map_err(|e| AuthError::Keys(format!("JWT_JWKS_FILE {}: {e}", path.display())))?;
    parse_jwks(&text).map_err(|e| AuthError::Keys(format!("JWT_JWKS_FILE {}: {e}", path.display())))
}

fn parse_jwks(text: &[u8]) -> Result<Vec<Key>, String> {
    let set: JwkSet = serde_json::from_slice(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)) {
            continue;
        }
        let algorithm = match jwk.common.key_algorithm {
            None => None,
            Some(alg) => match key_algorithm(alg) {
                Some(alg) => Some(alg),
                None => continue,
            },
        };
        let decoding = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {:?}: {e}", jwk.common.key_id))?;
        keys.push(Key { kid: jwk.common.key_id.clone(), algorithm, decoding });
    }
    if keys.is_empty() {
        return Err("no signing key with an accepted algorithm (RS*, PS*, ES256, ES384)".into());
    }
    Ok(keys)
}

fn key_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    let algorithm = match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        _ => return None,
    };
    Some(algorithm)
}

/// Re-reads the JWKS file every `every`; a changed, valid document replaces the keys.
async fn watch_jwks(path: PathBuf, keys: Arc<RwLock<Arc<Vec<Key>>>>, every: Duration) {
    let mut seen = std::fs::read(&path).ok();
    loop {
        tokio::time::sleep(every).await;
        let text = match tokio::fs::read(&path).await {
            Ok(text) => text,
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "cannot read the JWKS file; keeping the keys in use");
                continue;
            }
        };
        if seen.as_ref() == Some(&text) {
            continue;
        }
        match parse_jwks(&text) {
            Ok(new) => {
                tracing::info!(path = %path.display(), keys = new.len(), "JWKS file changed; keys replaced");
                if let Ok(mut current) = keys.write() {
                    *current = Arc::new(new);
                }
            }
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "the JWKS file changed but cannot be used; keeping the keys in use")
            }
        }
        seen = Some(text);
    }
}

/// Reads the string value of one claim of a JSON object, skipping the others unparsed.
struct OneClaim<'a>(&'a str);

impl<'de> serde::de::DeserializeSeed<'de> for OneClaim<'_> {
    type Value = Option<String>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for OneClaim<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object of claims")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut user = None;
        while let Some(wanted) = map.next_key_seed(IsKey(self.0))? {
            if wanted {
                user = map.next_value::<Value>()?.as_str().map(str::to_owned);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(user)
    }
}

/// A map key compared with the wanted name, without allocating it.
struct IsKey<'a>(&'a str);

impl<'de> serde::de::DeserializeSeed<'de> for IsKey<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for IsKey<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a claim name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(claim: &str) -> JwtVerifier {
        let settings = JwtSettings { user_claim: claim.into(), ..JwtSettings::new(JwtKeys::Secret(vec![7; 32])) };
        JwtVerifier::start(&settings, Duration::from_secs(60)).unwrap()
    }

    fn token(payload: &str) -> String {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b64(r#"{"alg":"HS256"}"#), b64(payload))
    }

    #[test]
    fn the_claimed_user_is_read_from_the_one_claim_and_validated() {
        let sub = verifier("sub");
        assert_eq!(sub.claimed_user(&token(r#"{"iss":"x","sub":"alice","aud":["a","b"],"n":{"sub":"inner"}}"#)), Some("alice".into()));
        assert_eq!(sub.claimed_user(&token(r#"{"sub":"al\u0069ce"}"#)), Some("alice".into()), "escaped names and values");
        assert_eq!(sub.claimed_user(&token(r#"{"sub":42}"#)), None);
        assert_eq!(sub.claimed_user(&token(r#"{"sub":"two words"}"#)), None);
        assert_eq!(sub.claimed_user(&token(r#"{"name":"alice"}"#)), None);
        assert_eq!(sub.claimed_user(&token("not json")), None);
        assert_eq!(sub.claimed_user("only.two"), None);
        assert_eq!(sub.claimed_user(&format!("{}.extra", token(r#"{"sub":"alice"}"#))), None);
        assert_eq!(verifier("uid").claimed_user(&token(r#"{"sub":"alice","uid":"u-1"}"#)), Some("u-1".into()));
    }
}
