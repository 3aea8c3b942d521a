//! Redis: the connection, and the keyspace that owns every key, field, script and command
//! the system sends. Nothing outside this folder spells a Redis key or a command.

mod connection;
pub mod diagnostics;
pub mod keyspace;

pub use connection::key_slot;
pub use connection::{ConnectError, RedisConnection, RedisHandle, RedisTarget, RedisTls};
pub use redis::RedisError;
