//! Kafka: where the brokers are, the settings every client shares, and topic admin. The
//! api's producer and the consumer's group client are built on `client_config` in the
//! service crate.

mod admin;

use rdkafka::config::ClientConfig;

pub use admin::{parse_topic_configs, TopicAdmin, TopicOutcome};
pub use rdkafka::error::KafkaError;

/// Where the brokers are.
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    /// Bootstrap servers, comma separated.
    pub bootstrap_servers: String,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self { bootstrap_servers: "127.0.0.1:9092".into() }
    }
}

impl KafkaSettings {
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self { bootstrap_servers: bootstrap_servers.into() }
    }

    /// Settings shared by every client: brokers, socket timeout, reconnect backoff.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers).set("socket.timeout.ms", "5000").set("reconnect.backoff.max.ms", "2000");
        config
    }

    pub fn admin(&self) -> Result<TopicAdmin, KafkaError> {
        TopicAdmin::new(&self.client_config())
    }
}
