fn main() -> std::process::ExitCode {
    coupon_service::tools::cli::main()
}
