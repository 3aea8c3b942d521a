//! The event: its identity, its configuration and the Kafka record of one issued coupon.

mod config;
mod id;
mod record;
pub mod recurrence;
mod signing;

pub use config::{valid_topic_name, EventConfig, InvalidConfig, MAX_SHARDS};
pub use id::{occurrence_incarnation, split_occurrence, EventId, EventIdError, EventKey, EventKeyError, MAX_KEY_LEN};
pub use record::{validate_user_id, CouponRecord, MAX_PER_USER, MAX_USER_ID_LEN};
pub use signing::{RecordKeys, Signature, MIN_KEY_BYTES};
