//! The node's in-memory state of the key-value cache: the memory tier (a
//! size-aware moka cache in front of the `kv_entries` view) and, per
//! partition, a [`Tracker`]: which entries exist, their size, expiry,
//! recency, hits and `last_accessed`, usage and settings per namespace, and
//! the hit, miss and eviction counters. None of it is an event: it is
//! rebuilt from the view when the node starts ([`KvMemory::load`]), and
//! the counters start at zero.
//!
//! Only the partition's writer changes which entries exist (after its
//! append committed); reads only touch recency and counters. The memory
//! tier is filled by the writer on a set and by a read that found the
//! entry on disk; a read fills it only if no write of the partition
//! happened since it began ([`Tracker::generation`], checked and filled
//! under the partition's lock, which the writer holds while it
//! invalidates), so a stale row never lands there after a delete.
//!
//! # Memory per entry
//! Every entry costs tracker memory whether or not the memory tier holds
//! it, so the tracker keeps per entry only its key (a `Box<str>`) and an
//! [`EntryInfo`]; the recency index (keys by tick, for eviction) is kept
//! only for namespaces with `max_entries` / `max_bytes` — the only reader —
//! and rebuilt from the entries' ticks when a namespace gets limits. The
//! memory tier is keyed by a 64-bit hash of `(namespace, key)` (a get
//! allocates no key, and the tier does not hold a second copy of the
//! names): a row found under the hash is an answer only if its namespace
//! and key are the ones asked for, so a collision is a miss, never a wrong
//! answer. Its weights count each row's bytes plus
//! [`MEMORY_ENTRY_OVERHEAD_BYTES`], so `kv.memory-max-bytes` bounds what
//! it really takes.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use cairn_events::v1::{KvEntryRow, KvNamespaceSettings};
use parking_lot::Mutex;

/// Namespaces whose counters are kept for reads of namespaces that hold no
/// entry (misses of random namespaces must not grow memory without bound);
/// past it, such reads count only in the node's totals.
pub const COUNTED_NAMESPACES_MAX: usize = 65_536;

/// An entry's memory-tier key: a hash of `(namespace, key)` (see the
/// module docs).
pub type EntryKey = u64;

/// What a memory-tier entry takes besides its names, value and tags: the
/// row's struct and its allocations, the `Arc`, moka's bookkeeping.
pub const MEMORY_ENTRY_OVERHEAD_BYTES: u64 = 256;

/// The memory-tier key of `(namespace, key)`.
pub fn entry_key(namespace: &str, key: &str) -> EntryKey {
    use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
    // Fixed keys: the same entry hashes alike for the process's life.
    let mut h =
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .build_hasher();
    namespace.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

/// What the tracker knows of one entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EntryInfo {
    /// Recency: the node-wide tick of its last set or hit.
    pub tick: u64,
    /// Its size as counted against `max_bytes`.
    pub bytes: u64,
    /// 0: never expires.
    pub expires_at_ms: u64,
    /// Hits since the node started (or the entry was last set).
    pub hits: u64,
    /// Last hit or set, Unix ms.
    pub last_accessed_ms: u64,
}

/// Hit, miss and eviction counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Gets that found a live entry.
    pub hits: u64,
    /// Gets that found none (absent or expired).
    pub misses: u64,
    /// Entries evicted for `max_entries` / `max_bytes`.
    pub evictions: u64,
}

/// One namespace of a partition.
#[derive(Debug, Default)]
pub struct Namespace {
    /// Entries by key.
    pub entries: HashMap<Box<str>, EntryInfo>,
    /// Keys by recency (least recent first); kept only while the namespace
    /// has limits ([`Namespace::limited`]), empty otherwise.
    pub recency: BTreeMap<u64, Box<str>>,
    /// Sum of the entries' sizes.
    pub bytes: u64,
    /// Settings (`kv.configure`).
    pub settings: KvNamespaceSettings,
    /// Counters.
    pub counters: Counters,
}

impl Namespace {
    /// Whether the namespace has `max_entries` or `max_bytes` (and so
    /// keeps its recency index).
    pub fn limited(&self) -> bool {
        self.settings.max_entries > 0 || self.settings.max_bytes > 0
    }

