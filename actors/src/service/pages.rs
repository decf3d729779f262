//! Rendered JSON `pkgrev.list` pages, kept for clients that list the same
//! thing again (informers relisting, dashboards polling): they get the
//! bytes already made instead of another scan.
//!
//! An entry is keyed by the request body and tagged with the log position
//! it was rendered at, and it is served only while nothing was committed
//! since — the rule of the store's row cache — so a cached page is never
//! older than the views. Bounded by the total size of the pages held
//! (least recently used go first).

use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;

/// Rendered pages, bounded by bytes.
#[derive(Debug)]
pub struct PageCache {
    state: Mutex<State>,
    budget: usize,
}

#[derive(Debug)]
struct State {
    pages: LruCache<Vec<u8>, (u64, Bytes)>,
    bytes: usize,
}

impl PageCache {
    /// A cache holding at most `budget` bytes of pages (0: none).
    pub fn new(budget: usize) -> Self {
        PageCache {
            state: Mutex::new(State {
                pages: LruCache::unbounded(),
                bytes: 0,
            }),
            budget,
        }
    }

    /// The page rendered for `request` when the log was at `seq`, if any.
    pub fn get(&self, request: &[u8], seq: u64) -> Option<Bytes> {
        let mut state = self.state.lock();
        match state.pages.get(request) {
            Some((at, page)) if *at == seq => Some(page.clone()),
            Some(_) => {
                // Rendered before a later commit: never valid again.
                if let Some((_, (_, stale))) = state.pages.pop_entry(request) {
                    state.bytes -= stale.len() + request.len();
                }
                None
            }
            None => None,
        }
    }

    /// Keeps `page`, rendered for `request` at log position `seq`.
    pub fn put(&self, request: Vec<u8>, seq: u64, page: Bytes) {
        let size = page.len() + request.len();
        if size > self.budget {
            return;
        }
        let mut state = self.state.lock();
        if let Some((old_key, (_, old))) = state.pages.push(request, (seq, page)) {
            state.bytes -= old.len() + old_key.len();
        }
        state.bytes += size;
        while state.bytes > self.budget {
            let Some((key, (_, page))) = state.pages.pop_lru() else {
                break;
            };
            state.bytes -= page.len() + key.len();
        }
    }

    /// Bytes of pages held.
    pub fn bytes(&self) -> usize {
        self.state.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_serve_only_at_their_position_and_stay_within_budget() {
        let cache = PageCache::new(100);
        cache.put(b"a".to_vec(), 7, Bytes::from_static(&[1; 40]));
        assert_eq!(cache.get(b"a", 7).map(|p| p.len()), Some(40));
        assert_eq!(cache.get(b"b", 7), None);
        // A commit since: not served, and dropped.
        assert_eq!(cache.get(b"a", 8), None);
        assert_eq!(cache.bytes(), 0);
        // Over budget: least recently used go first; too large: not kept.
        cache.put(b"a".to_vec(), 8, Bytes::from_static(&[1; 40]));
        cache.put(b"b".to_vec(), 8, Bytes::from_static(&[2; 40]));
        assert!(cache.get(b"a", 8).is_some());
        cache.put(b"c".to_vec(), 8, Bytes::from_static(&[3; 40]));
        assert_eq!(cache.get(b"b", 8), None);
        assert!(cache.get(b"a", 8).is_some() && cache.get(b"c", 8).is_some());
        assert_eq!(cache.bytes(), 82);
        cache.put(b"d".to_vec(), 8, Bytes::from_static(&[4; 200]));
        assert_eq!(cache.get(b"d", 8), None);
        // Replacing a key accounts for the old page.
        cache.put(b"a".to_vec(), 9, Bytes::from_static(&[5; 10]));
        assert_eq!(cache.bytes(), 52);
    }
}
