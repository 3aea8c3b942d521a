fn main() -> std::process::ExitCode {
    coupon_service::cli::main()
}
