//! The node's in-memory state of the key-value cache: the memory tier (a
//! size-aware `quick_cache` cache in front of the `kv_entries` view) and, per
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
//! invalidates), so a stale row never lands there after a delete. For
//! the same reason a hit whose entry changed since the read began
//! ([`Tracker::changed_since`]; for a first read, one that may have
//! changed) counts for its namespace only: it neither
//! starts tracking the entry (a hit racing a delete would otherwise track,
//! for good, an entry that no longer exists) nor counts on the entry that
//! replaced its row. The writer publishes a partition's new generation
//! ([`KvMemory::generation`]) last, under the lock, once the memory tier is
//! as the write left it; a read from disk goes through the store's row
//! cache, which checks its rows against the last seq *written* (before
//! any observer runs), so a read that noted the new generation finds the
//! write on either path.
//!
//! # Memory per entry
//! The tracker must not cost memory per entry that the disk tier already
//! answers. Only a namespace with `max_entries` / `max_bytes`
//! ([`Namespace::limited`]) needs every entry in memory (which exist, their
//! sizes and recency, to pick the least recently used exactly): there
//! every entry has an [`EntryInfo`] and the recency index (keys by tick).
//! Elsewhere the tracker holds only the entries read since they were set
//! (their hits and last access); an entry never read has no tracker
//! memory at all, its info following from its row (no hits, last access
//! = its creation, [`EntryInfo::of`]). When a namespace gets limits, the
//! writer reads its rows from the view and indexes them all
//! ([`KvMemory::committed_settings`]): recency then follows the last
//! access of each entry (its hit, else its set) to the millisecond. The
//! memory tier is keyed by a 64-bit hash of `(namespace, key)` (a get
//! allocates no key, and the tier does not hold a second copy of the
//! names): a row found under the hash is an answer only if its namespace
//! and key are the ones asked for, so a collision is a miss, never a wrong
//! answer. Its weights count each row's bytes plus
//! [`MEMORY_ENTRY_OVERHEAD_BYTES`], so `kv.memory-max-bytes` bounds what
//! it really takes.
//!
//! Decision: the tier is a `quick_cache` cache (sharded hash tables under
//! read-write locks, CLOCK-Pro eviction: scan-resistant, with a record of
//! recently evicted keys), no longer a moka cache (a concurrent hash table
//! whose every hit also queues an LRU bookkeeping record, replayed
//! later). A GET's lookup is the node thread's largest cost besides NATS:
//! in profiles of the GET benchmark moka took about a quarter of that
//! thread (its probe, then its LRU bookkeeping). Measured with `cairn bench
//! kv --phases get --concurrency 64 --requests 300000`, four pairs
//! alternated on one machine: 100-byte GETs at 55,198–63,385/s (mean
//! 59,680/s) against moka's 50,749–55,010/s (mean 53,483/s), +12 %; RSS
//! for 1,000,000 entries (the memory phase, default 64 MiB tier) +121 MiB
//! against +161 MiB. The policy is no longer
//! strict LRU; nothing depends on it: the per-namespace limits evict by
//! the trackers' recency, exactly, and the tier only decides what is
//! answered from memory rather than from disk. An entry heavier than 97 %
//! of a shard's quarter of the bound ([`MEMORY_SHARDS`]) is not admitted
//! (its earlier row, if any, is removed): it is answered from the disk
//! tier (moka admitted entries up to the whole bound).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
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

/// The changes of entries a partition's tracker remembers for first hits
/// in namespaces without limits ([`Tracker::changed_since`]). A read
/// that began before the oldest remembered change does not start
/// tracking its entry (the next read does): it cannot tell.
pub const CHANGES_KEPT: usize = 1024;

/// What a memory-tier entry takes besides its names, value and tags: the
/// row's struct and its allocations, the `Arc`, the cache's bookkeeping.
pub const MEMORY_ENTRY_OVERHEAD_BYTES: u64 = 256;

/// Shards of the memory tier. Each holds a quarter of
/// `kv.memory-max-bytes` and admits no entry that weighs more than 97 % of
/// its quarter (`quick_cache`'s hot share; the weight is the row's bytes
/// plus [`MEMORY_ENTRY_OVERHEAD_BYTES`]): such an entry is answered from
/// the disk tier. So a bound below about 1 KiB keeps nothing in memory.
/// Few shards: the node's thread does the reads, the store's writer the
/// fills of committed sets.
pub const MEMORY_SHARDS: usize = 4;

