//! The node-wide memory budget of syncs (`sync.memory-budget-bytes`).
//!
//! A sync does not hold a repository in memory: it reads, stores and
//! appends its package revisions a chunk at a time (see
//! `crate::repository::sync`). Before it reads a chunk it reserves the
//! bytes the chunk may take from this budget — one budget for every sync of
//! the node, a tokio semaphore counted in KiB — and gives them back once
//! the chunk's events committed and the chunk was dropped. So however large
//! the repositories and however many syncs run at once (within
//! `sync.max-concurrent`), their chunks together stay within the budget; a
//! sync that would exceed it waits (fairly: first come, first served).
//!
//! What one chunk may take ([`SyncBudget::chunk_bytes`]) is the budget
//! shared out so that every sync allowed to run at once can hold
//! [`CHUNKS_IN_FLIGHT_PER_SYNC`] chunks (one being appended while the next
//! is read) without waiting: `budget / (2 × max-concurrent)`. A chunk's
//! size is an estimate (see `crate::repository::reconcile`), corrected when
//! the chunk is read: one that came out smaller gives the rest back at once
//! ([`BudgetPermit::shrink`]); one that came out larger gives its share
//! back and reserves all it takes afresh (at most the whole budget) before
//! it is appended. A sync never waits for the budget while holding a
//! reservation that only its own progress would free, so syncs cannot
//! deadlock on it.
//!
//! The counts are published on a `watch` channel (reserved now, the peak,
//! chunks appended), so tests and metrics can follow them.

use std::sync::Arc;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// Chunks one sync holds at once: one being appended, the next being read.
pub const CHUNKS_IN_FLIGHT_PER_SYNC: u64 = 2;

/// The default budget, in bytes (256 MiB).
pub const DEFAULT_BUDGET_BYTES: u64 = 256 << 20;

/// The smallest budget, in bytes (64 KiB): below it a chunk could not hold
/// a revision.
pub const MIN_BUDGET_BYTES: u64 = 64 << 10;

/// The largest budget, in bytes (1 TiB): the semaphore counts KiB in `u32`
/// per acquisition.
pub const MAX_BUDGET_BYTES: u64 = 1 << 40;

/// The semaphore's unit, in bytes.
const UNIT_BYTES: u64 = 1024;

/// What the budget holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetState {
    /// Bytes reserved by chunks in flight.
    pub reserved_bytes: u64,
    /// The most ever reserved at once.
    pub peak_bytes: u64,
    /// Chunks of package revision events syncs appended so far.
    pub chunks_appended: u64,
}

/// The budget and its counts.
#[derive(Debug)]
pub struct SyncBudget {
    semaphore: Arc<Semaphore>,
    budget_units: u64,
    chunk_bytes: u64,
    state: Arc<watch::Sender<BudgetState>>,
}

/// Bytes reserved for one chunk; given back when dropped.
#[derive(Debug)]
pub struct BudgetPermit {
    permit: OwnedSemaphorePermit,
    state: Arc<watch::Sender<BudgetState>>,
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        let bytes = self.bytes();
        self.state
            .send_modify(|s| s.reserved_bytes = s.reserved_bytes.saturating_sub(bytes));
    }
}

impl BudgetPermit {
    /// Bytes reserved.
    pub fn bytes(&self) -> u64 {
        self.permit.num_permits() as u64 * UNIT_BYTES
    }

    /// Gives back what is held beyond `bytes` (at least one unit is kept).
    pub fn shrink(&mut self, bytes: u64) {
        let keep = units(bytes).max(1);
        let held = self.permit.num_permits() as u64;
        if keep >= held {
            return;
        }
        if let Some(freed) = self.permit.split((held - keep) as usize) {
            let bytes = freed.num_permits() as u64 * UNIT_BYTES;
            drop(freed);
            self.state
                .send_modify(|s| s.reserved_bytes = s.reserved_bytes.saturating_sub(bytes));
        }
    }
}

/// `bytes` in semaphore units, rounded up.
fn units(bytes: u64) -> u64 {
    bytes.div_ceil(UNIT_BYTES)
}

