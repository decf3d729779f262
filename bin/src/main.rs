//! The `cairn` command. See `cairn --help`.

fn main() -> std::process::ExitCode {
    cairn::cli::main()
}
