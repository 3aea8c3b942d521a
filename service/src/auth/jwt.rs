//! Bearer tokens: the signature, `exp`, `nbf`, `iss` and `aud` checked with a small clock
//! skew, and the user taken from one claim.
//!
//! Keys are one HS256 secret shared with the identity provider, the public keys of a JWKS
//! document in a file (an identity provider's `jwks_uri` content, mounted from a ConfigMap or
//! Secret), or those of the provider's `jwks_uri` itself (`jwks_url`). The file is read again
//! every few seconds, so rotated keys are picked up without a restart; a file that no longer
//! parses keeps the keys in use and is logged. Tokens without `alg` (`none`) or with an algorithm the keys are not for are
//! refused: the algorithm is decided by the keys, never by the token.
//!
//! Every request's token is verified; a token verified once is remembered (by the SHA-256
//! of its text, until its `exp` and at most five minutes, at most `VERIFIED_TOKENS` of them,
//! with the keys it was verified with, so that replacing the keys forgets them), so a user's
//! retries during a crowd cost a lookup instead of a signature check.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use coupon_core::event::validate_user_id;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::jwks_url::{JwksUrl, RemoteJwks, Waited};
use super::AuthError;

/// Shortest HS256 secret accepted: as long as the hash (RFC 7518, section 3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// Tokens remembered as verified: about 20,000 users retrying at once. Each is remembered
/// by the SHA-256 of its text, so the memory is about 2 MiB whatever the tokens' size.
pub const VERIFIED_TOKENS: usize = 20_000;

/// Longest token accepted (identity providers' tokens are a few KiB at most); longer ones
/// are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Longest a token is remembered, whatever its `exp`: a bound on how long any mistake in
/// what was remembered can last.
const REMEMBER_AT_MOST_SECS: u64 = 300;

/// What a verified token proved, and until when (seconds since the epoch, skew included).
#[derive(Clone)]
struct Verified {
    user: String,
    valid_from: u64,
    valid_until: u64,
}

type VerifiedCache = quick_cache::sync::Cache<[u8; 32], Verified>;

/// The keys in use and the tokens verified with them, swapped as one: a token verified with
/// keys that were replaced meanwhile lands in a memory nobody reads any more.
pub(super) struct KeySet {
    keys: Vec<Key>,
    verified: VerifiedCache,
    /// The JWKS document fetched from a URL the keys came from: the same document fetched
    /// again replaces nothing.
    pub(super) source: Option<Vec<u8>>,
}

impl KeySet {
    pub(super) fn new(keys: Vec<Key>) -> Arc<Self> {
        Arc::new(Self { keys, verified: VerifiedCache::new(VERIFIED_TOKENS), source: None })
    }

    pub(super) fn from_document(keys: Vec<Key>, document: Vec<u8>) -> Arc<Self> {
        Arc::new(Self { keys, verified: VerifiedCache::new(VERIFIED_TOKENS), source: Some(document) })
    }
}

