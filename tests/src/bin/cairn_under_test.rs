//! The real `cairn` CLI, built in the test package so suites can spawn it.
//!
//! One test hook, for crash tests only: with
//! [`cairn_tests::KILL_AFTER_SYNC_CHUNKS`]`=N` in its environment, the
//! process kills itself with SIGKILL (as `kill -9` would: no shutdown, no
//! flush) right after the N-th chunk of a sync committed.

use std::sync::OnceLock;

/// The chunk after which to die, read once at start.
static KILL_AFTER: OnceLock<u64> = OnceLock::new();

fn kill_after_chunk(committed: u64) {
    if KILL_AFTER.get() == Some(&committed) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

fn main() -> std::process::ExitCode {
    if let Some(n) = std::env::var(cairn_tests::KILL_AFTER_SYNC_CHUNKS)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let _ = KILL_AFTER.set(n);
        cairn_actors::repository::sync::set_chunk_hook(kill_after_chunk);
    }
    cairn::cli::main()
}