impl SyncBudget {
    /// A budget of `budget_bytes` (clamped to [`MIN_BUDGET_BYTES`]..=
    /// [`MAX_BUDGET_BYTES`]) shared by at most `max_concurrent` syncs.
    pub fn new(budget_bytes: u64, max_concurrent: usize) -> Self {
        let budget_bytes = budget_bytes.clamp(MIN_BUDGET_BYTES, MAX_BUDGET_BYTES);
        let budget_units = units(budget_bytes);
        let shares = CHUNKS_IN_FLIGHT_PER_SYNC * max_concurrent.max(1) as u64;
        Self {
            semaphore: Arc::new(Semaphore::new(budget_units as usize)),
            budget_units,
            chunk_bytes: (budget_units / shares).max(1) * UNIT_BYTES,
            state: Arc::new(watch::Sender::new(BudgetState::default())),
        }
    }

    /// The whole budget, in bytes.
    pub fn budget_bytes(&self) -> u64 {
        self.budget_units * UNIT_BYTES
    }

    /// What one chunk reserves before it is read, in bytes.
    pub fn chunk_bytes(&self) -> u64 {
        self.chunk_bytes
    }

    /// Waits until `bytes` (at most the whole budget, at least one unit)
    /// are free, and reserves them.
    pub async fn reserve(&self, bytes: u64) -> BudgetPermit {
        let want = units(bytes).clamp(1, self.budget_units);
        let permit = self
            .semaphore
            .clone()
            .acquire_many_owned(want as u32)
            .await
            .expect("the budget semaphore is never closed");
        let reserved = permit.num_permits() as u64 * UNIT_BYTES;
        self.state.send_modify(|s| {
            s.reserved_bytes += reserved;
            s.peak_bytes = s.peak_bytes.max(s.reserved_bytes);
        });
        BudgetPermit {
            permit,
            state: self.state.clone(),
        }
    }

    /// Counts one chunk of package revision events appended.
    pub fn chunk_appended(&self) {
        self.state.send_modify(|s| s.chunks_appended += 1);
    }

    /// The counts now and as they change.
    pub fn subscribe(&self) -> watch::Receiver<BudgetState> {
        self.state.subscribe()
    }
}

impl Default for SyncBudget {
    /// [`DEFAULT_BUDGET_BYTES`] for the default `sync.max-concurrent` (4).
    fn default() -> Self {
        Self::new(DEFAULT_BUDGET_BYTES, 4)
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn chunks_share_the_budget_and_wait_for_what_others_hold() {
        // 256 KiB for 2 syncs: 64 KiB a chunk.
        let budget = SyncBudget::new(256 << 10, 2);
        assert_eq!(budget.chunk_bytes(), 64 << 10);
        let mut a = budget.reserve(budget.chunk_bytes()).await;
        let b = budget.reserve(100 << 10).await;
        assert_eq!((a.bytes(), b.bytes()), (64 << 10, 100 << 10));
        // 92 KiB left: a chunk of 100 KiB waits…
        let mut c = Box::pin(budget.reserve(100 << 10));
        assert!((&mut c).now_or_never().is_none());
        // …until a chunk that came out smaller gives some back.
        a.shrink(50 << 10);
        assert_eq!(a.bytes(), 50 << 10);
        let c = c.await;
        assert_eq!(
            *budget.subscribe().borrow(),
            BudgetState {
                reserved_bytes: 250 << 10,
                peak_bytes: 250 << 10,
                chunks_appended: 0
            }
        );
        drop((a, b, c));
        let state = *budget.subscribe().borrow();
        assert_eq!((state.reserved_bytes, state.peak_bytes), (0, 250 << 10));
    }

    #[tokio::test]
    async fn a_reservation_is_at_most_the_whole_budget() {
        let budget = SyncBudget::new(MIN_BUDGET_BYTES, 4);
        assert_eq!(budget.chunk_bytes(), MIN_BUDGET_BYTES / 8);
        let permit = budget.reserve(u64::MAX / 2).await;
        assert_eq!(permit.bytes(), MIN_BUDGET_BYTES);
        drop(permit);
        assert_eq!(budget.reserve(0).await.bytes(), 1024, "at least one KiB");
        // A budget below the minimum is the minimum.
        assert_eq!(SyncBudget::new(1, 1).budget_bytes(), MIN_BUDGET_BYTES);
    }
}
