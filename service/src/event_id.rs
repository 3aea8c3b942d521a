//! Event identity and the Redis key layout shared by the api, the consumer and the operator.
//!
//! One event is one Redis hash tag (`{<ns>/<name>}`), so all of its keys live in the same
//! Redis Cluster slot and the gate script can touch them atomically.

use std::fmt;
use std::str::FromStr;

/// Longest Kubernetes object name (DNS-1123 subdomain).
const MAX_NAME_LEN: usize = 253;
/// Longest Kubernetes namespace name (DNS-1123 label).
const MAX_NAMESPACE_LEN: usize = 63;

/// A coupon event, named the way Kubernetes names the `CouponEvent` object: `<namespace>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId {
    namespace: String,
    name: String,
}

/// Why a string is not a valid event name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventIdError {
    #[error("event {what} must be 1..={max} characters")]
    Length { what: &'static str, max: usize },
    #[error("event {what} may contain only lower-case letters, digits, '-' and '.', and must start and end with a letter or digit")]
    Charset { what: &'static str },
    #[error("event id must look like <namespace>/<name>")]
    Shape,
}

fn check_dns_part(value: &str, what: &'static str, max: usize, allow_dot: bool) -> Result<(), EventIdError> {
    if value.is_empty() || value.len() > max {
        return Err(EventIdError::Length { what, max });
    }
    let bytes = value.as_bytes();
    let ok_inner = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (allow_dot && b == b'.');
    let ok_edge = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.iter().all(|&b| ok_inner(b)) || !ok_edge(bytes[0]) || !ok_edge(bytes[bytes.len() - 1]) {
        return Err(EventIdError::Charset { what });
    }
    Ok(())
}

impl EventId {
    /// Validates both parts with Kubernetes' naming rules, so any id accepted here is also a
    /// valid `CouponEvent` and cannot smuggle key separators into Redis.
    pub fn new(namespace: &str, name: &str) -> Result<Self, EventIdError> {
        check_dns_part(namespace, "namespace", MAX_NAMESPACE_LEN, false)?;
        check_dns_part(name, "name", MAX_NAME_LEN, true)?;
        Ok(Self { namespace: namespace.to_owned(), name: name.to_owned() })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Keys of this event. All of them carry the same hash tag.
    pub fn keys(&self) -> EventKeys {
        let prefix = format!("coupon:{{{}/{}}}", self.namespace, self.name);
        EventKeys {
            config: format!("{prefix}:config"),
            count: format!("{prefix}:count"),
            users: format!("{prefix}:users"),
            free: format!("{prefix}:free"),
            persisted: format!("{prefix}:persisted"),
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for EventId {
    type Err = EventIdError;

    /// Parses `<namespace>/<name>` (the form used in Kafka records and SQL rows).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ns, name) = s.split_once('/').ok_or(EventIdError::Shape)?;
        Self::new(ns, name)
    }
}

/// The Redis keys of one event (see DESIGN.md, "Redis layout").
#[derive(Clone, Debug)]
pub struct EventKeys {
    /// Hash: `limit`, `per_user`, `start_ms`, `end_ms`, `topic`.
    pub config: String,
    /// Integer: highest slot handed out so far.
    pub count: String,
    /// Set of users (or hash user -> count when per_user > 1).
    pub users: String,
    /// List of slots released after a failed produce; reused first.
    pub free: String,
    /// Integer: rows the consumer has written.
    pub persisted: String,
}

impl EventKeys {
    pub fn all(&self) -> [&str; 5] {
        [&self.config, &self.count, &self.users, &self.free, &self.persisted]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let id = EventId::new("shop", "black-friday").unwrap();
        for key in id.keys().all() {
            assert!(key.starts_with("coupon:{shop/black-friday}:"), "{key}");
        }
        assert_eq!(id.keys().count, "coupon:{shop/black-friday}:count");
    }

    #[test]
    fn parses_and_prints_namespace_slash_name() {
        let id: EventId = "shop/sale.2026".parse().unwrap();
        assert_eq!(id.namespace(), "shop");
        assert_eq!(id.name(), "sale.2026");
        assert_eq!(id.to_string(), "shop/sale.2026");
    }

    #[test]
    fn rejects_names_kubernetes_would_reject() {
        assert_eq!("noslash".parse::<EventId>(), Err(EventIdError::Shape));
        assert!(EventId::new("shop", "").is_err());
        assert!(EventId::new("shop", "Upper").is_err());
        assert!(EventId::new("shop", "-lead").is_err());
        assert!(EventId::new("shop", "trail-").is_err());
        assert!(EventId::new("shop", "a}b").is_err());
        assert!(EventId::new("shop", "a/b").is_err());
        assert!(EventId::new("sh.op", "a").is_err(), "namespaces have no dots");
        assert!(EventId::new("shop", &"a".repeat(253)).is_ok());
        assert!(EventId::new("shop", &"a".repeat(254)).is_err());
        assert!(EventId::new(&"a".repeat(64), "x").is_err());
    }
}
