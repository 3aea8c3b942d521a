//! Client properties a deployment adds to every Kafka client: TLS, SASL and tuning, named as
//! librdkafka names them, so that its documentation is ours (`security.protocol`,
//! `ssl.ca.location`, `sasl.mechanism`, ...).
//!
//! They come from two places, the later winning:
//! 1. a properties file named by `KAFKA_PROPERTIES_FILE` (Java's properties format, read by
//!    the `java-properties` crate: `name=value` lines, `#` comments), which is how a whole
//!    client configuration is mounted from a Secret;
//! 2. variables `KAFKA_<PROPERTY>`: `KAFKA_SECURITY_PROTOCOL=SASL_SSL` sets
//!    `security.protocol` (upper case, `_` for `.`); `KAFKA_<PROPERTY>_FILE` reads the value
//!    from a file instead (a password from a mounted Secret).
//!
//! Properties the components set for their own correctness (idempotence, acks, the group,
//! offsets) are refused instead of being silently overridden either way; every other one is
//! handed to librdkafka's own configuration at start, so a name it does not know or a value
//! it does not take stops the process then, in librdkafka's words, instead of at the first
//! client.

use std::collections::BTreeMap;
use std::fmt;

/// Names the project itself uses under the `KAFKA_` prefix; they are not client properties.
const OWN_VARIABLES: &[&str] = &["KAFKA_BROKERS", "KAFKA_BROKERS_FILE", "KAFKA_PROPERTIES_FILE"];

/// The variable naming the properties file.
pub const PROPERTIES_FILE_VARIABLE: &str = "KAFKA_PROPERTIES_FILE";

/// Properties the api's producer, the consumer and the admin client set themselves: what
/// exactly-once delivery and the group's offsets depend on. `bootstrap.servers` comes from
/// `KAFKA_BROKERS`.
pub const RESERVED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "enable.idempotence",
    "acks",
    "linger.ms",
    "message.timeout.ms",
    "request.timeout.ms",
    "transactional.id",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "isolation.level",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "fetch.wait.max.ms",
    "topic.metadata.refresh.interval.ms",
    "group.instance.id",
    // librdkafka's other names for the ones above: refused too, or which of two names wins
    // would depend on the order the client applies them in.
    "metadata.broker.list",
    "request.required.acks",
    "queue.buffering.max.ms",
    "delivery.timeout.ms",
    "auto.commit.enable",
];

/// Why the deployment's properties cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PropertyError {
    #[error("{source_name}: cannot read {path}: {reason}")]
    File { source_name: String, path: String, reason: String },
    #[error("{source_name}: {reason}")]
    Malformed { source_name: String, reason: String },
    #[error("{source_name}: librdkafka does not take `{property}`: {reason}")]
    Refused { source_name: String, property: String, reason: String },
    #[error("{source_name}: `{property}` is set by the service itself and cannot be configured")]
    Reserved { source_name: String, property: String },
}

/// Extra librdkafka properties, in the order of their names. `Debug` hides the values of
/// credentials.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientProperties(BTreeMap<String, String>);

impl ClientProperties {
    /// The properties of the process's environment.
    pub fn from_env() -> Result<Self, PropertyError> {
        Self::from_variables(std::env::vars())
    }

