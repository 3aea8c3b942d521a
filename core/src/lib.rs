//! What the coupon operator and the coupon service share: the event (identity,
//! configuration, Kafka record), the Redis keyspace, Kafka settings and topic admin,
//! provisioning, secrets and telemetry.
//!
//! The operator depends on this crate only; the service (api, consumer, tools) builds on it.
//! `docs/architecture.md` maps the crates and the path of one apply.

pub mod event;
pub mod kafka;
pub mod provision;
pub mod redis;
pub mod retry;
pub mod secrets;
pub mod telemetry;
pub mod time;
