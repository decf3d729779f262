//! Memory housekeeping.
//!
//! The `cairn` binary allocates everything — Rust, RocksDB, libgit2 — with
//! jemalloc (`main.rs`; `tikv-jemalloc-sys` replaces `malloc`). Like any
//! allocator it keeps freed pages for reuse, so after a first sync of a
//! large repository (every revision read, converted, encoded and appended)
//! a node would stay at several times what it holds. [`release`] hands
//! those pages back at once; the repository actors call it after a sync or
//! an unregister that changed revisions, so resident memory follows what
//! the node holds (views on disk, bounded caches) rather than its largest
//! past sync.

/// `MALLCTL_ARENAS_ALL`: the pseudo-arena index naming every arena.
const ARENAS_ALL: u32 = 4096;

/// Returns every free page of every jemalloc arena to the system.
pub fn release() {
    let name = format!("arena.{ARENAS_ALL}.purge\0");
    // SAFETY: `arena.<i>.purge` reads and writes nothing, so jemalloc's
    // `mallctl` takes null old/new pointers and a zero length for it; the
    // name is NUL-terminated and outlives the call.
    #[allow(unsafe_code)]
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        tracing::debug!(rc, "jemalloc purge failed");
    }
}
