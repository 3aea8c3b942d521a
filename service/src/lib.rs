//! First-come-first-served coupon events: the apply gate (Redis), the Kafka record path, the
//! SQL consumer and the provisioning shared with the operator. See DESIGN.md.

pub mod api;
pub mod cli;
pub mod consumer;
pub mod demo;
pub mod event_id;
pub mod gate;
pub mod health;
pub mod kafka;
pub mod load;
pub mod metrics;
pub mod ops;
pub mod producer;
pub mod provision;
pub mod record;
pub mod recovery;
pub mod redis_conn;
pub mod retry;
pub mod server;
pub mod store;
pub mod telemetry;
