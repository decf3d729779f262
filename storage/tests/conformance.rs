//! The conformance suites against the RocksDB store: the EventLog and
//! ReplicatedLog checks, the BlobStore checks with the default inline
//! threshold and with a small one (so blobs of a few KiB are files), and
//! compaction of a keyed stream class (its index read in default and in
//! small pages).

use std::{path::Path, sync::Arc};

use cairn_storage::{views::default_views, CompactingLog, Store, StoreConfig, View};

fn open(path: &Path) -> Store {
    Store::open(StoreConfig::new(path), default_views()).unwrap()
}

cairn_storage::event_log_conformance!(open);

mod blobs_default_threshold {
    use super::open;
    cairn_storage::blob_store_conformance!(open);
}

mod blobs_small_threshold {
    use super::*;

    fn open_small(path: &Path) -> Store {
        let mut config = StoreConfig::new(path);
        config.blob_inline_max_bytes = 4096;
        Store::open(config, default_views()).unwrap()
    }

    cairn_storage::blob_store_conformance!(open_small);
}

#[test]
fn compacted_log_rebuilds_to_the_live_views() {
    let dir = tempfile::tempdir().unwrap();
    let open = |path: &Path, views: Vec<Arc<dyn View>>| -> Box<dyn CompactingLog> {
        Box::new(Store::open(StoreConfig::new(path), views).unwrap())
    };
    cairn_storage::conformance::compaction::compacted_log_rebuilds_to_the_live_views(
        dir.path(),
        &open,
    );
}

/// The same with compaction reading the class's index in pages of 1 and 7
/// rows, so pages end inside streams and at their heads.
#[test]
fn compacted_log_rebuilds_to_the_live_views_in_small_pages() {
    for page_rows in [1, 7] {
        let dir = tempfile::tempdir().unwrap();
        let open = |path: &Path, views: Vec<Arc<dyn View>>| -> Box<dyn CompactingLog> {
            let mut config = StoreConfig::new(path);
            config.compaction_page_rows = page_rows;
            Box::new(Store::open(config, views).unwrap())
        };
        cairn_storage::conformance::compaction::compacted_log_rebuilds_to_the_live_views(
            dir.path(),
            &open,
        );
    }
}
