//! `coupon-tools`: the load generator and the flash-crowd demo (see `tools::tools_cli`).
fn main() -> std::process::ExitCode {
    coupon_service::tools::tools_cli::main()
}