    /// Moves `key` to recency `tick`.
    fn touch(&mut self, key: &str, tick: u64, now_ms: u64, hit: bool) {
        let limited = self.limited();
        if let Some(info) = self.entries.get_mut(key) {
            let old = info.tick;
            info.tick = tick;
            info.last_accessed_ms = now_ms;
            if hit {
                info.hits += 1;
            }
            if limited {
                let k = self.recency.remove(&old).unwrap_or_else(|| key.into());
                self.recency.insert(tick, k);
            }
        }
    }

    /// Makes the recency index follow the settings: built from the
    /// entries' ticks when the namespace has limits, dropped when not.
    fn index_recency(&mut self) {
        if !self.limited() {
            self.recency = BTreeMap::new();
        } else if self.recency.len() != self.entries.len() {
            self.recency = self
                .entries
                .iter()
                .map(|(k, info)| (info.tick, k.clone()))
                .collect();
        }
    }

    /// The least recently used keys, oldest first, skipping `except`, until
    /// `enough` says the rest fits.
    pub fn victims(
        &self,
        except: &str,
        mut enough: impl FnMut(u64, u64) -> bool,
    ) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let (mut removed, mut removed_bytes) = (0u64, 0u64);
        for key in self.recency.values() {
            if enough(removed, removed_bytes) {
                break;
            }
            if &**key == except {
                continue;
            }
            let bytes = self.entries.get(key).map_or(0, |i| i.bytes);
            removed += 1;
            removed_bytes += bytes;
            out.push((key.to_string(), bytes));
        }
        out
    }
}

/// One partition's in-memory state.
#[derive(Debug, Default)]
pub struct Tracker {
    /// Namespaces of the partition.
    pub namespaces: HashMap<String, Namespace>,
    /// Bumped by every committed write of the partition.
    pub generation: u64,
}

impl Tracker {
    /// The namespace, created on first use.
    pub fn namespace(&mut self, namespace: &str) -> &mut Namespace {
        self.namespaces.entry(namespace.to_owned()).or_default()
    }
}

/// The memory tier and the trackers of every partition.
#[derive(Debug)]
pub struct KvMemory {
    cache: moka::sync::Cache<EntryKey, Arc<KvEntryRow>>,
    partitions: Vec<Mutex<Tracker>>,
    tick: AtomicU64,
    /// Reads of namespaces past [`COUNTED_NAMESPACES_MAX`].
    uncounted: Mutex<Counters>,
}

/// An entry's size: namespace, key, value and tags bytes.
pub fn entry_bytes(row: &KvEntryRow) -> u64 {
    (row.namespace.len()
        + row.key.len()
        + row.value.len()
        + row.tags.iter().map(String::len).sum::<usize>()) as u64
}

