//! Kafka: where the brokers are, the settings every client shares, and topic admin. The
//! api's producer and the consumer's group client are built on `client_config` in the
//! service crate.

mod admin;
mod properties;

use rdkafka::config::ClientConfig;

pub use admin::{parse_topic_configs, TopicAdmin, TopicLookup, TopicOutcome};
pub use properties::{ClientProperties, PropertyError, PROPERTIES_FILE_VARIABLE, RESERVED_PROPERTIES};
pub use rdkafka::error::KafkaError;

/// Where the brokers are, and how to talk to them.
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    /// Bootstrap servers, comma separated.
    pub bootstrap_servers: String,
    /// TLS, SASL and tuning properties of the deployment (`KAFKA_<PROPERTY>` variables).
    pub properties: ClientProperties,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self { bootstrap_servers: "127.0.0.1:9092".into(), properties: ClientProperties::default() }
    }
}

impl KafkaSettings {
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self { bootstrap_servers: bootstrap_servers.into(), properties: ClientProperties::default() }
    }

    /// With the properties of the process's environment (`KAFKA_SECURITY_PROTOCOL`, ...).
    pub fn with_env_properties(self) -> Result<Self, PropertyError> {
        Ok(self.with_properties(ClientProperties::from_env()?))
    }

    pub fn with_properties(self, properties: ClientProperties) -> Self {
        Self { properties, ..self }
    }

    /// Settings shared by every client: brokers, socket timeout, reconnect backoff, then the
    /// deployment's properties (which may override the timeouts, never what a component sets
    /// after this for its correctness: those names are refused when the properties are read).
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers).set("socket.timeout.ms", "5000").set("reconnect.backoff.max.ms", "2000");
        for (property, value) in self.properties.iter() {
            config.set(property, value);
        }
        config
    }

    pub fn admin(&self) -> Result<TopicAdmin, KafkaError> {
        TopicAdmin::new(&self.client_config())
    }
}
