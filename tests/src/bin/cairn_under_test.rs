//! The real `cairn` CLI, built in the test package so suites can spawn it.

fn main() -> std::process::ExitCode {
    cairn::cli::main()
}