fn digest(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Where the verification keys come from.
#[derive(Clone)]
pub enum JwtKeys {
    /// HS256 with this secret (`JWT_SECRET` or `JWT_SECRET_FILE`).
    Secret(Vec<u8>),
    /// Asymmetric keys of a JWKS file (`JWT_JWKS_FILE`).
    JwksFile(PathBuf),
    /// Asymmetric keys of the provider's JWKS URL (`JWT_JWKS_URL`).
    JwksUrl(JwksUrl),
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret(_) => f.write_str("Secret(***)"),
            Self::JwksFile(path) => f.debug_tuple("JwksFile").field(path).finish(),
            Self::JwksUrl(source) => f.debug_tuple("JwksUrl").field(&source.url.as_str()).finish(),
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
pub(super) struct Key {
    kid: Option<String>,
    /// The shared secret: it has no id, and matches whatever `kid` a token names.
    any_kid: bool,
    /// The key's own `alg`, when the JWKS names one.
    algorithm: Option<Algorithm>,
    decoding: DecodingKey,
}

/// Why a token names no key of the set; with a JWKS URL, the set is fetched again.
pub const UNKNOWN_KEY: &str = "unknown signing key";
/// No key set yet (a JWKS URL not fetched yet).
pub const NO_KEYS_YET: &str = "signing keys not loaded yet";
/// No key of the set verifies the signature.
pub const BAD_SIGNATURE: &str = "bad signature";
/// The key set is being fetched for the token's key id (too many waiting, or the wait ran
/// out): the client should come back (503, not 401).
pub const KEYS_BUSY: &str = "signing keys being fetched";

/// Checks tokens; with a JWKS file or URL, keeps its keys current.
pub struct JwtVerifier {
    keys: Arc<RwLock<Arc<KeySet>>>,
    /// The JWKS URL's fetcher, asked again for a key id the set lacks.
    remote: Option<Arc<RemoteJwks>>,
    leeway: u64,
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
    /// for a JWKS file, starts re-reading it every `reload`; for a JWKS URL, starts fetching
    /// it (the verifier has no key until the first fetch: see `loaded`).
    pub fn start(settings: &JwtSettings, reload: Duration) -> Result<Self, AuthError> {
        let validations =
            |algorithms: &[Algorithm]| algorithms.iter().map(|&algorithm| (algorithm, validation(settings, algorithm))).collect();
        if let JwtKeys::JwksUrl(source) = &settings.keys {
            let keys = Arc::new(RwLock::new(KeySet::new(Vec::new())));
            let remote = RemoteJwks::new(source.clone(), keys.clone()).map_err(AuthError::Keys)?;
            let fetcher = tokio::spawn(remote.clone().run());
            return Ok(Self {
                keys,
                remote: Some(remote),
                leeway: settings.leeway.as_secs(),
                validations: validations(&ASYMMETRIC),
                user_claim: settings.user_claim.clone(),
                _watcher: Some(fetcher),
            });
        }
        let (keys, algorithms, watch) = match &settings.keys {
            JwtKeys::Secret(secret) => {
                if secret.len() < MIN_SECRET_BYTES {
                    return Err(AuthError::Keys(format!("JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")));
                }
                let key = Key { kid: None, any_kid: true, algorithm: Some(Algorithm::HS256), decoding: DecodingKey::from_secret(secret) };
                (vec![key], vec![Algorithm::HS256], None)
            }
            JwtKeys::JwksFile(path) => {
                let text = std::fs::read(path).map_err(|e| AuthError::Keys(format!("JWT_JWKS_FILE {}: {e}", path.display())))?;
                let keys = parse_jwks(&text).map_err(|e| AuthError::Keys(format!("JWT_JWKS_FILE {}: {e}", path.display())))?;
                (keys, ASYMMETRIC.to_vec(), Some((path.clone(), text)))
            }
            JwtKeys::JwksUrl(_) => unreachable!("handled above"),
        };
        let keys = Arc::new(RwLock::new(KeySet::new(keys)));
        let watcher = watch.map(|(path, text)| tokio::spawn(watch_jwks(path, text, keys.clone(), reload)));
        Ok(Self {
            keys,
            remote: None,
            leeway: settings.leeway.as_secs(),
            validations: validations(&algorithms),
            user_claim: settings.user_claim.clone(),
            _watcher: watcher,
        })
    }

    /// With a JWKS URL: turns true once the first usable key set is fetched.
    pub fn loaded(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.remote.as_ref().map(|remote| remote.loaded())
    }

    /// `user`, and with a JWKS URL, once more after a fetch of the set when the token names
    /// a key id the set lacks (the provider rotated its keys): see `jwks_url`.
    pub async fn user_fetching_new_keys(&self, token: &str) -> Result<String, &'static str> {
        let Some(remote) = &self.remote else { return self.user(token) };
        // Taken before the check: a fetch that starts after it may bring the key.
        let ticket = remote.ticket();
        let named_key = || jsonwebtoken::decode_header(token).ok().is_some_and(|header| header.kid.is_some());
        match self.user(token) {
            // A key id the set lacks: wait for the fetch that may bring it, then check again.
            Err(UNKNOWN_KEY | NO_KEYS_YET) if named_key() => match remote.wait_for_fetch(ticket).await {
                Waited::Fetched => self.user(token),
                Waited::Busy => Err(KEYS_BUSY),
            },
            // No key id: perhaps a key the set lacks signed it; a fetch is asked for, without
            // waiting (nothing tells a new key from a forgery until it is there).
            Err(reason @ (UNKNOWN_KEY | NO_KEYS_YET | BAD_SIGNATURE)) if !named_key() => {
                remote.ask_for_fetch();
                Err(reason)
            }
            outcome => outcome,
        }
    }

    /// The user a token proves, or why it proves none (a fixed phrase).
    pub fn user(&self, token: &str) -> Result<String, &'static str> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err("token too long");
        }
        let set = self.keys.read().map(|set| set.clone()).map_err(|_| "keys unavailable")?;
        let now = jsonwebtoken::get_current_timestamp();
        let id = digest(token);
        if let Some(verified) = set.verified.get(&id) {
            if now < verified.valid_from {
                return Err("token not yet valid");
            }
            if now <= verified.valid_until {
                return Ok(verified.user);
            }
            set.verified.remove(&id);
            // Past the time it was remembered for: checked again in full below.
        }
        let (user, claims) = self.verify(token, &set.keys)?;
        let seconds = |name: &str| claims.get(name).and_then(Value::as_u64);
        if let Some(exp) = seconds("exp") {
            let valid_from = seconds("nbf").map_or(0, |nbf| nbf.saturating_sub(self.leeway));
            let valid_until = exp.saturating_add(self.leeway).min(now + REMEMBER_AT_MOST_SECS);
            set.verified.insert(id, Verified { user: user.clone(), valid_from, valid_until });
        }
        Ok(user)
    }

    /// Checks the signature and the claims.
    fn verify(&self, token: &str, keys: &[Key]) -> Result<(String, Map<String, Value>), &'static str> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| reason(e.kind()))?;
        let validation = self.validations.iter().find(|(alg, _)| *alg == header.alg).map(|(_, v)| v).ok_or("algorithm not accepted")?;
        // A token's `kid` picks among the JWKS keys; the one shared secret has no id to match
        // (providers put their own key ids in HS256 tokens too).
        let candidates = keys.iter().filter(|key| {
            key.algorithm.is_none_or(|alg| alg == header.alg) && (header.kid.is_none() || key.any_kid || key.kid == header.kid)
        });
        let mut last = if keys.is_empty() { NO_KEYS_YET } else { UNKNOWN_KEY };
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, validation) {
                Ok(data) => return self.user_of(&data.claims).map(|user| (user, data.claims)),
                // Another key of the set may have signed it (no `kid` given).
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat) => {
                    last = reason(e.kind());
                }
                Err(e) => return Err(reason(e.kind())),
            }
        }
        Err(last)
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
        ErrorKind::InvalidSignature => BAD_SIGNATURE,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => "algorithm not accepted",
        ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim",
        ErrorKind::InvalidClaimFormat(_) => "token has a malformed claim",
        _ => "malformed token",
    }
}