/// The entry size the memory tier's sizing assumes: `kv.memory-max-bytes`
/// over it (between 128 and 2^20) is the estimate of entries that sets
/// how many keys of recently evicted entries the tier remembers (half of
/// it), and may lower the shard count for a small bound. The hash tables
/// themselves grow as the tier fills.
pub const MEMORY_ESTIMATED_ENTRY_BYTES: u64 = 1024;

/// An entry as the view holds it, for indexing a namespace that gets
/// limits: `(key, info from its row)`.
pub type IndexedEntry = (Box<str>, EntryInfo);

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

impl EntryInfo {
    /// The info of an entry never read: from its row, at recency `tick`.
    pub fn of(row: &KvEntryRow, tick: u64) -> Self {
        Self {
            tick,
            bytes: entry_bytes(row),
            expires_at_ms: row.expires_at_ms,
            hits: 0,
            last_accessed_ms: row.created_at_ms,
        }
    }
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
    /// Entries by key: all of them while the namespace is
    /// [`Namespace::limited`], else only those read since they were set.
    pub entries: HashMap<Box<str>, EntryInfo>,
    /// Keys by recency (least recent first); kept only while the namespace
    /// has limits ([`Namespace::limited`]), empty otherwise.
    pub recency: BTreeMap<u64, Box<str>>,
    /// Keys that expire, by expiry then key (kept only while the namespace
    /// has limits, like `recency`): an insert past the limits removes the
    /// expired ones before it evicts a live one.
    pub expiry: BTreeSet<(u64, Box<str>)>,
    /// Sum of the entries' sizes (while [`Namespace::limited`]).
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

