//! `coupon-service`: the api process (HTTP apply), the consumer process (Kafka → SQL) and the
//! local tools (CLI, demo, load generator). What it shares with the operator lives in
//! `coupon-core`; `docs/architecture.md` maps both.
//!
//! | folder | system |
//! |---|---|
//! | `app.rs` | builds the api and the consumer from their settings |
//! | `http/` | routes, server loop and limits, health and metrics endpoints |
//! | `apply/` | the apply decision: gate, produce, release, the answer table |
//! | `auth/` | who the user is: bearer tokens (JWT, JWKS), a gateway header, or the body |
//! | `consumer/` | batching, parsing, SQL writes, offsets, recovery of lost Redis state |
//! | `sql/` | the store and its migrations per dialect |
//! | `tools/` | the command line, the demo and the load generator |

pub mod app;
pub mod apply;
pub mod auth;
pub mod consumer;
pub mod health;
pub mod http;
pub mod metrics;
pub mod sql;
pub mod tools;
