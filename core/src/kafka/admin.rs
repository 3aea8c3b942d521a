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

/// Creates and deletes topics.
pub struct TopicAdmin {
    client: AdminClient<DefaultClientContext>,
}

impl TopicAdmin {
    pub(super) fn new(config: &ClientConfig) -> Result<Self, KafkaError> {
        Ok(Self { client: config.create()? })
    }

    fn options() -> AdminOptions {
        AdminOptions::new().request_timeout(Some(Duration::from_secs(10))).operation_timeout(Some(Duration::from_secs(10)))
    }

    /// Creates the topic unless it exists; an existing topic is left as it is.
    pub async fn ensure_topic(&self, topic: &str, partitions: i32, replication: i32) -> Result<TopicOutcome, KafkaError> {
        let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
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

    /// Partition count of a topic, `None` if the broker does not know it. Blocking.
    pub fn partitions(&self, topic: &str, timeout: Duration) -> Result<Option<usize>, KafkaError> {
        let metadata = self.client.inner().fetch_metadata(Some(topic), timeout)?;
        Ok(metadata.topics().iter().find(|t| t.name() == topic && t.error().is_none()).map(|t| t.partitions().len()))
    }
}
