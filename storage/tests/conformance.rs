//! The EventLog conformance suite against the RocksDB store.

use std::path::Path;

use cairn_storage::{views::default_views, Store, StoreConfig};

fn open(path: &Path) -> Store {
    Store::open(StoreConfig::new(path), default_views()).unwrap()
}

cairn_storage::event_log_conformance!(open);