impl KvMemory {
    /// Empty state for `partitions` partitions, with a memory tier of at
    /// most `memory_max_bytes`.
    pub fn new(partitions: usize, memory_max_bytes: u64) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(memory_max_bytes)
            .weigher(|_k: &EntryKey, row: &Arc<KvEntryRow>| {
                u32::try_from(entry_bytes(row) + MEMORY_ENTRY_OVERHEAD_BYTES).unwrap_or(u32::MAX)
            })
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .build();
        Self {
            cache,
            partitions: (0..partitions).map(|_| Mutex::default()).collect(),
            tick: AtomicU64::new(1),
            uncounted: Mutex::default(),
        }
    }

    /// Loads which entries exist and the namespaces' settings from the
    /// view's rows (at start, before any writer runs). Recency after a
    /// restart follows the entries' creation times.
    pub fn load(
        &self,
        partition_of: impl Fn(&str) -> usize,
        mut entries: Vec<KvEntryRow>,
        settings: Vec<(String, KvNamespaceSettings)>,
    ) {
        for (namespace, s) in settings {
            self.partitions[partition_of(&namespace)]
                .lock()
                .namespace(&namespace)
                .settings = s;
        }
        entries.sort_by_key(|r| r.created_at_ms);
        for row in entries {
            let mut tracker = self.partitions[partition_of(&row.namespace)].lock();
            let tick = self.next_tick();
            let ns = tracker.namespace(&row.namespace);
            let bytes = entry_bytes(&row);
            ns.bytes += bytes;
            let key: Box<str> = row.key.into();
            if ns.limited() {
                ns.recency.insert(tick, key.clone());
            }
            ns.entries.insert(
                key,
                EntryInfo {
                    tick,
                    bytes,
                    expires_at_ms: row.expires_at_ms,
                    hits: 0,
                    last_accessed_ms: row.created_at_ms,
                },
            );
        }
    }

    /// The next recency tick.
    pub fn next_tick(&self) -> u64 {
        self.tick.fetch_add(1, Ordering::Relaxed)
    }

    /// The tracker of `partition`.
    pub fn partition(&self, partition: usize) -> &Mutex<Tracker> {
        &self.partitions[partition]
    }

    /// Every partition's tracker.
    pub fn partitions(&self) -> &[Mutex<Tracker>] {
        &self.partitions
    }

    /// The memory tier's row of an entry.
    pub fn cached(&self, namespace: &str, key: &str) -> Option<Arc<KvEntryRow>> {
        self.cache
            .get(&entry_key(namespace, key))
            .filter(|row| row.namespace == namespace && row.key == key)
    }

    /// Whether the memory tier holds the entry.
    pub fn in_memory(&self, namespace: &str, key: &str) -> bool {
        self.cached(namespace, key).is_some()
    }

    /// Bytes the memory tier holds (its weights).
    pub fn memory_bytes(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    /// Puts a row read from disk in the memory tier, unless the partition
    /// was written since `generation` (see the module docs).
    pub fn fill(&self, partition: usize, generation: u64, row: Arc<KvEntryRow>) {
        let tracker = self.partitions[partition].lock();
        if tracker.generation == generation {
            self.cache.insert(entry_key(&row.namespace, &row.key), row);
        }
    }

    /// The partition's generation now.
    pub fn generation(&self, partition: usize) -> u64 {
        self.partitions[partition].lock().generation
    }

    /// Counts a hit of a live entry (touching its recency) and answers its
    /// hit count and last access.
    pub fn hit(&self, partition: usize, namespace: &str, key: &str, now_ms: u64) -> EntryInfo {
        let tick = self.next_tick();
        let mut tracker = self.partitions[partition].lock();
        // A live entry's namespace exists: no key allocated to find it.
        if !tracker.namespaces.contains_key(namespace) {
            tracker.namespace(namespace);
        }
        let Some(ns) = tracker.namespaces.get_mut(namespace) else {
            return EntryInfo::default();
        };
        ns.counters.hits += 1;
        ns.touch(key, tick, now_ms, true);
        ns.entries.get(key).copied().unwrap_or_default()
    }

    /// Counts a miss.
    pub fn miss(&self, partition: usize, namespace: &str) {
        let mut tracker = self.partitions[partition].lock();
        if let Some(ns) = tracker.namespaces.get_mut(namespace) {
            ns.counters.misses += 1;
        } else if tracker.namespaces.len() < COUNTED_NAMESPACES_MAX / self.partitions.len().max(1) {
            tracker.namespace(namespace).counters.misses += 1;
        } else {
            self.uncounted.lock().misses += 1;
        }
    }

    /// What the tracker knows of an entry.
    pub fn info(&self, partition: usize, namespace: &str, key: &str) -> Option<EntryInfo> {
        let tracker = self.partitions[partition].lock();
        tracker.namespaces.get(namespace)?.entries.get(key).copied()
    }

    /// Counters of `namespace`, or of every namespace.
    pub fn counters(&self, namespace: Option<&str>) -> Counters {
        let mut total = match namespace {
            None => *self.uncounted.lock(),
            Some(_) => Counters::default(),
        };
        for p in &self.partitions {
            let tracker = p.lock();
            for (name, ns) in &tracker.namespaces {
                if namespace.is_none_or(|n| n == name) {
                    total.hits += ns.counters.hits;
                    total.misses += ns.counters.misses;
                    total.evictions += ns.counters.evictions;
                }
            }
        }
        total
    }

    /// After a committed set: the entry exists with `row`, most recent.
    pub fn committed_set(&self, partition: usize, row: Arc<KvEntryRow>, now_ms: u64) {
        let tick = self.next_tick();
        let mut tracker = self.partitions[partition].lock();
        tracker.generation += 1;
        let bytes = entry_bytes(&row);
        let ns = tracker.namespace(&row.namespace);
        let key: Box<str> = match ns.entries.remove_entry(row.key.as_str()) {
            Some((key, old)) => {
                ns.recency.remove(&old.tick);
                ns.bytes -= old.bytes;
                key
            }
            None => row.key.as_str().into(),
        };
        ns.bytes += bytes;
        if ns.limited() {
            ns.recency.insert(tick, key.clone());
        }
        ns.entries.insert(
            key,
            EntryInfo {
                tick,
                bytes,
                expires_at_ms: row.expires_at_ms,
                hits: 0,
                last_accessed_ms: now_ms,
            },
        );
        self.cache.insert(entry_key(&row.namespace, &row.key), row);
    }

    /// After a committed removal of entries (delete, invalidation, expiry,
    /// eviction); `evicted` counts them as evictions too.
    pub fn committed_removal<'a>(
        &self,
        partition: usize,
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
        evicted: bool,
    ) {
        let mut tracker = self.partitions[partition].lock();
        tracker.generation += 1;
        for (namespace, key) in entries {
            let ns = tracker.namespace(namespace);
            if let Some(old) = ns.entries.remove(key) {
                ns.recency.remove(&old.tick);
                ns.bytes -= old.bytes;
                if evicted {
                    ns.counters.evictions += 1;
                }
            }
            self.cache.invalidate(&entry_key(namespace, key));
        }
    }

    /// After a committed `kv.configure`.
    pub fn committed_settings(&self, partition: usize, namespace: &str, s: KvNamespaceSettings) {
        let mut tracker = self.partitions[partition].lock();
        tracker.generation += 1;
        let ns = tracker.namespace(namespace);
        ns.settings = s;
        ns.index_recency();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(namespace: &str, key: &str) -> Arc<KvEntryRow> {
        Arc::new(KvEntryRow {
            namespace: namespace.into(),
            key: key.into(),
            value: b"1".to_vec(),
            json: true,
            ..KvEntryRow::default()
        })
    }

    #[test]
    fn a_row_found_under_another_entrys_hash_is_a_miss() {
        let memory = KvMemory::new(1, 1 << 20);
        memory.committed_set(0, row("ns", "a"), 1);
        assert_eq!(
            memory.cached("ns", "a").map(|r| r.key.clone()),
            Some("a".into())
        );
        // As if ("ns", "b") hashed like ("ns", "a"): the row there is not it.
        memory.cache.insert(entry_key("ns", "b"), row("ns", "a"));
        assert!(memory.cached("ns", "b").is_none());
        assert!(!memory.in_memory("ns", "b"));
    }

    #[test]
    fn recency_is_indexed_only_with_limits_and_rebuilt_when_they_are_set() {
        let memory = KvMemory::new(1, 1 << 20);
        for key in ["a", "b", "c"] {
            memory.committed_set(0, row("ns", key), 1);
        }
        memory.hit(0, "ns", "a", 2);
        assert!(memory
            .partition(0)
            .lock()
            .namespace("ns")
            .recency
            .is_empty());
        let limits = KvNamespaceSettings {
            max_entries: 2,
            ..KvNamespaceSettings::default()
        };
        memory.committed_settings(0, "ns", limits);
        let mut tracker = memory.partition(0).lock();
        let ns = tracker.namespace("ns");
        // Least recent first: b, c, then a (hit last).
        let order: Vec<&str> = ns.recency.values().map(|k| &**k).collect();
        assert_eq!(order, ["b", "c", "a"]);
        assert_eq!(
            ns.victims("", |removed, _| 3 - removed <= 2),
            [("b".to_owned(), 4)]
        );
        drop(tracker);
        memory.committed_settings(0, "ns", KvNamespaceSettings::default());
        assert!(memory
            .partition(0)
            .lock()
            .namespace("ns")
            .recency
            .is_empty());
    }
}
