//! The api's producer: idempotent, `acks=all`, and a delivery report that says whether a
//! failed record may still have been written. That decides whether its slot may be handed
//! out again: releasing the slot of a record the broker did write would give one slot to two
//! users.

use std::future::Future;

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
    pub fn new(config: &ClientConfig) -> Result<Self, KafkaError> {
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
