//! `coupon-operator`: placeholder until the CouponEvent controller lands (issue 3).
//! The provisioning it will call already lives in the `coupon-service` library
//! (`coupon_service::provision`), so the local CLI and the operator share one code path.

fn main() {
    eprintln!("coupon-operator: the controller is not implemented yet; use `coupon-service event create` to provision an event locally");
    std::process::exit(2);
}
