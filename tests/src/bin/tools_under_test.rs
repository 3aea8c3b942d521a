//! `coupon-tools` (the load generator and the demo), built here so that integration tests
//! can spawn it as a real process.
fn main() -> std::process::ExitCode {
    coupon_service::tools::tools_cli::main()
}
