fn main() -> std::process::ExitCode {
    actc_driver::cli::main()
}
