//! Command lines: `coupon-service` (`cli`, with the event commands of `event`), and, with
//! the `tools` feature (on by default, off in the image), `coupon-tools` (`tools_cli`): the
//! flash-crowd demo and the load generator.

pub mod cli;
#[cfg(feature = "tools")]
pub mod demo;
pub mod event;
pub mod export;
#[cfg(feature = "tools")]
pub mod load;
pub mod plan;
pub mod recurring;
#[cfg(feature = "tools")]
pub mod tools_cli;
