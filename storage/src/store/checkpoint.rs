//! [`Store::checkpoint_async`]: a consistent copy of the database, taken on
//! the writer thread between two writes, for a cluster's snapshots (a node
//! that joins, or fell behind a trimmed log, starts from one); and
//! [`Store::referenced_blobs`], what such a copy needs besides itself.
//!
//! A checkpoint is RocksDB's: the memtables are flushed, then the live
//! files are hard-linked (copied across file systems) into a new
//! directory. Blob *files* are not part of it (they live beside the
//! database, under `blobs/`); blob rows are. A node opening a checkpoint
//! fetches the referenced blobs it lacks ([`Store::missing_blobs`]).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use rocksdb::{checkpoint::Checkpoint as RocksCheckpoint, IteratorMode, DB};
use tokio::sync::oneshot;

use super::{command::Command, writer::Writer, Store};
use crate::{
    columns::Column,
    keys::{self, meta},
    BlobStore as _, Digest, StorageError,
};

/// Where a checkpoint stands in the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checkpointed {
    /// The replication position it holds (see
    /// [`Store::replication_position`]).
    pub position: u64,
    /// Its last sequence number.
    pub last_seq: u64,
}

impl Store {
    /// Writes a checkpoint of the whole database into `dir` (which must
    /// not exist; same file system as the store for hard links) on the
    /// writer thread, so that it holds every write before it and none
    /// after. Waits without blocking a thread.
    pub async fn checkpoint_async(&self, dir: PathBuf) -> Result<Checkpointed, StorageError> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(Command::Checkpoint(dir, reply))
            .await
            .map_err(|_| StorageError::Closed)?;
        rx.await.map_err(|_| StorageError::Closed)?
    }

    /// Every blob some view references, each once, in digest order.
    /// Blocking.
    pub fn referenced_blobs(&self) -> Result<Vec<Digest>, StorageError> {
        let inner = self.inner();
        referenced_in(
            inner
                .db
                .iterator_cf(inner.cf(Column::BlobRefs), IteratorMode::Start),
        )
    }

    /// Every blob the views of the checkpoint in `dir` reference, each
    /// once, in digest order (the database opened read-only; the checkpoint
    /// must not be open as a store). Blocking.
    pub fn referenced_blobs_at(dir: &Path) -> Result<Vec<Digest>, StorageError> {
        let options = rocksdb::Options::default();
        let families = DB::list_cf(&options, dir)?;
        let db = DB::open_cf_for_read_only(&options, dir, &families, false)?;
        let cf = db.cf_handle(Column::BlobRefs.name()).ok_or_else(|| {
            StorageError::Corrupt(format!("checkpoint {} has no blob refs", dir.display()))
        })?;
        referenced_in(db.iterator_cf(cf, IteratorMode::Start))
    }

    /// The referenced blobs this store does not hold (a store opened from a
    /// checkpoint lacks the blob files). Blocking.
    pub fn missing_blobs(&self) -> Result<Vec<Digest>, StorageError> {
        let mut missing = Vec::new();
        for digest in self.referenced_blobs()? {
            if self.blob_size(&digest)?.is_none() {
                missing.push(digest);
            }
        }
        Ok(missing)
    }
}

/// The digests of the blob refs `rows` (`<view prefix><sha256>` keys).
fn referenced_in(
    rows: impl Iterator<Item = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>>,
) -> Result<Vec<Digest>, StorageError> {
    let mut referenced = BTreeSet::new();
    for item in rows {
        let (key, _) = item?;
        referenced.insert(keys::blob_ref_parts(&key)?.1);
    }
    Ok(referenced.into_iter().map(Digest).collect())
}

impl Writer {
    /// See [`Store::checkpoint_async`].
    pub(super) fn checkpoint(&self, dir: PathBuf) -> Result<Checkpointed, StorageError> {
        let inner = &self.inner;
        let position = inner.meta_u64(meta::REPLICATION_POSITION)?.unwrap_or(0);
        RocksCheckpoint::new(&inner.db)
            .and_then(|c| c.create_checkpoint(&dir))
            .map_err(|e| {
                StorageError::Unavailable(format!("checkpoint into {}: {e}", dir.display()))
            })?;
        Ok(Checkpointed {
            position,
            last_seq: self.last_seq,
        })
    }
}

#[cfg(test)]
mod tests {
    use cairn_events::{envelope::Metadata, StreamId};

    use super::*;
    use crate::store::blobs::tests::added;
    use crate::{views::default_views, EventLog, ExpectedVersion, StoreConfig};

    /// A checkpoint opens as a store of its own holding everything written
    /// before it (log, views, blob rows), and says which blob files it
    /// lacks; the store it came from goes on unchanged.
    #[test]
    fn a_checkpoint_opens_as_the_same_store_less_its_blob_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::new(dir.path().join("store"));
        config.blob_inline_max_bytes = 64; // the large one is a file
        let store = Store::open(config, default_views()).unwrap();
        let small = store.put(b"kind: Kptfile\n").unwrap().digest();
        let large = store.put(&[7u8; 1000]).unwrap().digest();
        store
            .append(
                &StreamId::repository("ns", "r").unwrap(),
                ExpectedVersion::Any,
                vec![added("a", &small), added("b", &large)],
                Metadata::default(),
            )
            .unwrap();
        let mut referenced = vec![small, large];
        referenced.sort_by_key(|d| d.0);
        assert_eq!(store.referenced_blobs().unwrap(), referenced);
        assert_eq!(store.missing_blobs().unwrap(), Vec::<Digest>::new());

        let copy = dir.path().join("copy");
        let at = futures::executor::block_on(store.checkpoint_async(copy.clone())).unwrap();
        assert_eq!(
            at,
            Checkpointed {
                position: 0,
                last_seq: 2
            }
        );
        assert_eq!(Store::referenced_blobs_at(&copy).unwrap(), referenced);
        let opened = Store::open(StoreConfig::new(&copy), default_views()).unwrap();
        assert_eq!(opened.state_dump().unwrap(), store.state_dump().unwrap());
        assert_eq!(opened.referenced_blobs().unwrap(), referenced);
        // The row came along, the file did not.
        assert_eq!(opened.missing_blobs().unwrap(), vec![large]);
        assert_eq!(opened.get(&small).unwrap().unwrap(), b"kind: Kptfile\n");

        // A directory that exists is refused, naming it.
        let err = futures::executor::block_on(store.checkpoint_async(copy.clone())).unwrap_err();
        assert!(
            err.to_string().contains(&copy.display().to_string()),
            "{err}"
        );
    }
}
