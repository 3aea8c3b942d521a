//! Event identity: an event is named the way Kubernetes names its `CouponEvent` object,
//! `<namespace>/<name>`. The same string is the event of a Kafka record and of a SQL row, and
//! the hash tag of the event's Redis keys (see `crate::redis::keyspace`).

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

/// Longest event key: the width of SQL's `event` columns.
pub const MAX_KEY_LEN: usize = 320;
/// Longest incarnation: a Kubernetes UID (36 characters) and an occurrence (`-o` and up to
/// ten digits of seconds since the epoch, which lasts until the year 2286).
const MAX_INCARNATION_LEN: usize = 48;

/// The incarnation of one occurrence of a recurring event: the object's (a UID, or none for
/// an event made without Kubernetes) with `-o<start in seconds since the epoch>` after it,
/// as `<uid>-o1765188000` or `o1765188000`. Each occurrence is so its own sale with its own
/// rows (a user may win once per occurrence), and every part of the system that keys by the
/// incarnation keeps occurrences apart without knowing of them. A UID is hexadecimal, so the
/// suffix can never be mistaken for part of one.
pub fn occurrence_incarnation(base: Option<&str>, occurrence: i64) -> String {
    match base {
        Some(base) => format!("{base}-o{occurrence}"),
        None => format!("o{occurrence}"),
    }
}

/// The object's incarnation and the occurrence of an incarnation `occurrence_incarnation`
/// made; an incarnation without an occurrence is returned whole.
pub fn split_occurrence(incarnation: &str) -> (Option<&str>, Option<i64>) {
    let (base, suffix) = match incarnation.rsplit_once("-o") {
        Some((base, suffix)) => (Some(base), suffix),
        None => (None, incarnation.strip_prefix('o').unwrap_or("")),
    };
    match suffix.parse::<i64>() {
        Ok(occurrence) if !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()) => (base, Some(occurrence)),
        _ => (Some(incarnation), None),
    }
}

/// What SQL rows and Kafka records name an event by: its id and, for an event the operator
/// manages, the UID of its `CouponEvent` object, as `<namespace>/<name>@<uid>`. A name that is
/// deleted and created again is a new object with a new UID, so its rows never collide with
/// the old ones, which stay readable under their own key. Events made without Kubernetes
/// (`coupon-service event create`) have no incarnation: their key is their id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKey {
    id: EventId,
    incarnation: Option<String>,
}

/// Why a string is not a valid event key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventKeyError {
    #[error(transparent)]
    Id(#[from] EventIdError),
    #[error("event incarnation must be 1..={MAX_INCARNATION_LEN} of [a-z0-9-]")]
    Incarnation,
    #[error("event key must be at most {MAX_KEY_LEN} characters (event names of operator-managed events: at most 200)")]
    TooLong,
}

impl EventKey {
    pub fn new(id: EventId, incarnation: Option<&str>) -> Result<Self, EventKeyError> {
        if let Some(incarnation) = incarnation {
            let valid = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
            if incarnation.is_empty() || incarnation.len() > MAX_INCARNATION_LEN || !incarnation.bytes().all(valid) {
                return Err(EventKeyError::Incarnation);
            }
        }
        let key = Self { id, incarnation: incarnation.map(str::to_owned) };
        if key.to_string().len() > MAX_KEY_LEN {
            return Err(EventKeyError::TooLong);
        }
        Ok(key)
    }

    pub fn id(&self) -> &EventId {
        &self.id
    }

    pub fn incarnation(&self) -> Option<&str> {
        self.incarnation.as_deref()
    }

    /// The occurrence of a recurring event this key names (its start, in seconds since the
    /// epoch), if any.
    pub fn occurrence(&self) -> Option<i64> {
        self.incarnation.as_deref().and_then(|i| split_occurrence(i).1)
    }
}

impl fmt::Display for EventKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.incarnation {
            Some(incarnation) => write!(f, "{}@{incarnation}", self.id),
            None => write!(f, "{}", self.id),
        }
    }
}

impl FromStr for EventKey {
    type Err = EventKeyError;

    /// Parses `<namespace>/<name>` or `<namespace>/<name>@<incarnation>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('@') {
            Some((id, incarnation)) => Self::new(id.parse()?, Some(incarnation)),
            None => Self::new(s.parse()?, None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occurrences_ride_in_the_incarnation() {
        let uid = "5f0c2d4e-8a1b-4c3d-9e2f-0a1b2c3d4e5f";
        let with_uid = occurrence_incarnation(Some(uid), 1_765_188_000);
        assert_eq!(with_uid, format!("{uid}-o1765188000"));
        assert_eq!(split_occurrence(&with_uid), (Some(uid), Some(1_765_188_000)));
        assert_eq!(split_occurrence("o1765188000"), (None, Some(1_765_188_000)));
        assert_eq!(split_occurrence(uid), (Some(uid), None), "a UID alone is no occurrence");
        for plain in ["o", "-o", "x-o", "oo1", "a-o1x", "o-1"] {
            assert_eq!(split_occurrence(plain), (Some(plain), None), "{plain}");
        }
        let key: EventKey = format!("shop/sale@{with_uid}").parse().unwrap();
        assert_eq!(key.occurrence(), Some(1_765_188_000));
        assert_eq!("shop/sale@o1765188000".parse::<EventKey>().unwrap().occurrence(), Some(1_765_188_000));
        assert_eq!(format!("shop/sale@{uid}").parse::<EventKey>().unwrap().occurrence(), None);
    }

    #[test]
    fn keys_carry_the_incarnation_when_there_is_one() {
        let plain: EventKey = "shop/sale".parse().unwrap();
        assert_eq!((plain.id().to_string(), plain.incarnation()), ("shop/sale".into(), None));
        assert_eq!(plain.to_string(), "shop/sale");
        let uid = "5f0c2d4e-8a1b-4c3d-9e2f-0a1b2c3d4e5f";
        let again: EventKey = format!("shop/sale@{uid}").parse().unwrap();
        assert_eq!(again.incarnation(), Some(uid));
        assert_eq!(again.to_string(), format!("shop/sale@{uid}"));
        assert_ne!(plain, again);
        assert_eq!("shop/sale@".parse::<EventKey>(), Err(EventKeyError::Incarnation));
        assert_eq!("shop/sale@A".parse::<EventKey>(), Err(EventKeyError::Incarnation));
        assert_eq!("shop/sale@a@b".parse::<EventKey>(), Err(EventKeyError::Incarnation));
        assert!(EventKey::new(EventId::new("shop", &"a".repeat(200)).unwrap(), Some(uid)).is_ok());
        let long = EventId::new(&"n".repeat(63), &"a".repeat(253)).unwrap();
        assert_eq!(EventKey::new(long.clone(), Some(uid)), Err(EventKeyError::TooLong));
        assert!(EventKey::new(long, None).is_ok(), "every id fits without an incarnation");
        // The longest key the operator makes: a namespace of 63, a name of 200, a UID and an
        // occurrence.
        let longest = EventId::new(&"n".repeat(63), &"a".repeat(200)).unwrap();
        let key = EventKey::new(longest, Some(&occurrence_incarnation(Some(uid), 9_999_999_999))).unwrap();
        assert_eq!(key.occurrence(), Some(9_999_999_999));
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
