//! The node-wide cap on syncs running at once.
//!
//! Every sync (scheduled, manual, at registration or start-up) takes a slot
//! before it opens with `SyncStarted` and gives it back when it finished;
//! the rest wait in line (tokio's semaphore is fair: first come, first
//! served). The counts are published on a `watch` channel, so tests and
//! metrics can follow them without polling.

use std::sync::Arc;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// Syncs running and waiting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotState {
    /// Holding a slot.
    pub running: usize,
    /// Waiting for one.
    pub waiting: usize,
    /// The most that ever ran at once.
    pub peak: usize,
}

/// The cap and its counts.
#[derive(Debug)]
pub struct SyncSlots {
    semaphore: Arc<Semaphore>,
    state: Arc<watch::Sender<SlotState>>,
}

/// A slot; given back when dropped.
#[derive(Debug)]
pub struct SyncSlot {
    _permit: OwnedSemaphorePermit,
    state: Arc<watch::Sender<SlotState>>,
}

impl Drop for SyncSlot {
    fn drop(&mut self) {
        self.state.send_modify(|s| s.running -= 1);
    }
}

impl SyncSlots {
    /// At most `max` (at least 1) syncs at once.
    pub fn new(max: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(max.max(1))),
            state: Arc::new(watch::Sender::new(SlotState::default())),
        }
    }

    /// Waits for a slot (counted as waiting meanwhile, also when the wait
    /// is given up).
    pub async fn acquire(&self) -> SyncSlot {
        struct Waiting<'a>(&'a watch::Sender<SlotState>);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.send_modify(|s| s.waiting -= 1);
            }
        }
        self.state.send_modify(|s| s.waiting += 1);
        let waiting = Waiting(&self.state);
        let permit = self
            .semaphore
            .clone()
            .acquire_owned()
            .await
            .expect("the sync semaphore is never closed");
        drop(waiting);
        self.state.send_modify(|s| {
            s.running += 1;
            s.peak = s.peak.max(s.running);
        });
        SyncSlot {
            _permit: permit,
            state: self.state.clone(),
        }
    }

    /// The counts now and as they change.
    pub fn subscribe(&self) -> watch::Receiver<SlotState> {
        self.state.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn at_most_max_hold_a_slot_and_the_rest_wait_in_line() {
        let slots = SyncSlots::new(2);
        let a = slots.acquire().await;
        let _b = slots.acquire().await;
        let mut third = Box::pin(slots.acquire());
        assert!((&mut third).now_or_never().is_none());
        let state = *slots.subscribe().borrow();
        assert_eq!(
            state,
            SlotState {
                running: 2,
                waiting: 1,
                peak: 2
            }
        );
        drop(a);
        let _c = third.await;
        assert_eq!(
            *slots.subscribe().borrow(),
            SlotState {
                running: 2,
                waiting: 0,
                peak: 2
            }
        );
    }
}