    /// The properties the given variables describe (see the module documentation).
    pub fn from_variables(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, PropertyError> {
        let vars: BTreeMap<String, String> = vars.into_iter().filter(|(name, _)| name.starts_with("KAFKA_")).collect();
        let mut properties = BTreeMap::new();
        if let Some(path) = vars.get(PROPERTIES_FILE_VARIABLE) {
            let text = read(PROPERTIES_FILE_VARIABLE, path)?;
            for (property, value) in parse_properties(PROPERTIES_FILE_VARIABLE, &text)? {
                properties.insert(property, value);
            }
        }
        for (name, value) in &vars {
            if OWN_VARIABLES.contains(&name.as_str()) || is_service_link(name) {
                continue;
            }
            let (stem, value) = match name.strip_suffix("_FILE") {
                Some(stem) => (stem, read(name, value)?.trim_end_matches(['\r', '\n']).to_owned()),
                None => (name.as_str(), value.clone()),
            };
            let property = stem["KAFKA_".len()..].to_ascii_lowercase().replace('_', ".");
            properties.insert(property, value);
        }
        for (property, value) in &properties {
            if RESERVED_PROPERTIES.contains(&property.as_str()) {
                return Err(PropertyError::Reserved { source_name: source_of(property, &vars), property: property.clone() });
            }
            check_with_librdkafka(property, value).map_err(|reason| PropertyError::Refused {
                source_name: source_of(property, &vars),
                property: shown_name(property),
                // librdkafka repeats the name in its words.
                reason: reason.replace(property.as_str(), &shown_name(property)),
            })?;
        }
        Ok(Self(properties))
    }

    /// Adds one property (tests, or a caller with its own configuration source).
    pub fn with(mut self, property: &str, value: &str) -> Self {
        self.0.insert(property.to_owned(), value.to_owned());
        self
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn get(&self, property: &str) -> Option<&str> {
        self.0.get(property).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ClientProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (property, value) in &self.0 {
            if is_credential(property) {
                map.entry(property, &"***");
            } else {
                map.entry(property, value);
            }
        }
        map.finish()
    }
}

/// Variables Kubernetes adds to every container for each Service of its namespace (unless
/// the pod sets `enableServiceLinks: false`): a Service named `kafka` gives `KAFKA_PORT`,
/// `KAFKA_SERVICE_HOST`, `KAFKA_PORT_9092_TCP_ADDR`, ... No librdkafka property has a `port`
/// or `service.host` component, so these are never client properties.
fn is_service_link(name: &str) -> bool {
    name.ends_with("_SERVICE_HOST") || name.contains("_SERVICE_PORT") || name.ends_with("_PORT") || name.contains("_PORT_")
}

/// Properties whose values must not reach a log: passwords, keys, token settings.
fn is_credential(property: &str) -> bool {
    ["password", "secret", "key", "sasl.oauthbearer.config", "sasl.oauthbearer.extensions", "sasl.username", "jaas"]
        .iter()
        .any(|word| property.contains(word))
        && !property.ends_with(".location")
}

/// A properties file in Java's format (what Kafka's own clients read), in UTF-8 (as Java
/// reads it since 9): `\` escapes the next character (a backslash in a value is `\\`), a
/// line ending in `\` continues on the next, and `=`, `:` or a space separate a name from
/// its value.
fn parse_properties(source_name: &str, text: &str) -> Result<std::collections::HashMap<String, String>, PropertyError> {
    let mut properties = std::collections::HashMap::new();
    java_properties::PropertiesIter::new_with_encoding(text.as_bytes(), encoding_rs::UTF_8)
        .read_into(|name, value| {
            properties.insert(name, value);
        })
        .map_err(|error| PropertyError::Malformed { source_name: source_name.to_owned(), reason: error.to_string() })?;
    Ok(properties)
}

/// A property's name as an error may show it: one that is not a property's shape (a line of
/// a pasted key or password read as a name) is not repeated.
fn shown_name(property: &str) -> String {
    let shaped = !property.is_empty()
        && property.len() <= 64
        && property.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if shaped {
        property.to_owned()
    } else {
        format!("(a name of {} characters that is no property's, not shown)", property.chars().count())
    }
}

/// Whether librdkafka takes `property` with `value` (a known name, a value of its type and
/// range); its description when not. The value never appears in the answer: it may be a
/// password.
fn check_with_librdkafka(property: &str, value: &str) -> Result<(), String> {
    let mut config = rdkafka::config::ClientConfig::new();
    config.set(property, value);
    match config.create_native_config() {
        Ok(_) => Ok(()),
        Err(rdkafka::error::KafkaError::ClientConfig(_, description, _, _)) => Err(description),
        Err(other) => Err(other.to_string()),
    }
}

fn read(source_name: &str, path: &str) -> Result<String, PropertyError> {
    std::fs::read_to_string(path).map_err(|error| PropertyError::File {
        source_name: source_name.to_owned(),
        path: path.to_owned(),
        reason: error.to_string(),
    })
}

/// Which setting a refused property came from, for the error message.
fn source_of(property: &str, vars: &BTreeMap<String, String>) -> String {
    let variable = format!("KAFKA_{}", property.to_ascii_uppercase().replace('.', "_"));
    if vars.contains_key(&variable) || vars.contains_key(&format!("{variable}_FILE")) {
        variable
    } else {
        PROPERTIES_FILE_VARIABLE.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn temp_file(name: &str, text: &str) -> String {
        let dir = std::env::temp_dir().join(format!("coupon-kafka-props-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    #[test]
    fn variables_name_librdkafka_properties() {
        let props = ClientProperties::from_variables(vars(&[
            ("KAFKA_BROKERS", "b:9093"),
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("KAFKA_SSL_CA_LOCATION", "/etc/kafka/ca.crt"),
            ("REDIS_URL", "redis://x"),
        ]))
        .unwrap();
        let all: Vec<_> = props.iter().collect();
        assert_eq!(all, [("sasl.mechanism", "SCRAM-SHA-512"), ("security.protocol", "SASL_SSL"), ("ssl.ca.location", "/etc/kafka/ca.crt")]);
    }

    #[test]
    fn a_file_and_file_variables_carry_secrets_and_variables_win() {
        let file = temp_file(
            "client.properties",
            "# from a Secret\nsecurity.protocol=SASL_PLAINTEXT\n\nsasl.mechanism = PLAIN\nsasl.username=shöp\\\\1\n! another comment\n",
        );
        let password = temp_file("password", "s3cret=\n");
        let props = ClientProperties::from_variables(vars(&[
            ("KAFKA_PROPERTIES_FILE", &file),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
            ("KAFKA_SASL_PASSWORD_FILE", &password),
        ]))
        .unwrap();
        assert_eq!(props.get("security.protocol"), Some("SASL_PLAINTEXT"));
        assert_eq!(props.get("sasl.mechanism"), Some("SCRAM-SHA-256"), "the variable wins over the file");
        assert_eq!(props.get("sasl.username"), Some("shöp\\1"), "UTF-8, and `\\\\` for one backslash");
        assert_eq!(props.get("sasl.password"), Some("s3cret="), "a file value keeps its '=' and loses its newline");
        let shown = format!("{props:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("shöp"), "{shown}");
        assert!(shown.contains("SASL_PLAINTEXT"), "{shown}");
    }

    #[test]
    fn kubernetes_service_links_are_not_properties() {
        let props = ClientProperties::from_variables(vars(&[
            ("KAFKA_PORT", "tcp://10.96.0.12:9092"),
            ("KAFKA_PORT_9092_TCP", "tcp://10.96.0.12:9092"),
            ("KAFKA_PORT_9092_TCP_ADDR", "10.96.0.12"),
            ("KAFKA_SERVICE_HOST", "10.96.0.12"),
            ("KAFKA_SERVICE_PORT", "9092"),
            ("KAFKA_SERVICE_PORT_CLIENTS", "9092"),
            ("KAFKA_BROKER_SERVICE_HOST", "10.96.0.13"),
            ("KAFKA_CLIENT_ID", "coupons"),
        ]))
        .unwrap();
        assert_eq!(props.iter().collect::<Vec<_>>(), [("client.id", "coupons")]);
    }

    #[test]
    fn reserved_malformed_and_missing_are_refused_by_name() {
        assert_eq!(
            ClientProperties::from_variables(vars(&[("KAFKA_ENABLE_IDEMPOTENCE", "false")])),
            Err(PropertyError::Reserved { source_name: "KAFKA_ENABLE_IDEMPOTENCE".into(), property: "enable.idempotence".into() })
        );
        for alias in ["KAFKA_DELIVERY_TIMEOUT_MS", "KAFKA_REQUEST_REQUIRED_ACKS", "KAFKA_METADATA_BROKER_LIST", "KAFKA_GROUP_INSTANCE_ID"] {
            let refused = ClientProperties::from_variables(vars(&[(alias, "1")]));
            assert!(matches!(refused, Err(PropertyError::Reserved { .. })), "{alias}: {refused:?}");
        }
        let file = temp_file("reserved.properties", "group.id=other\n");
        assert_eq!(
            ClientProperties::from_variables(vars(&[("KAFKA_PROPERTIES_FILE", &file)])),
            Err(PropertyError::Reserved { source_name: "KAFKA_PROPERTIES_FILE".into(), property: "group.id".into() })
        );
        // Java's format takes `just words` as `just=words`; librdkafka knows no `just`.
        let file = temp_file("malformed.properties", "security.protocol=SSL\njust words\n");
        let refused = ClientProperties::from_variables(vars(&[("KAFKA_PROPERTIES_FILE", &file)])).unwrap_err();
        assert!(
            matches!(&refused, PropertyError::Refused { source_name, property, .. } if source_name == "KAFKA_PROPERTIES_FILE" && property == "just"),
            "{refused}"
        );
        let typo = ClientProperties::from_variables(vars(&[("KAFKA_SECURITY_PROTOCOL", "SASL_TLS")])).unwrap_err();
        assert!(typo.to_string().starts_with("KAFKA_SECURITY_PROTOCOL: librdkafka does not take `security.protocol`"), "{typo}");
        let secret = ClientProperties::from_variables(vars(&[("KAFKA_SSL_KEY_PASSWORD", "hunter2"), ("KAFKA_SOCKET_TIMEOUT_MS", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(secret.contains("socket.timeout.ms") && !secret.contains("hunter2"), "{secret}");
        // A password pasted on a line of its own reads as a name: never repeated.
        let file = temp_file("pasted.properties", "sasl.password=\nS3cr3t+Pa55/word\n");
        let refused = ClientProperties::from_variables(vars(&[("KAFKA_PROPERTIES_FILE", &file)])).unwrap_err().to_string();
        assert!(!refused.contains("S3cr3t") && refused.contains("not shown"), "{refused}");
        let error = ClientProperties::from_variables(vars(&[("KAFKA_SASL_PASSWORD_FILE", "/nonexistent/pw")])).unwrap_err();
        assert!(error.to_string().contains("KAFKA_SASL_PASSWORD_FILE: cannot read /nonexistent/pw"), "{error}");
    }
}
