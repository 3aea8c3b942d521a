//! `coupon-service` with fault points compiled in, for the crash tests.
fn main() -> std::process::ExitCode {
    coupon_service::tools::cli::main()
}
