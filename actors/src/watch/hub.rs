//! The [`WatchHub`]: one per node. It follows the store's commits, reads
//! each new envelope once and dispatches it to the bounded queue of every
//! watcher whose filter admits it (see the module docs of
//! [`crate::watch`]).
//!
//! Registration and dispatch share one lock, and dispatch moves the hub's
//! position (`dispatched`) in the same critical section as it queues, so a
//! watcher registered at position `D` gets, through its queue, exactly the
//! admitted envelopes after `D` — what it reads from the log or a snapshot
//! covers the rest.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
};

use actix::Recipient;
use cairn_events::v1::Envelope;
use cairn_storage::{EventLog, Store};
use parking_lot::Mutex;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tracing::{debug, warn};

use super::error::WatchError;
use super::{config::WatchConfig, filter::WatchFilter, messages::StopWatch};

/// The node's watch hub. Cheap to clone.
#[derive(Clone)]
pub struct WatchHub {
    inner: Arc<HubInner>,
}

impl std::fmt::Debug for WatchHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.state.lock();
        f.debug_struct("WatchHub")
            .field("watchers", &state.slots.len())
            .field("dispatched", &state.dispatched)
            .finish()
    }
}

struct HubInner {
    store: Store,
    config: WatchConfig,
    state: Mutex<HubState>,
    task: Mutex<Option<JoinHandle<()>>>,
}

struct HubState {
    /// Every envelope up to here has been offered to the registered
    /// watchers (or there were none).
    dispatched: u64,
    slots: HashMap<String, Slot>,
    closed: bool,
}

struct Slot {
    filter: Arc<WatchFilter>,
    /// `None` once the queue overflowed.
    queue: Option<mpsc::Sender<Arc<Envelope>>>,
    overflowed: Arc<AtomicBool>,
    /// Envelopes queued and not yet taken by the watcher.
    pending: Arc<AtomicUsize>,
    /// The watcher actor, once started.
    watcher: Option<Recipient<StopWatch>>,
}

/// A watcher's place in the hub.
#[derive(Debug)]
pub struct Registration {
    /// The watch id (a UUID v7).
    pub id: String,
    /// The admitted envelopes after [`Registration::from_seq`], in log
    /// order. Ends after an overflow (then [`Registration::overflowed`] is
    /// set), when the watch is stopped, or when the hub shuts down.
    pub queue: mpsc::Receiver<Arc<Envelope>>,
    /// Set when the queue overflowed: the watcher must tell its client to
    /// relist.
    pub overflowed: Arc<AtomicBool>,
    /// The hub's position at registration: the queue holds what comes after.
    pub from_seq: u64,
    /// Envelopes in the queue: the hub counts each one in, the watcher
    /// counts each one it takes out (see [`WatchHub::quiet_position`]).
    pub pending: Arc<AtomicUsize>,
}

impl WatchHub {
    /// Starts following `store` from its current end. Must be called inside
    /// a tokio runtime (the node's actix system).
    pub fn start(store: Store, config: WatchConfig) -> Self {
        let mut committed = store.subscribe();
        let dispatched = *committed.borrow_and_update();
        let inner = Arc::new(HubInner {
            store,
            config,
            state: Mutex::new(HubState {
                dispatched,
                slots: HashMap::new(),
                closed: false,
            }),
            task: Mutex::new(None),
        });
        let task = tokio::spawn(follow(inner.clone(), committed));
        *inner.task.lock() = Some(task);
        Self { inner }
    }

    /// The limits.
    pub fn config(&self) -> &WatchConfig {
        &self.inner.config
    }

    /// Registers a watcher with `filter`. Refused (503) when the hub holds
    /// `max_watchers` already or is shut down.
    pub fn register(&self, filter: Arc<WatchFilter>) -> Result<Registration, WatchError> {
        let mut state = self.inner.state.lock();
        if state.closed {
            return Err(WatchError::ShuttingDown);
        }
        let max = self.inner.config.max_watchers;
        if state.slots.len() >= max {
            return Err(WatchError::TooManyWatchers { max });
        }
        let id = cairn_events::envelope::new_id();
        let (tx, queue) = mpsc::channel(self.inner.config.queue_size.max(1));
        let overflowed = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(AtomicUsize::new(0));
        state.slots.insert(
            id.clone(),
            Slot {
                filter,
                queue: Some(tx),
                overflowed: overflowed.clone(),
                pending: pending.clone(),
                watcher: None,
            },
        );
        Ok(Registration {
            id,
            queue,
            overflowed,
            from_seq: state.dispatched,
            pending,
        })
    }

    /// Records the actor of watch `id`, so [`WatchHub::stop`] and shutdown
    /// reach it. `false` when the watch is gone already (stopped, or the
    /// hub shut down): the caller stops the actor itself.
    pub fn attach(&self, id: &str, watcher: Recipient<StopWatch>) -> bool {
        match self.inner.state.lock().slots.get_mut(id) {
            Some(slot) => {
                slot.watcher = Some(watcher);
                true
            }
            None => false,
        }
    }

