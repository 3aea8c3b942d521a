//! Creating and deleting topics through the Kafka admin API.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// What `ensure_topic` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    AlreadyExists,
}

/// What a metadata lookup says about a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicLookup {
    Exists,
    Missing,
}

impl TopicLookup {
    /// A topic's entry in a metadata answer. Not being allowed to describe a topic counts as
    /// its existing: a principal with Write but not Describe or Create (topics pre-created by
    /// Strimzi's `KafkaTopic`, on MSK or Confluent Cloud) could not create it either, and the
    /// producers' own errors will say if it is really missing.
    pub fn from_metadata_error(error: Option<RDKafkaErrorCode>) -> Result<Self, RDKafkaErrorCode> {
        match error {
            None | Some(RDKafkaErrorCode::TopicAuthorizationFailed) => Ok(Self::Exists),
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) | Some(RDKafkaErrorCode::UnknownTopic) => Ok(Self::Missing),
            // Leader elections and the like: the topic is there, the answer will settle.
            Some(RDKafkaErrorCode::LeaderNotAvailable) => Ok(Self::Exists),
            Some(other) => Err(other),
        }
    }
}

/// Creates and deletes topics.
pub struct TopicAdmin {
    /// Shared with the blocking metadata lookups.
    client: std::sync::Arc<AdminClient<DefaultClientContext>>,
    /// Configuration every topic this admin creates gets (`retention.ms`,
    /// `min.insync.replicas`, ...), by Kafka's own names.
    topic_configs: Vec<(String, String)>,
}

/// Parses `name=value` pairs separated by commas (`TOPIC_CONFIG`), as Kafka names topic
/// configurations; an empty string is none.
pub fn parse_topic_configs(text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((name, value)) if !name.trim().is_empty() => Ok((name.trim().to_owned(), value.trim().to_owned())),
            _ => Err(format!("topic configuration {pair:?} is not name=value")),
        })
        .collect()
}

impl TopicAdmin {
    pub(super) fn new(config: &ClientConfig) -> Result<Self, KafkaError> {
        // A metadata request of a producer-type client (which the admin client is) may create
        // a missing topic with the broker's defaults; a lookup must never do that.
        let mut config = config.clone();
        config.set("allow.auto.create.topics", "false");
        Ok(Self { client: std::sync::Arc::new(config.create()?), topic_configs: Vec::new() })
    }

    /// Topics created from now on get these configurations.
    pub fn with_topic_configs(mut self, configs: Vec<(String, String)>) -> Self {
        self.topic_configs = configs;
        self
    }

    fn options() -> AdminOptions {
        AdminOptions::new().request_timeout(Some(Duration::from_secs(10))).operation_timeout(Some(Duration::from_secs(10)))
    }

    /// Creates the topic unless it exists; an existing topic is left as it is. Looked up
    /// first, so that an existing topic needs no Create right (see `TopicLookup`).
    pub async fn ensure_topic(&self, topic: &str, partitions: i32, replication: i32) -> Result<TopicOutcome, KafkaError> {
        // A topic created a moment ago may not be in every broker's metadata yet: "missing"
        // is asked again before anything is created.
        for attempt in 0..3 {
            if self.lookup(topic).await? == TopicLookup::Exists {
                return Ok(TopicOutcome::AlreadyExists);
            }
            if attempt < 2 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        tracing::debug!(topic, "not found by its metadata; creating it");
        let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
        for (name, value) in &self.topic_configs {
            new_topic = new_topic.set(name, value);
        }
        let results = self.client.create_topics([&new_topic], &Self::options()).await?;
        match results.into_iter().next() {
            Some(Ok(_)) => Ok(TopicOutcome::Created),
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(TopicOutcome::AlreadyExists),
            Some(Err((_, code))) => Err(KafkaError::AdminOp(code)),
            None => Err(KafkaError::AdminOpCreation("no result for CreateTopics".into())),
        }
    }

    /// Deletes the topic; a topic that is already gone is not an error.
    pub async fn delete_topic(&self, topic: &str) -> Result<(), KafkaError> {
        let results = self.client.delete_topics(&[topic], &Self::options()).await?;
        match results.into_iter().next() {
            Some(Ok(_)) | Some(Err((_, RDKafkaErrorCode::UnknownTopicOrPartition))) | None => Ok(()),
            Some(Err((_, code))) => Err(KafkaError::AdminOp(code)),
        }
    }

    /// A topic's configuration value as the broker reports it (`None`: not set or unknown).
    pub async fn topic_config(&self, topic: &str, name: &str) -> Result<Option<String>, KafkaError> {
        let results = self.client.describe_configs([&rdkafka::admin::ResourceSpecifier::Topic(topic)], &Self::options()).await?;
        let Some(Ok(resource)) = results.into_iter().next() else { return Ok(None) };
        Ok(resource.get(name).and_then(|entry| entry.value.clone()))
    }

    /// Whether the topic exists, from a metadata request for it alone (which never creates
    /// it: the admin client is configured with `allow.auto.create.topics=false`).
    pub async fn lookup(&self, topic: &str) -> Result<TopicLookup, KafkaError> {
        let client = self.client.clone();
        let name = topic.to_owned();
        let metadata = tokio::task::spawn_blocking(move || client.inner().fetch_metadata(Some(&name), Duration::from_secs(10)))
            .await
            .map_err(|error| KafkaError::AdminOpCreation(format!("topic lookup: {error}")))??;
        let entry = metadata.topics().iter().find(|t| t.name() == topic).map(|t| t.error().map(RDKafkaErrorCode::from));
        let Some(error) = entry else { return Ok(TopicLookup::Missing) };
        TopicLookup::from_metadata_error(error).map_err(KafkaError::MetadataFetch)
    }

    /// Partition count of a topic, `None` if the broker does not know it. Blocking.
    pub fn partitions(&self, topic: &str, timeout: Duration) -> Result<Option<usize>, KafkaError> {
        let metadata = self.client.inner().fetch_metadata(Some(topic), timeout)?;
        Ok(metadata.topics().iter().find(|t| t.name() == topic && t.error().is_none()).map(|t| t.partitions().len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_the_principal_may_not_describe_counts_as_existing() {
        assert_eq!(TopicLookup::from_metadata_error(None), Ok(TopicLookup::Exists));
        assert_eq!(TopicLookup::from_metadata_error(Some(RDKafkaErrorCode::TopicAuthorizationFailed)), Ok(TopicLookup::Exists));
        assert_eq!(TopicLookup::from_metadata_error(Some(RDKafkaErrorCode::UnknownTopicOrPartition)), Ok(TopicLookup::Missing));
        assert!(TopicLookup::from_metadata_error(Some(RDKafkaErrorCode::BrokerNotAvailable)).is_err());
    }

    #[test]
    fn topic_configs_are_name_value_pairs() {
        assert_eq!(parse_topic_configs("").unwrap(), vec![]);
        assert_eq!(
            parse_topic_configs("retention.ms=86400000, min.insync.replicas=2").unwrap(),
            vec![("retention.ms".into(), "86400000".into()), ("min.insync.replicas".into(), "2".into())]
        );
        assert!(parse_topic_configs("retention.ms").is_err());
        assert!(parse_topic_configs("=2").is_err());
    }
}
