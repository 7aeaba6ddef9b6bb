fn main() -> std::process::ExitCode {
    cbdr::cli::run()
}
