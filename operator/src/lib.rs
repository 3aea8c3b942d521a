//! `coupon-operator`: the CouponEvent controller.

pub mod crd;
