//! Who is asking: the api's identity modes (`AUTH_MODE`).
//!
//! - `jwt`: the user is the claim `JWT_USER_CLAIM` (default `sub`) of a bearer token the
//!   shop's identity provider signed (HS256 with a shared secret, or RS*/PS*/ES* with the
//!   public keys of a JWKS file or of the provider's JWKS URL). See [`jwt`], [`jwks_url`].
//! - `header`: the user is the value of a header (`AUTH_HEADER`, default `X-User-Id`) that a
//!   gateway in front of the api sets after authenticating the caller. Safe only when nothing
//!   reaches the api except through that gateway, and the gateway drops the header from what
//!   clients send.
//! - `open`: the user is whatever the body's `userId` says. For local runs and the demo only:
//!   anyone can apply as anyone.
//!
//! A missing or invalid identity is answered `401 {"status":"unauthorized"}` with a
//! `WWW-Authenticate` header saying why, before anything touches Redis.

pub mod jwks_url;
pub mod jwt;

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use coupon_core::event::validate_user_id;

pub use jwks_url::JwksUrl;
pub use jwt::{JwtKeys, JwtSettings, JwtVerifier};

/// How the api learns who the user is.
#[derive(Clone, Debug, Default)]
pub enum AuthSettings {
    /// The body's `userId`, unproven.
    #[default]
    Open,
    /// A header set by a trusted gateway.
    Header { header: HeaderName },
    /// A signed bearer token.
    Jwt(JwtSettings),
}

/// Settings that cannot work, found at start.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Settings(String),
    #[error("JWT key material: {0}")]
    Keys(String),
}

/// Who the request says the user is, once checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// Proven by a token or the gateway's header.
    Proven(String),
    /// `open` mode: the body names the user.
    FromBody,
}

/// Why a request has no acceptable identity. `reason` is a fixed phrase (never a claim's
/// value), put in the `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: &'static str,
    /// Whether any credentials were sent: a request without any is told only the scheme
    /// (RFC 6750, section 3.1).
    pub credentials_sent: bool,
    scheme: Scheme,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Scheme {
    Bearer,
    Header(HeaderName),
}

impl Rejection {
    /// Not a refusal of the credentials: the keys that may verify them are being fetched
    /// (`jwt::KEYS_BUSY`). Answered 503 with `Retry-After`, not 401.
    pub fn retry_later(&self) -> bool {
        self.reason == jwt::KEYS_BUSY
    }

    /// The `WWW-Authenticate` value.
    pub fn challenge(&self) -> HeaderValue {
        let text = match (&self.scheme, self.credentials_sent) {
            (Scheme::Bearer, false) => r#"Bearer realm="coupons""#.to_owned(),
            (Scheme::Bearer, true) => format!(r#"Bearer realm="coupons", error="invalid_token", error_description="{}""#, self.reason),
            (Scheme::Header(name), _) => format!(r#"Gateway realm="coupons", header="{name}", error_description="{}""#, self.reason),
        };
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(r#"Bearer realm="coupons""#))
    }
}

/// The api's identity check, built once at start.
pub enum Authenticator {
    Open,
    Header(HeaderName),
    Jwt(JwtVerifier),
}

impl Authenticator {
    /// Checks the settings and loads key material; with a JWKS file, also starts watching it.
    pub fn start(settings: &AuthSettings) -> Result<Self, AuthError> {
        Ok(match settings {
            AuthSettings::Open => Self::Open,
            AuthSettings::Header { header } => Self::Header(header.clone()),
            AuthSettings::Jwt(jwt) => Self::Jwt(JwtVerifier::start(jwt, JWKS_RELOAD_INTERVAL)?),
        })
    }

    /// With a JWKS URL: turns true once the first key set is fetched (the api is not ready
    /// before). `None`: nothing to wait for.
    pub fn loaded(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        match self {
            Self::Jwt(verifier) => verifier.loaded(),
            _ => None,
        }
    }

    /// The user the request is from. Work per request: one header read, and with `jwt` one
    /// signature check for a token not verified before (and, with a JWKS URL, for a key id
    /// the set lacks, a wait for the one fetch of the set that a crowd shares).
    pub async fn identify(&self, headers: &HeaderMap) -> Result<Identity, Rejection> {
        match self {
            Self::Open => Ok(Identity::FromBody),
            Self::Header(name) => {
                let reject = |reason, credentials_sent| Rejection { reason, credentials_sent, scheme: Scheme::Header(name.clone()) };
                let mut values = headers.get_all(name).iter();
                let value = values.next().ok_or_else(|| reject("missing identity header", false))?;
                if values.next().is_some() {
                    return Err(reject("identity header given more than once", true));
                }
                let user = value.to_str().map_err(|_| reject("identity header is not text", true))?;
                validate_user_id(user).map_err(|_| reject("identity header is not a valid user id", true))?;
                Ok(Identity::Proven(user.to_owned()))
            }
            Self::Jwt(verifier) => {
                let reject = |reason, credentials_sent| Rejection { reason, credentials_sent, scheme: Scheme::Bearer };
                let mut values = headers.get_all(axum::http::header::AUTHORIZATION).iter();
                let value = values.next().ok_or_else(|| reject("missing bearer token", false))?;
                if values.next().is_some() {
                    return Err(reject("authorization given more than once", true));
                }
                let token = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.split_once(' '))
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, token)| token.trim())
                    .ok_or_else(|| reject("not a bearer token", true))?;
                verifier.user_fetching_new_keys(token).await.map(Identity::Proven).map_err(|reason| reject(reason, true))
            }
        }
    }

    /// The mode's name, for logs.
    pub fn mode(&self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Header(_) => "header",
            Self::Jwt(_) => "jwt",
        }
    }
}

/// How often the JWKS file is read again to pick up rotated keys (a mounted Secret changes
/// within a minute of its update; this adds at most this much).
pub const JWKS_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[tokio::test]
    async fn open_mode_leaves_the_user_to_the_body() {
        assert_eq!(Authenticator::Open.identify(&headers(&[("x-user-id", "mallory")])).await, Ok(Identity::FromBody));
    }

    #[tokio::test]
    async fn header_mode_honours_only_its_header_once_and_valid() {
        let auth = Authenticator::Header(HeaderName::from_static("x-shop-user"));
        assert_eq!(auth.identify(&headers(&[("X-Shop-User", "alice")])).await, Ok(Identity::Proven("alice".into())));
        let missing = auth.identify(&headers(&[("x-user-id", "alice"), ("authorization", "Bearer x")])).await.unwrap_err();
        assert_eq!(missing.reason, "missing identity header");
        assert_eq!(missing.challenge(), r#"Gateway realm="coupons", header="x-shop-user", error_description="missing identity header""#);
        assert_eq!(
            auth.identify(&headers(&[("x-shop-user", "a"), ("x-shop-user", "b")])).await.unwrap_err().reason,
            "identity header given more than once"
        );
        assert_eq!(auth.identify(&headers(&[("x-shop-user", "")])).await.unwrap_err().reason, "identity header is not a valid user id");
        let long = "u".repeat(129);
        assert_eq!(auth.identify(&headers(&[("x-shop-user", &long)])).await.unwrap_err().reason, "identity header is not a valid user id");
    }
}
