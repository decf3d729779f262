//! Time and the node-wide sync caps (how many at once, how much memory):
//! neutral pieces that the SyncManager
//! ([`crate::schedule`]) and the RepositoryActor ([`crate::repository`])
//! both use, so neither has to import the other for them.
//!
//! # Layout
//! - [`clock`] — the [`Clock`] trait: the system clock in a node, a
//!   [`ManualClock`] that tests move instead of waiting.
//! - [`slots`] — [`SyncSlots`], the node-wide cap on syncs running at once,
//!   taken by the RepositoryActor around every sync, whoever asked for it.
//! - [`budget`] — [`SyncBudget`], the node-wide memory budget every sync
//!   reserves its chunks from.

pub mod budget;
pub mod clock;
pub mod slots;

pub use budget::{BudgetPermit, BudgetState, SyncBudget};
pub use clock::{Clock, ManualClock, SystemClock};
pub use slots::{SlotState, SyncSlot, SyncSlots};
