//! `coupon-operator`: the CouponEvent controller.

pub mod crd;
pub mod schedule;
