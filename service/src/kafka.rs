//! Kafka clients: the idempotent producer, the manually committing consumer and topic admin.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::producer::CouponProducer;

/// Settings shared by every client: where the brokers are.
#[derive(Clone, Debug)]
pub struct KafkaSettings {
    pub bootstrap_servers: String,
    /// How long the producer may try to deliver one record before the apply answers 503.
    pub produce_timeout: Duration,
}

impl KafkaSettings {
    fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers).set("socket.timeout.ms", "5000").set("reconnect.backoff.max.ms", "2000");
        config
    }

    /// Idempotent producer with `acks=all`: a retried send never duplicates a record, and a
    /// 201 means every in-sync replica has it.
    pub fn producer(&self) -> Result<CouponProducer, KafkaError> {
        let timeout_ms = self.produce_timeout.as_millis().max(1).to_string();
        let mut config = self.base();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", &timeout_ms)
            .set("request.timeout.ms", &timeout_ms);
        CouponProducer::new(&config)
    }

    /// Consumer that never commits by itself: offsets are committed only after the SQL
    /// transaction holding the records has committed. `assigned` follows the number of
    /// partitions the group gave it.
    pub fn consumer(&self, group_id: &str, assigned: Arc<AtomicUsize>) -> Result<StreamConsumer<ConsumerEvents>, KafkaError> {
        self.base()
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("fetch.wait.max.ms", "50")
            .create_with_context(ConsumerEvents { assigned })
    }

    pub fn admin(&self) -> Result<TopicAdmin, KafkaError> {
        Ok(TopicAdmin { client: self.base().create()? })
    }
}

/// Logs the consumer group's rebalances and keeps the assigned partition count: useful to
/// operators, and lets a caller wait until a new consumer has joined (not part of readiness,
/// since a replica beyond the partition count rightly holds none).
pub struct ConsumerEvents {
    assigned: Arc<AtomicUsize>,
}

impl ClientContext for ConsumerEvents {}

impl ConsumerContext for ConsumerEvents {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                self.assigned.store(partitions.count(), Ordering::Relaxed);
                tracing::info!(partitions = partitions.count(), "partitions assigned");
            }
            Rebalance::Revoke(partitions) => {
                self.assigned.store(0, Ordering::Relaxed);
                tracing::info!(partitions = partitions.count(), "partitions revoked");
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance failed"),
        }
    }
}

/// What `ensure_topic` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    AlreadyExists,
}

/// Creates and deletes topics through the Kafka admin API.
pub struct TopicAdmin {
    client: AdminClient<DefaultClientContext>,
}

impl TopicAdmin {
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

    /// Partition count of a topic, `None` if the broker does not know it.
    pub fn partitions(&self, topic: &str, timeout: Duration) -> Result<Option<usize>, KafkaError> {
        let metadata = self.client.inner().fetch_metadata(Some(topic), timeout)?;
        Ok(metadata.topics().iter().find(|t| t.name() == topic && t.error().is_none()).map(|t| t.partitions().len()))
    }
}