/// The usable keys of a JWKS document: public keys for signatures with an accepted
/// algorithm. A key that cannot be used (an unknown type or algorithm, a symmetric key, bad
/// encoding) is skipped with a warning, so one odd key of a provider does not refuse the
/// others; a document without any usable key is refused.
pub(super) fn parse_jwks(text: &[u8]) -> Result<Vec<Key>, String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<Value>,
    }
    let document: Document = serde_json::from_slice(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for raw in document.keys {
        let kid = raw.get("kid").and_then(Value::as_str).map(str::to_owned);
        let jwk: Jwk = match serde_json::from_value(raw) {
            Ok(jwk) => jwk,
            Err(error) => {
                tracing::warn!(?kid, %error, "JWKS key skipped: not a key this api can use");
                continue;
            }
        };
        if matches!(jwk.common.public_key_use, Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)) {
            continue;
        }
        let algorithm = match jwk.common.key_algorithm.map(key_algorithm) {
            None => None,
            Some(Some(alg)) => Some(alg),
            Some(None) => continue,
        };
        match DecodingKey::from_jwk(&jwk) {
            Ok(decoding) if decoding.family() != jsonwebtoken::AlgorithmFamily::Hmac => {
                keys.push(Key { kid, any_kid: false, algorithm, decoding })
            }
            Ok(_) => tracing::warn!(?kid, "JWKS key skipped: symmetric keys are not taken from a JWKS file (use JWT_SECRET)"),
            Err(error) => tracing::warn!(?kid, %error, "JWKS key skipped: cannot be decoded"),
        }
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

/// Re-reads the JWKS file every `every`; a changed, usable document replaces the keys, and
/// with them the tokens verified with the old ones. `loaded` is the text the keys came from.
async fn watch_jwks(path: PathBuf, loaded: Vec<u8>, keys: Arc<RwLock<Arc<KeySet>>>, every: Duration) {
    let mut seen = Some(loaded);
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
                    *current = KeySet::new(new);
                }
            }
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "the JWKS file changed but cannot be used; keeping the keys in use")
            }
        }
        seen = Some(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs256(secret: &[u8], claims: serde_json::Value) -> String {
        jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &jsonwebtoken::EncodingKey::from_secret(secret))
            .unwrap()
    }

    #[test]
    fn a_remembered_token_still_expires_and_a_future_one_waits() {
        let secret = [7u8; 32];
        let settings = JwtSettings { leeway: Duration::ZERO, ..JwtSettings::new(JwtKeys::Secret(secret.to_vec())) };
        let verifier = JwtVerifier::start(&settings, Duration::from_secs(60)).unwrap();
        let now = jsonwebtoken::get_current_timestamp();
        let short = hs256(&secret, serde_json::json!({"sub": "alice", "exp": now + 1}));
        assert_eq!(verifier.user(&short), Ok("alice".into()));
        assert_eq!(verifier.user(&short), Ok("alice".into()), "from memory");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while verifier.user(&short).is_ok() {
            assert!(std::time::Instant::now() < deadline, "a remembered token outlived its exp");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(verifier.user(&short), Err("token expired"));
        let later = hs256(&secret, serde_json::json!({"sub": "bob", "exp": now + 600, "nbf": now + 300}));
        assert_eq!(verifier.user(&later), Err("token not yet valid"));
        let forged = hs256(&[8u8; 32], serde_json::json!({"sub": "alice", "exp": now + 600}));
        assert_eq!(verifier.user(&forged), Err("bad signature"));
    }
}
