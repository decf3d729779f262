//! A 1 GiB blob is stored from a generating reader (its digest stated, so
//! the digest check runs too) and read back streamed, digest checked, while
//! the process's **peak** resident memory grows by less than 64 MiB in each
//! phase. In its own test binary (one test), so no other test's
//! allocations disturb the readings.
//!
//! The peak, not the RSS after each phase: a regression that buffered the
//! whole blob and freed it before returning would leave the final RSS low.
//! Writing `5` to `/proc/self/clear_refs` resets VmHWM (the high-water mark)
//! to the current RSS; where that file is not writable, a thread samples
//! VmRSS every 2 ms and keeps the maximum instead. The store lives under
//! `CARGO_TARGET_TMPDIR` (on disk), never a tmpfs `/tmp`, whose pages
//! would count as memory.

use std::{
    io::{Read, Seek, SeekFrom},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use cairn_storage::{views::default_views, BlobStore, Digest, Store, StoreConfig};
use sha2::{Digest as _, Sha256};

const BLOB_BYTES: u64 = 1 << 30;
const RSS_GROWTH_MAX_BYTES: u64 = 64 << 20;
const BLOCK: usize = 64 * 1024;

/// A `kB` field of /proc/self/status, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"));
    let kib: u64 = line
        .trim_start_matches(field)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

/// Peak resident memory over a phase: VmHWM after a reset through
/// `clear_refs`, or the maximum of VmRSS sampled by a thread.
enum Peak {
    HighWaterMark,
    Sampled {
        max: Arc<AtomicU64>,
        stop: Arc<AtomicBool>,
        thread: JoinHandle<()>,
    },
}

impl Peak {
    /// Starts measuring: returns the resident memory at the start and the
    /// measurement.
    fn start() -> (u64, Peak) {
        if std::fs::write("/proc/self/clear_refs", "5").is_ok() {
            // VmHWM is now the current RSS.
            return (status_bytes("VmHWM:"), Peak::HighWaterMark);
        }
        let start = status_bytes("VmRSS:");
        let max = Arc::new(AtomicU64::new(start));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (max, stop) = (max.clone(), stop.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    max.fetch_max(status_bytes("VmRSS:"), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        (start, Peak::Sampled { max, stop, thread })
    }

    /// The highest resident memory since `start`, and how it was measured.
    fn finish(self) -> (u64, &'static str) {
        match self {
            Peak::HighWaterMark => (status_bytes("VmHWM:"), "VmHWM after clear_refs"),
            Peak::Sampled { max, stop, thread } => {
                stop.store(true, Ordering::Relaxed);
                thread.join().unwrap();
                let last = status_bytes("VmRSS:");
                (
                    max.load(Ordering::Relaxed).max(last),
                    "VmRSS sampled every 2 ms",
                )
            }
        }
    }
}

/// Runs `phase`, prints and checks its peak resident memory growth.
fn bounded<T>(name: &str, phase: impl FnOnce() -> T) -> T {
    let (start, peak) = Peak::start();
    let out = phase();
    let (high, how) = peak.finish();
    let growth = high.saturating_sub(start);
    eprintln!("{name}: resident {start} B at start, peak {high} B ({how}): grew {growth} B");
    assert!(
        growth < RSS_GROWTH_MAX_BYTES,
        "{name}: peak resident memory grew by {growth} bytes with a 1 GiB blob (limit {RSS_GROWTH_MAX_BYTES})"
    );
    out
}

/// Block `index` of the generated content: a fixed pattern stamped with
/// the block's index, so every block differs.
fn block(index: u64, out: &mut [u8; BLOCK]) {
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&(i as u64 ^ 0x9e37_79b9_7f4a_7c15).to_le_bytes());
    }
    out[..8].copy_from_slice(&index.to_be_bytes());
}

/// Yields `BLOB_BYTES` of generated content, hashing what it yields.
struct Generated {
    offset: u64,
    block: Box<[u8; BLOCK]>,
    hasher: Sha256,
}

impl Generated {
    fn new() -> Self {
        Self {
            offset: 0,
            block: Box::new([0; BLOCK]),
            hasher: Sha256::new(),
        }
    }
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.offset == BLOB_BYTES {
            return Ok(0);
        }
        let at = (self.offset % BLOCK as u64) as usize;
        if at == 0 {
            block(self.offset / BLOCK as u64, &mut self.block);
        }
        let n = buf.len().min(BLOCK - at);
        buf[..n].copy_from_slice(&self.block[at..at + n]);
        self.hasher.update(&buf[..n]);
        self.offset += n as u64;
        Ok(n)
    }
}

#[test]
fn a_1_gib_blob_streams_in_and_out_in_bounded_memory() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = Store::open(StoreConfig::new(dir.path()), default_views()).unwrap();
    // The content's digest, from a streaming pass of its own.
    let mut first_pass = Generated::new();
    std::io::copy(&mut first_pass, &mut std::io::sink()).unwrap();
    assert_eq!(first_pass.offset, BLOB_BYTES);
    let digest = Digest(first_pass.hasher.finalize().into());
    // Warm up: RocksDB's own buffers and the first small put.
    drop(store.put(b"warm up").unwrap());

    let pin = bounded("put", || {
        let mut source = Generated::new();
        store.put_reader(&mut source, Some(&digest)).unwrap()
    });
    assert_eq!(pin.digest(), digest);

    let (total, read_digest) = bounded("read", || {
        let mut reader = store.open_blob(&digest).unwrap().unwrap();
        assert_eq!(reader.size(), BLOB_BYTES);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; BLOCK];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }

        // A range in the last block reads exactly the generated bytes.
        let last = BLOB_BYTES / BLOCK as u64 - 1;
        let mut expected = [0u8; BLOCK];
        block(last, &mut expected);
        let start = last * BLOCK as u64 + 4;
        let mut part = Vec::new();
        store
            .read_range(&digest, start..start + 100)
            .unwrap()
            .unwrap()
            .read_to_end(&mut part)
            .unwrap();
        assert_eq!(part, expected[4..104]);
        reader.seek(SeekFrom::Start(last * BLOCK as u64)).unwrap();
        let mut first8 = [0u8; 8];
        reader.read_exact(&mut first8).unwrap();
        assert_eq!(u64::from_be_bytes(first8), last);
        (total, Digest(hasher.finalize().into()))
    });
    assert_eq!(total, BLOB_BYTES);
    assert_eq!(read_digest, digest);
}
