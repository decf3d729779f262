//! [`CommitObserver`]: in-memory state kept in step with the log.
//!
//! A component that keeps in memory what the views already say (the
//! key-value cache's memory tier and trackers) must never serve what a
//! commit changed once that commit's sequence number is visible — on a
//! cluster node, commits arrive from the replicated log, not from the
//! node's own writers. So the store tells its observers of every commit
//! it writes — appends and replicated commits alike — on the writer
//! thread, **after** the write and **before** the new last sequence number
//! is announced ([`crate::Store::subscribe`]): a reader that waited for a
//! seq (`Cairn-Min-Seq`) finds every observer already updated.
//!
//! An observer runs on the writer thread: it must be quick (in-memory
//! work; a view read only where a rare event needs it) and must not wait
//! for the store's writer (no appends, no `Store::call`). Rebuilds and
//! compactions do not notify (they leave the views' contents as they were).

use cairn_events::v1::Envelope;

use crate::ViewRead;

/// Told of every commit the store writes (see the module docs).
pub trait CommitObserver: Send + Sync {
    /// `envelopes` (sequence numbers assigned) were written, in log order;
    /// `views` reads the views as this commit left them.
    fn committed(&self, envelopes: &[&Envelope], views: &dyn ViewRead);
}