    /// Removes watch `id` (a watcher leaving by itself). Idempotent.
    pub fn unregister(&self, id: &str) {
        self.inner.state.lock().slots.remove(id);
    }

    /// Stops watch `id`: removes it and tells its actor, with the caller's
    /// span (the `watch.stop` command's). `false` when no such watch is
    /// registered.
    pub fn stop(&self, id: &str) -> bool {
        let slot = self.inner.state.lock().slots.remove(id);
        match slot {
            Some(slot) => {
                if let Some(watcher) = slot.watcher {
                    watcher.do_send(StopWatch {
                        span: tracing::Span::current(),
                    });
                }
                true
            }
            None => false,
        }
    }

    /// Live watchers.
    pub fn len(&self) -> usize {
        self.inner.state.lock().slots.len()
    }

    /// Whether no watcher is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hub's dispatch position.
    pub fn dispatched(&self) -> u64 {
        self.inner.state.lock().dispatched
    }

    /// The hub's position when watch `id` has taken everything queued for
    /// it: every envelope up to it that the watch admits has then been
    /// taken from its queue (queueing and moving the position happen under
    /// one lock). `None` while envelopes wait, after an overflow, or for an
    /// unknown watch.
    pub fn quiet_position(&self, id: &str) -> Option<u64> {
        let state = self.inner.state.lock();
        let slot = state.slots.get(id)?;
        (slot.queue.is_some() && slot.pending.load(Ordering::SeqCst) == 0)
            .then_some(state.dispatched)
    }

    /// Stops following the store and stops every watcher; later
    /// registrations are refused.
    pub fn shutdown(&self) {
        if let Some(task) = self.inner.task.lock().take() {
            task.abort();
        }
        let slots: Vec<Slot> = {
            let mut state = self.inner.state.lock();
            state.closed = true;
            state.slots.drain().map(|(_, slot)| slot).collect()
        };
        for slot in slots {
            if let Some(watcher) = slot.watcher {
                watcher.do_send(StopWatch {
                    span: tracing::Span::current(),
                });
            }
        }
    }
}

/// The hub's task: after each commit, reads what the watchers have not
/// been offered yet and dispatches it.
async fn follow(inner: Arc<HubInner>, mut committed: watch::Receiver<u64>) {
    let batch = inner.config.read_batch_events.max(1) as u64;
    loop {
        let target = *committed.borrow_and_update();
        loop {
            let from = {
                let mut state = inner.state.lock();
                if state.dispatched >= target {
                    break;
                }
                if state.slots.is_empty() {
                    // Nobody to offer them to: a watcher registered later
                    // reads what came before it from the log.
                    state.dispatched = target;
                    break;
                }
                state.dispatched + 1
            };
            let limit = (target - from + 1).min(batch) as usize;
            let store = inner.store.clone();
            let read = tokio::task::spawn_blocking(move || store.read_all(from, limit)).await;
            let envelopes = match read {
                Ok(Ok(envelopes)) if !envelopes.is_empty() => envelopes,
                Ok(Ok(_)) => {
                    warn!(
                        from,
                        target, "watch hub: log ends before its committed position"
                    );
                    overflow_all(&inner, target);
                    break;
                }
                Ok(Err(e)) => {
                    warn!(error = %e, from, "watch hub: reading the log failed; watchers told to relist");
                    overflow_all(&inner, target);
                    break;
                }
                Err(e) => {
                    warn!(error = %e, "watch hub: read task failed; watchers told to relist");
                    overflow_all(&inner, target);
                    break;
                }
            };
            dispatch(&inner, envelopes);
        }
        if committed.changed().await.is_err() {
            debug!("watch hub: store closed");
            return;
        }
    }
}

/// Offers `envelopes` (the next ones after `dispatched`, in order) to every
/// watcher, without yielding. A full queue overflows its watcher.
fn dispatch(inner: &HubInner, envelopes: Vec<cairn_events::v1::Envelope>) {
    let mut state = inner.state.lock();
    for envelope in envelopes {
        if envelope.seq <= state.dispatched {
            continue;
        }
        let seq = envelope.seq;
        let envelope = Arc::new(envelope);
        for (id, slot) in state.slots.iter_mut() {
            let Some(queue) = &slot.queue else { continue };
            if !slot.filter.admits(&envelope) {
                continue;
            }
            if let Err(e) = queue.try_send(envelope.clone()) {
                if matches!(e, mpsc::error::TrySendError::Full(_)) {
                    debug!(watch = %id, seq, "watch queue full; the watcher will ask for a relist");
                }
                slot.overflowed.store(true, Ordering::SeqCst);
                slot.queue = None;
            } else {
                slot.pending.fetch_add(1, Ordering::SeqCst);
            }
        }
        state.dispatched = seq;
    }
}

/// Gives up on every watcher's queue (they relist) and moves to `target`.
fn overflow_all(inner: &HubInner, target: u64) {
    let mut state = inner.state.lock();
    for slot in state.slots.values_mut() {
        slot.overflowed.store(true, Ordering::SeqCst);
        slot.queue = None;
    }
    state.dispatched = state.dispatched.max(target);
}
