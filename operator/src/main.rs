use kube::CustomResourceExt;

fn main() {
    print!("{}", serde_yaml::to_string(&coupon_operator::crd::CouponEvent::crd()).unwrap());
}
