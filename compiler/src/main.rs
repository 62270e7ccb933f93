fn main() -> std::process::ExitCode {
    actc::driver::cli::main()
}
