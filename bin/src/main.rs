//! The `cairn` command. See `cairn --help`.

/// jemalloc for every allocation of the process (Rust, RocksDB, libgit2:
/// it replaces `malloc`), so that memory freed after a large sync can be
/// handed back to the system at once (see [`cairn::memory`]).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    cairn::cli::main()
}
