//! The topics the consumer reads: those it was configured with, and, with an event
//! namespace, every topic its namespace's provisioned events declare (`spec.topic`), read
//! from the event registry in Redis. A new event's topic is picked up by a running consumer
//! within `REFRESH` of its provisioning, without a restart. Topics are only ever added while
//! the process runs: a deleted event may still have records to write.

use std::collections::BTreeSet;
use std::time::Duration;

use coupon_core::event::EventId;
use coupon_core::redis::keyspace;
use coupon_core::redis::{RedisConnection, RedisError};

/// How often the registry is read.
pub const REFRESH: Duration = Duration::from_secs(5);

/// The subscription, and where new topics come from.
pub struct Topics {
    namespace: Option<String>,
    current: BTreeSet<String>,
}

impl Topics {
    pub fn new(configured: &[String], namespace: Option<String>) -> Self {
        Self { namespace, current: configured.iter().cloned().collect() }
    }

    pub fn current(&self) -> Vec<String> {
        self.current.iter().cloned().collect()
    }

    /// Reads the registry; returns the larger subscription if new topics appeared. The
    /// caller makes it current with `subscribed` once the subscription succeeded.
    pub async fn refresh(&self, conn: &mut RedisConnection) -> Result<Option<Vec<String>>, RedisError> {
        let Some(namespace) = &self.namespace else { return Ok(None) };
        let mut wanted = self.current.clone();
        for member in keyspace::registered_events(conn).await? {
            let Ok(event) = member.parse::<EventId>() else { continue };
            if event.namespace() != namespace {
                continue;
            }
            if let Some(topic) = keyspace::topic(conn, &event).await? {
                wanted.insert(topic);
            }
        }
        Ok((wanted.len() > self.current.len()).then(|| wanted.into_iter().collect()))
    }

    /// The subscription now in force.
    pub fn subscribed(&mut self, topics: &[String]) {
        self.current = topics.iter().cloned().collect();
    }
}
