//! The api's producer: idempotent, `acks=all`, and a delivery report that says whether a
//! failed record may still have been written. That decides whether its slot may be handed
//! out again: releasing the slot of a record the broker did write would give one slot to two
//! users. An idempotent producer that can no longer produce is replaced here too.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use coupon_core::kafka::KafkaSettings;

use rdkafka::bindings::{rd_kafka_message_status, rd_kafka_msg_status_t};
use rdkafka::client::{Client, ClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;
use tokio::sync::oneshot;

/// How a record ended.
#[derive(Debug)]
pub enum Delivery {
    /// Written by every in-sync replica.
    Acked,
    /// Never written (never sent, or refused): its slot can be released.
    NotPersisted(KafkaError),
    /// Unknown: sent, but no acknowledgement came back in time. It may be on the broker.
    PossiblyPersisted(KafkaError),
}

/// Turns librdkafka's delivery reports into `Delivery` values for waiting requests.
pub struct DeliveryReports;

impl ClientContext for DeliveryReports {}

impl ProducerContext for DeliveryReports {
    type DeliveryOpaque = Box<oneshot::Sender<Delivery>>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiting: Self::DeliveryOpaque) {
        let delivery = match result {
            Ok(_) => Delivery::Acked,
            Err((error, message)) => {
                // SAFETY: the message pointer is valid for the duration of the callback,
                // which is all `rd_kafka_message_status` needs.
                let status = unsafe { rd_kafka_message_status(message.ptr()) };
                match status {
                    rd_kafka_msg_status_t::RD_KAFKA_MSG_STATUS_NOT_PERSISTED => Delivery::NotPersisted(error.clone()),
                    _ => Delivery::PossiblyPersisted(error.clone()),
                }
            }
        };
        let _ = waiting.send(delivery);
    }
}

/// A producer whose sends resolve to a `Delivery`.
pub struct CouponProducer {
    inner: ThreadedProducer<DeliveryReports>,
}

impl CouponProducer {
    /// Idempotent producer with `acks=all`: a retried send never duplicates a record, and an
    /// acknowledgement means every in-sync replica has it. `produce_timeout` bounds one
    /// record's delivery.
    pub fn new(kafka: &KafkaSettings, produce_timeout: Duration) -> Result<Self, KafkaError> {
        let timeout_ms = produce_timeout.as_millis().max(1).to_string();
        let mut config: ClientConfig = kafka.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", &timeout_ms)
            .set("request.timeout.ms", &timeout_ms);
        Ok(Self { inner: config.create_with_context(DeliveryReports)? })
    }

    /// Enqueues the record; the future resolves when the broker acknowledged it or it failed.
    pub fn send(&self, topic: &str, key: &str, payload: &[u8]) -> impl Future<Output = Delivery> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let enqueued = self.inner.send(BaseRecord::with_opaque_to(topic, Box::new(tx)).key(key).payload(payload));
        let refused = enqueued.err().map(|(error, _)| error);
        async move {
            match refused {
                // Not even queued (queue full, unknown topic, too large...): never written.
                Some(error) => Delivery::NotPersisted(error),
                None => rx.await.unwrap_or(Delivery::PossiblyPersisted(KafkaError::Canceled)),
            }
        }
    }

    pub fn client(&self) -> &Client<DeliveryReports> {
        self.inner.client()
    }

    /// Waits for records still queued, e.g. at shutdown.
    pub fn flush(&self, timeout: std::time::Duration) -> Result<(), KafkaError> {
        self.inner.flush(Timeout::After(timeout))
    }
}

/// The producer in use and its generation; replaced when it can no longer produce.
pub struct ProducerSlot {
    kafka: KafkaSettings,
    produce_timeout: Duration,
    current: RwLock<(u64, Arc<CouponProducer>)>,
}

impl ProducerSlot {
    pub fn new(kafka: KafkaSettings, produce_timeout: Duration) -> Result<Self, KafkaError> {
        let producer = CouponProducer::new(&kafka, produce_timeout)?;
        Ok(Self { kafka, produce_timeout, current: RwLock::new((0, Arc::new(producer))) })
    }

    /// How long one record's delivery may take.
    pub fn produce_timeout(&self) -> Duration {
        self.produce_timeout
    }

    /// The current producer and its generation.
    pub fn current(&self) -> (u64, Arc<CouponProducer>) {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether a broker answers a metadata request now. Blocking (a broker round trip).
    pub fn broker_reachable(&self, timeout: Duration) -> bool {
        self.current().1.client().fetch_metadata(None, timeout).is_ok()
    }

    /// Replaces the producer of `generation` if it can no longer produce: a fatal error;
    /// fenced (some brokers fence an idempotent producer whose batch timed out); or a record
    /// timed out although the broker answers (`broker_answers`), which is what a broker that
    /// lost its producer state after a restart looks like (librdkafka retries
    /// `UNKNOWN_PRODUCER_ID` until the record expires). Later generations are left alone, so
    /// concurrent failures replace it once; the old producer still delivers what it holds
    /// before it is dropped.
    pub fn replace_if_broken(&self, generation: u64, failed: &CouponProducer, error: &KafkaError, broker_answers: bool) {
        use rdkafka::types::RDKafkaErrorCode as Code;
        let fenced = match error {
            KafkaError::MessageProduction(
                Code::ProducerFenced | Code::InvalidProducerEpoch | Code::OutOfOrderSequenceNumber | Code::UnknownProducerId | Code::Fatal,
            ) => true,
            KafkaError::MessageProduction(Code::MessageTimedOut) => broker_answers,
            _ => false,
        };
        let reason = match failed.client().fatal_error() {
            Some((_, reason)) => reason,
            None if fenced => error.to_string(),
            None => return,
        };
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.0 != generation {
            return;
        }
        match CouponProducer::new(&self.kafka, self.produce_timeout) {
            Ok(fresh) => {
                tracing::warn!(%reason, "producer cannot produce any more; replaced it");
                *current = (generation + 1, Arc::new(fresh));
            }
            Err(error) => tracing::error!(%error, "cannot create a new producer"),
        }
    }

    /// Waits for records still queued, e.g. at shutdown. Blocking.
    pub fn flush(&self, timeout: Duration) {
        if let Err(error) = self.current().1.flush(timeout) {
            tracing::warn!(%error, "producer flush incomplete at shutdown");
        }
    }
}
