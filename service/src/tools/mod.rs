//! Local tools: the command line of `coupon-service`, the flash-crowd demo and the load
//! generator.

pub mod cli;
pub mod demo;
pub mod event;
pub mod load;