    /// Applies `settings`: a namespace that gets limits indexes every
    /// entry (`rows`: its entries as the view holds them, merged with the
    /// hits known), ordered by last access then tick then key, with fresh
    /// ticks from `next_tick`; one that loses them keeps only the entries
    /// read.
    fn apply_settings(
        &mut self,
        settings: KvNamespaceSettings,
        rows: Option<Vec<IndexedEntry>>,
        mut next_tick: impl FnMut() -> u64,
    ) {
        let was = self.limited();
        self.settings = settings;
        match (was, self.limited()) {
            (false, true) => {
                let read = std::mem::take(&mut self.entries);
                let mut all: Vec<IndexedEntry> = rows
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(key, info)| {
                        // What reads tracked (hits, last access, recency)
                        // merged into the row's own size and expiry: a
                        // tracked info may come from an older row.
                        let info = match read.get(&key) {
                            Some(r) => EntryInfo {
                                tick: r.tick,
                                hits: r.hits,
                                last_accessed_ms: r.last_accessed_ms,
                                ..info
                            },
                            None => info,
                        };
                        (key, info)
                    })
                    .collect();
                all.sort_by(|(ka, a), (kb, b)| {
                    (a.last_accessed_ms, a.tick, ka).cmp(&(b.last_accessed_ms, b.tick, kb))
                });
                self.bytes = 0;
                self.recency = BTreeMap::new();
                self.expiry = BTreeSet::new();
                self.entries = HashMap::with_capacity(all.len());
                for (key, mut info) in all {
                    info.tick = next_tick();
                    self.index(&key, &info);
                    self.entries.insert(key, info);
                }
            }
            (true, false) => {
                self.recency = BTreeMap::new();
                self.expiry = BTreeSet::new();
                self.bytes = 0;
                self.entries.retain(|_, info| info.hits > 0);
                self.entries.shrink_to_fit();
            }
            _ => {}
        }
    }

    /// Indexes a tracked entry of a namespace with limits: its size, its
    /// recency and (if it expires) its expiry.
    fn index(&mut self, key: &str, info: &EntryInfo) {
        self.bytes += info.bytes;
        self.recency.insert(info.tick, key.into());
        if info.expires_at_ms != 0 {
            self.expiry.insert((info.expires_at_ms, key.into()));
        }
    }

    /// Undoes [`Namespace::index`] for an entry that goes or changes.
    fn unindex(&mut self, key: &str, info: &EntryInfo) {
        self.bytes -= info.bytes;
        self.recency.remove(&info.tick);
        if info.expires_at_ms != 0 {
            self.expiry.remove(&(info.expires_at_ms, key.into()));
        }
    }

    /// The tracked entries expired at `now_ms` (see [`super::expired`]),
    /// but `except`, soonest expired first, with their sizes.
    pub fn expired<'a>(
        &'a self,
        now_ms: u64,
        except: &'a str,
    ) -> impl Iterator<Item = (&'a str, u64)> + 'a {
        self.expiry
            .iter()
            .take_while(move |(at, _)| super::expired(*at, now_ms))
            .filter(move |(_, key)| &**key != except)
            .map(|(_, key)| (&**key, self.entries.get(key).map_or(0, |i| i.bytes)))
    }

    /// The least recently used keys, oldest first, skipping `except` and
    /// those `skip` names, until `enough` says the rest fits.
    pub fn victims(
        &self,
        except: &str,
        skip: &HashSet<&str>,
        mut enough: impl FnMut(u64, u64) -> bool,
    ) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let (mut removed, mut removed_bytes) = (0u64, 0u64);
        for key in self.recency.values() {
            if enough(removed, removed_bytes) {
                break;
            }
            if &**key == except || skip.contains(&**key) {
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
    /// The last changes (set or removed) of entries, oldest first: the
    /// generation each made, and the entry. Recorded in namespaces with
    /// limits too: a namespace can lose its limits while a read runs.
    changes: VecDeque<(u64, EntryKey)>,
    /// The newest generation of the changes dropped from `changes`.
    changes_forgotten: u64,
}

impl Tracker {
    /// The namespace, created on first use.
    pub fn namespace(&mut self, namespace: &str) -> &mut Namespace {
        self.namespaces.entry(namespace.to_owned()).or_default()
    }

    /// Records that the write making the current generation changed
    /// `entry`.
    fn changed(&mut self, entry: EntryKey) {
        if self.changes.len() >= CHANGES_KEPT {
            if let Some((generation, _)) = self.changes.pop_front() {
                self.changes_forgotten = generation;
            }
        }
        self.changes.push_back((self.generation, entry));
    }

    /// Whether `entry` changed since the partition was at `generation`.
    pub fn changed_since(&self, entry: EntryKey, generation: u64) -> Change {
        if self.generation == generation {
            return Change::None;
        }
        if self.changes_forgotten > generation {
            return Change::Unknown;
        }
        if self
            .changes
            .iter()
            .rev()
            .take_while(|(g, _)| *g > generation)
            .any(|(_, e)| *e == entry)
        {
            Change::Changed
        } else {
            Change::None
        }
    }
}

/// What [`Tracker::changed_since`] knows of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// No change of it since.
    None,
    /// Set or removed since.
    Changed,
    /// More changes since than are remembered: it may have changed.
    Unknown,
}

/// The memory tier and the trackers of every partition.
#[derive(Debug)]
pub struct KvMemory {
    /// Keyed by [`KvMemory::entry_key`], itself a hash: the cache mixes it
    /// with foldhash's fast hasher, not SipHash.
    cache: quick_cache::sync::Cache<
        EntryKey,
        Arc<KvEntryRow>,
        RowWeighter,
        foldhash::fast::RandomState,
    >,
    /// Hashes `(namespace, key)` to the tier's key ([`KvMemory::entry_key`]).
    /// foldhash, randomly seeded per instance, does not claim resistance to
    /// crafted collisions; one costs a miss here (the row found is checked
    /// against the names), never a wrong answer. The trackers' maps, keyed
    /// by the names themselves, keep std's SipHash.
    names: foldhash::quality::RandomState,
    partitions: Vec<Mutex<Tracker>>,
    /// Each partition's [`Tracker::generation`], readable without its lock
    /// (a read notes it before it looks the entry up).
    generations: Vec<AtomicU64>,
    tick: AtomicU64,
    /// Reads of namespaces past [`COUNTED_NAMESPACES_MAX`].
    uncounted: Mutex<Counters>,
}

/// The memory tier's weight of a row: its bytes plus
/// [`MEMORY_ENTRY_OVERHEAD_BYTES`].
#[derive(Debug, Clone, Copy)]
struct RowWeighter;

impl quick_cache::Weighter<EntryKey, Arc<KvEntryRow>> for RowWeighter {
    fn weight(&self, _key: &EntryKey, row: &Arc<KvEntryRow>) -> u64 {
        entry_bytes(row) + MEMORY_ENTRY_OVERHEAD_BYTES
    }
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
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(
                usize::try_from(memory_max_bytes / MEMORY_ESTIMATED_ENTRY_BYTES)
                    .unwrap_or(usize::MAX)
                    .clamp(MEMORY_SHARDS * 32, 1 << 20),
            )
            .weight_capacity(memory_max_bytes)
            .shards(MEMORY_SHARDS)
            .build()
            .expect("the memory tier's options are complete");
        let cache = quick_cache::sync::Cache::with_options(
            options,
            RowWeighter,
            // The keys are hashes already: a fast mix is enough.
            foldhash::fast::RandomState::default(),
            quick_cache::sync::DefaultLifecycle::default(),
        );
        Self {
            cache,
            names: foldhash::quality::RandomState::default(),
            partitions: (0..partitions).map(|_| Mutex::default()).collect(),
            generations: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            tick: AtomicU64::new(1),
            uncounted: Mutex::default(),
        }
    }

    /// Loads the namespaces' settings (first, [`KvMemory::load_settings`])
    /// then the entries of namespaces with limits from the view's rows (at
    /// start, before any writer runs); the other namespaces' entries need
    /// nothing in memory. Recency after a restart follows the entries'
    /// creation times.
    pub fn load_settings(
        &self,
        partition_of: impl Fn(&str) -> usize,
        settings: Vec<(String, KvNamespaceSettings)>,
    ) {
        for (namespace, s) in settings {
            self.partitions[partition_of(&namespace)]
                .lock()
                .namespace(&namespace)
                .settings = s;
        }
    }

    /// Whether the entries of `namespace` are all tracked (it has limits).
    pub fn tracks_all(&self, partition: usize, namespace: &str) -> bool {
        self.partitions[partition]
            .lock()
            .namespaces
            .get(namespace)
            .is_some_and(Namespace::limited)
    }

    /// Loads the entries of namespaces with limits (see
    /// [`KvMemory::load_settings`]); rows of other namespaces are skipped.
    pub fn load(&self, partition_of: impl Fn(&str) -> usize, mut entries: Vec<KvEntryRow>) {
        entries.sort_by_key(|r| r.created_at_ms);
        for row in entries {
            let mut tracker = self.partitions[partition_of(&row.namespace)].lock();
            let Some(ns) = tracker
                .namespaces
                .get_mut(&row.namespace)
                .filter(|ns| ns.limited())
            else {
                continue;
            };
            let info = EntryInfo::of(&row, self.next_tick());
            let key: Box<str> = row.key.into();
            ns.index(&key, &info);
            ns.entries.insert(key, info);
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

    /// The memory-tier key of `(namespace, key)`: a hash, seeded per
    /// instance, so the same entry hashes alike for the instance's life (see
    /// the module docs for collisions).
    pub fn entry_key(&self, namespace: &str, key: &str) -> EntryKey {
        use std::hash::BuildHasher as _;
        self.names.hash_one((namespace, key))
    }

    /// The memory tier's row of an entry.
    pub fn cached(&self, namespace: &str, key: &str) -> Option<Arc<KvEntryRow>> {
        self.cache
            .get(&self.entry_key(namespace, key))
            .filter(|row| row.namespace == namespace && row.key == key)
    }

    /// Whether the memory tier holds the entry (without counting as a use
    /// of it: `kv.stats` asks of every entry of a namespace, which must not
    /// keep them all in memory).
    pub fn in_memory(&self, namespace: &str, key: &str) -> bool {
        self.cache
            .peek(&self.entry_key(namespace, key))
            .is_some_and(|row| row.namespace == namespace && row.key == key)
    }

    /// Bytes the memory tier holds (its weights).
    pub fn memory_bytes(&self) -> u64 {
        self.cache.weight()
    }

    /// Puts a row read from disk in the memory tier, unless the partition
    /// was written since `generation` (see the module docs).
    pub fn fill(&self, partition: usize, generation: u64, row: Arc<KvEntryRow>) {
        let tracker = self.partitions[partition].lock();
        if tracker.generation == generation {
            self.cache
                .insert(self.entry_key(&row.namespace, &row.key), row);
        }
    }

    /// The partition's generation now.
    pub fn generation(&self, partition: usize) -> u64 {
        self.generations[partition].load(Ordering::Acquire)
    }

    /// Makes `tracker`'s generation (of `partition`, locked) the one
    /// reads note. Called last, once the memory tier is as the write left
    /// it: a read that notes the new generation finds the tier changed, and
    /// one that noted the old finds the change recorded.
    fn publish_generation(&self, partition: usize, tracker: &Tracker) {
        self.generations[partition].store(tracker.generation, Ordering::Release);
    }

    /// Counts a hit of `row`, a live entry (touching its recency), and
    /// answers its hit count and last access. `generation` is the
    /// partition's ([`KvMemory::generation`]) from before `row` was looked
    /// up.
    pub fn hit(
        &self,
        partition: usize,
        row: &KvEntryRow,
        now_ms: u64,
        generation: u64,
    ) -> EntryInfo {
        let tick = self.next_tick();
        let mut tracker = self.partitions[partition].lock();
        // `row` may be a row the writer has replaced or removed since the
        // read began: its hit counts for the namespace, but it must not
        // start tracking the entry, nor count on (or move) the entry that
        // replaced it.
        // (The entry's hash only when the partition changed at all: not on
        // the common hit.)
        let change = if tracker.generation == generation {
            Change::None
        } else {
            tracker.changed_since(self.entry_key(&row.namespace, &row.key), generation)
        };
        if !tracker.namespaces.contains_key(row.namespace.as_str()) {
            tracker.namespace(&row.namespace);
        }
        let Some(ns) = tracker.namespaces.get_mut(row.namespace.as_str()) else {
            return EntryInfo::default();
        };
        ns.counters.hits += 1;
        let hit = |info: &mut EntryInfo| {
            info.tick = tick;
            info.last_accessed_ms = now_ms;
            info.hits += 1;
            *info
        };
        if change == Change::Changed {
            return hit(&mut EntryInfo::of(row, tick));
        }
        // A namespace with limits tracks every live entry already (one
        // deleted meanwhile must not come back); elsewhere the first read
        // of an entry starts tracking it (one lookup when tracked: this is
        // every `kv.get` hit).
        if !ns.limited() {
            if let Some(info) = ns.entries.get_mut(row.key.as_str()) {
                return hit(info);
            }
            if change == Change::Unknown {
                // The entry may be gone: not tracked from this row.
                return hit(&mut EntryInfo::of(row, tick));
            }
            return hit(ns
                .entries
                .entry(row.key.as_str().into())
                .or_insert(EntryInfo::of(row, tick)));
        }
        ns.touch(&row.key, tick, now_ms, true);
        ns.entries
            .get(row.key.as_str())
            .copied()
            .unwrap_or_else(|| EntryInfo::of(row, tick))
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

    /// What the tracker knows of the entry of `row`, else what its row
    /// says (an entry never read).
    pub fn info(&self, partition: usize, row: &KvEntryRow) -> EntryInfo {
        let tracker = self.partitions[partition].lock();
        tracker
            .namespaces
            .get(row.namespace.as_str())
            .and_then(|ns| ns.entries.get(row.key.as_str()))
            .copied()
            .unwrap_or_else(|| EntryInfo::of(row, 0))
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
        let entry = self.entry_key(&row.namespace, &row.key);
        let mut tracker = self.partitions[partition].lock();
        tracker.generation += 1;
        // A read of the row replaced must not track it again.
        tracker.changed(entry);
        let bytes = entry_bytes(&row);
        let ns = tracker.namespace(&row.namespace);
        let old = ns.entries.remove_entry(row.key.as_str());
        if !ns.limited() {
            // Never read since set: nothing to track.
            self.cache.insert(entry, row);
            self.publish_generation(partition, &tracker);
            return;
        }
        let key: Box<str> = match old {
            Some((key, old)) => {
                ns.unindex(&key, &old);
                key
            }
            None => row.key.as_str().into(),
        };
        let info = EntryInfo {
            tick,
            bytes,
            expires_at_ms: row.expires_at_ms,
            hits: 0,
            last_accessed_ms: now_ms,
        };
        ns.index(&key, &info);
        ns.entries.insert(key, info);
        self.cache.insert(entry, row);
        self.publish_generation(partition, &tracker);
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
                if ns.limited() {
                    ns.unindex(key, &old);
                }
                if evicted {
                    ns.counters.evictions += 1;
                }
            }
            let entry = self.entry_key(namespace, key);
            tracker.changed(entry);
            self.cache.remove(&entry);
        }
        self.publish_generation(partition, &tracker);
    }

    /// After a committed `kv.configure`: `rows` are the namespace's
    /// entries as the view holds them, needed when it gets limits (see
    /// the module docs).
    pub fn committed_settings(
        &self,
        partition: usize,
        namespace: &str,
        s: KvNamespaceSettings,
        rows: Option<Vec<IndexedEntry>>,
    ) {
        let mut tracker = self.partitions[partition].lock();
        tracker.generation += 1;
        tracker
            .namespace(namespace)
            .apply_settings(s, rows, || self.next_tick());
        self.publish_generation(partition, &tracker);
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
        memory
            .cache
            .insert(memory.entry_key("ns", "b"), row("ns", "a"));
        assert!(memory.cached("ns", "b").is_none());
        assert!(!memory.in_memory("ns", "b"));
    }

    /// A set whose row is too heavy for the memory tier's shards is not
    /// admitted, and takes out the row the tier held for its entry: the
    /// entry is answered from disk, never from the row it replaced.
    #[test]
    fn a_row_too_heavy_for_the_tier_takes_out_the_row_it_replaces() {
        // Four shards of 1 KiB: a row of 2,000 bytes fits none.
        let memory = KvMemory::new(1, 4096);
        memory.committed_set(0, row("ns", "a"), 1);
        assert_eq!(
            memory.cached("ns", "a").map(|r| r.value.clone()),
            Some(b"1".to_vec())
        );
        let heavy = Arc::new(KvEntryRow {
            value: vec![b'x'; 2000],
            ..(*row("ns", "a")).clone()
        });
        memory.committed_set(0, heavy, 2);
        assert!(memory.cached("ns", "a").is_none());
        assert_eq!(memory.memory_bytes(), 0);
        // A lighter row of it is admitted again.
        memory.committed_set(0, row("ns", "a"), 3);
        assert!(memory.in_memory("ns", "a"));
        assert_eq!(
            memory.memory_bytes(),
            entry_bytes(&row("ns", "a")) + MEMORY_ENTRY_OVERHEAD_BYTES
        );
    }

    /// A read that found an entry before the writer removed or replaced
    /// it does not track the row it found (it would stay tracked for an
    /// entry that no longer exists, or lend its hits to the new one); a
    /// read after the change, or of an entry that did not change, does.
    #[test]
    fn a_first_hit_racing_a_change_of_its_entry_does_not_track_it() {
        let memory = KvMemory::new(1, 1 << 20);
        let tracked = |memory: &KvMemory| {
            let mut tracker = memory.partition(0).lock();
            let mut keys: Vec<String> = tracker
                .namespace("ns")
                .entries
                .keys()
                .map(|k| k.to_string())
                .collect();
            keys.sort();
            keys
        };
        let (a, b) = (row("ns", "a"), row("ns", "b"));
        memory.committed_set(0, a.clone(), 1);
        memory.committed_set(0, b.clone(), 1);

        // Deleted between the read's lookup and its hit.
        let before = memory.generation(0);
        memory.committed_removal(0, [("ns", "a")], false);
        let hit = memory.hit(0, &a, 5, before);
        assert_eq!((hit.hits, hit.last_accessed_ms), (1, 5));
        assert_eq!(tracked(&memory), Vec::<String>::new());
        assert_eq!(memory.counters(Some("ns")).hits, 1);

        // Another entry changed meanwhile: b's row is still b's.
        let before = memory.generation(0);
        memory.committed_set(0, row("ns", "c"), 6);
        assert_eq!(memory.hit(0, &b, 7, before).hits, 1);
        assert_eq!(tracked(&memory), ["b"]);
        assert_eq!(memory.hit(0, &b, 8, memory.generation(0)).hits, 2);

        // Replaced meanwhile: the old row's hit is not the new entry's.
        memory.committed_set(0, a.clone(), 9);
        let before = memory.generation(0);
        let replaced = Arc::new(KvEntryRow {
            value: b"2".to_vec(),
            ..(*a).clone()
        });
        memory.committed_set(0, replaced.clone(), 10);
        assert_eq!(memory.hit(0, &a, 11, before).hits, 1);
        assert_eq!(tracked(&memory), ["b"]);
        assert_eq!(memory.hit(0, &replaced, 12, memory.generation(0)).hits, 1);
        assert_eq!(tracked(&memory), ["a", "b"]);

        // Replaced, and the new row read and tracked, before the old
        // row's hit: that hit is not the new entry's.
        let before = memory.generation(0);
        let b2 = Arc::new(KvEntryRow {
            value: b"2".to_vec(),
            ..(*b).clone()
        });
        memory.committed_set(0, b2.clone(), 13);
        assert_eq!(memory.hit(0, &b2, 14, memory.generation(0)).hits, 1);
        let stale = memory.hit(0, &b, 15, before);
        assert_eq!((stale.hits, stale.last_accessed_ms), (1, 15));
        let info = memory.info(0, &b2);
        assert_eq!((info.hits, info.last_accessed_ms), (1, 14));

        // Deleted while the namespace had limits, which it lost before
        // the hit: not tracked either.
        let limits = KvNamespaceSettings {
            max_entries: 10,
            ..KvNamespaceSettings::default()
        };
        memory.committed_settings(0, "lim", limits, Some(Vec::new()));
        let l = row("lim", "a");
        memory.committed_set(0, l.clone(), 16);
        let before = memory.generation(0);
        memory.committed_removal(0, [("lim", "a")], false);
        memory.committed_settings(0, "lim", KvNamespaceSettings::default(), None);
        assert_eq!(memory.hit(0, &l, 17, before).hits, 1);
        assert!(memory
            .partition(0)
            .lock()
            .namespace("lim")
            .entries
            .is_empty());

        // More changes since the read than are remembered: not tracked.
        let before = memory.generation(0);
        for i in 0..=CHANGES_KEPT {
            memory.committed_set(0, row("other", &format!("k{i}")), 13);
        }
        assert_eq!(memory.hit(0, &row("ns", "c"), 14, before).hits, 1);
        assert_eq!(tracked(&memory), ["a", "b"]);
        // A tracked entry's hit still counts when the changes since the
        // read are no longer all remembered.
        let b_hits = memory.info(0, &b2).hits;
        assert_eq!(memory.hit(0, &b2, 14, before).hits, b_hits + 1);
        assert_eq!(
            memory
                .hit(0, &row("ns", "c"), 15, memory.generation(0))
                .hits,
            1
        );
        assert_eq!(tracked(&memory), ["a", "b", "c"]);
    }

    #[test]
    fn without_limits_only_entries_read_are_tracked_and_limits_index_them_all() {
        let memory = KvMemory::new(1, 1 << 20);
        let rows: Vec<_> = ["a", "b", "c"].iter().map(|k| row("ns", k)).collect();
        for r in &rows {
            memory.committed_set(0, r.clone(), 1);
        }
        // Nothing tracked for entries never read; their info is their row's.
        assert!(memory
            .partition(0)
            .lock()
            .namespace("ns")
            .entries
            .is_empty());
        assert_eq!(
            (
                memory.info(0, &rows[1]).hits,
                memory.info(0, &rows[1]).last_accessed_ms
            ),
            (0, 0)
        );
        let hit = memory.hit(0, &rows[0], 2, memory.generation(0));
        assert_eq!((hit.hits, hit.last_accessed_ms), (1, 2));
        {
            let mut tracker = memory.partition(0).lock();
            let ns = tracker.namespace("ns");
            let tracked: Vec<&str> = ns.entries.keys().map(|k| &**k).collect();
            assert_eq!(tracked, ["a"]);
            assert!(ns.recency.is_empty());
        }
        // Limits: every entry of the view indexed, least recent first (b
        // and c set at the same instant: by key), a (hit last) last.
        let limits = KvNamespaceSettings {
            max_entries: 2,
            ..KvNamespaceSettings::default()
        };
        let view: Vec<IndexedEntry> = rows
            .iter()
            .map(|r| (r.key.as_str().into(), EntryInfo::of(r, 0)))
            .collect();
        memory.committed_settings(0, "ns", limits, Some(view));
        {
            let mut tracker = memory.partition(0).lock();
            let ns = tracker.namespace("ns");
            let order: Vec<&str> = ns.recency.values().map(|k| &**k).collect();
            assert_eq!(order, ["b", "c", "a"]);
            assert_eq!((ns.entries.len(), ns.bytes), (3, 12));
            assert_eq!(ns.entries["a"].hits, 1);
            assert_eq!(
                ns.victims("", &HashSet::new(), |removed, _| 3 - removed <= 2),
                [("b".to_owned(), 4)]
            );
        }
        // Limits gone: only the entry read stays tracked.
        memory.committed_settings(0, "ns", KvNamespaceSettings::default(), None);
        let mut tracker = memory.partition(0).lock();
        let ns = tracker.namespace("ns");
        assert!(ns.recency.is_empty());
        let tracked: Vec<&str> = ns.entries.keys().map(|k| &**k).collect();
        assert_eq!(tracked, ["a"]);
    }
}
