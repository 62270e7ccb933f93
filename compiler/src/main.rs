fn main() -> std::process::ExitCode {
    actc::cli::main()
}
