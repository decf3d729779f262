//! Limits of a node's watches: [`WatchConfig`] and the heartbeat bounds.
//!
//! A leaf: the hub, the Watcher actor and the service read these, and this
//! module uses no other watch module.

/// Limits of the watches of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchConfig {
    /// Capacity of each watcher's queue, in events. Default: 10000.
    pub queue_size: usize,
    /// Live watchers at most; more are refused with 503. Default: 1024.
    pub max_watchers: usize,
    /// Events read from the log at once (hub dispatch and resume replay).
    /// Default: 512.
    pub read_batch_events: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            queue_size: 10_000,
            max_watchers: 1024,
            read_batch_events: 512,
        }
    }
}

/// Default idle time before a heartbeat, in milliseconds.
pub const DEFAULT_HEARTBEAT_MS: u64 = 5000;
/// Shortest heartbeat interval a client may ask for, in milliseconds.
pub const MIN_HEARTBEAT_MS: u64 = 100;
/// Longest heartbeat interval a client may ask for, in milliseconds.
pub const MAX_HEARTBEAT_MS: u64 = 60_000;
/// Unanswered heartbeats in a row after which a watcher stops.
pub const MAX_MISSED_HEARTBEATS: u32 = 2;
/// While events flow, a heartbeat still goes out after this many intervals
/// since the last one (so a vanished client is noticed under load too).
pub const BUSY_HEARTBEAT_INTERVALS: u32 = 4;
