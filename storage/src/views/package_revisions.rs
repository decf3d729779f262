//! The `package_revisions` view: one row per package revision, keyed by
//! `<namespace>/<object name>`. Object names start with `<repository>.`
//! and repository names are DNS-1123 labels (no dots), so one
//! repository's revisions are the key prefix `<namespace>/<repository>.`.
//! Each row holds a reference to every resource blob it lists.

use cairn_events::v1::{Envelope, PackageRevision, PackageRevisionRow};

use super::change::{on_revision_change, RevisionChange};
use crate::{
    read::{ViewRead, ViewReadExt},
    Digest, StorageError, View, ViewTx,
};

/// Package revisions by namespace and object name.
#[derive(Clone, Copy, Debug, Default)]
pub struct PackageRevisionsView;

impl PackageRevisionsView {
    /// The view's name.
    pub const NAME: &'static str = "package_revisions";

    fn key(namespace: &str, name: &str) -> Vec<u8> {
        format!("{namespace}/{name}").into_bytes()
    }

    /// The row of package revision `name` in `namespace`.
    pub fn get(
        store: &(impl ViewRead + ?Sized),
        namespace: &str,
        name: &str,
    ) -> Result<Option<PackageRevisionRow>, StorageError> {
        store.view_get_message(Self::NAME, &Self::key(namespace, name))
    }

    /// Rows of one repository, of one namespace, or of all, in key order,
    /// at most `limit`, starting after `after` (a key from a previous page).
    pub fn list(
        store: &(impl ViewRead + ?Sized),
        namespace: Option<&str>,
        repository: Option<&str>,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, PackageRevisionRow)>, StorageError> {
        let prefix = match (namespace, repository) {
            (Some(ns), Some(repo)) => format!("{ns}/{repo}."),
            (Some(ns), None) => format!("{ns}/"),
            (None, _) => String::new(),
        };
        let mut rows = store.view_scan_messages(Self::NAME, prefix.as_bytes(), after, limit)?;
        if namespace.is_none() && repository.is_some() {
            rows.retain(|(key, _)| repo_of_key(key) == repository);
        }
        Ok(rows)
    }
}

/// Length of the key prefix `<namespace>/<repository>.` of revision
/// `name`'s key, or of the whole key when `name` is not of `repository`
/// (then the key is a group of its own).
fn repository_group_len(namespace: &str, repository: &str, name: &str) -> usize {
    let of_repository = name
        .strip_prefix(repository)
        .is_some_and(|rest| rest.starts_with('.'));
    if of_repository {
        namespace.len() + 1 + repository.len() + 1
    } else {
        namespace.len() + 1 + name.len()
    }
}

/// The encoding of the [`PackageRevisionRow`] of `revision` (no lock, as
/// stored), byte for byte what prost encodes for that row, written from
/// the borrowed fields: the fold does not clone the revision (its
/// resources, tasks, labels) into a row only to encode and drop it.
fn row_bytes(namespace: &str, repository: &str, revision: &PackageRevision, seq: u64) -> Vec<u8> {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
    use prost::Message as _;

    let string_len = |tag: u32, s: &str| {
        if s.is_empty() {
            0
        } else {
            key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
        }
    };
    let revision_len = revision.encoded_len();
    let seq_len = if seq == 0 {
        0
    } else {
        key_len(4) + encoded_len_varint(seq)
    };
    let len = string_len(1, namespace)
        + string_len(2, repository)
        + key_len(3)
        + encoded_len_varint(revision_len as u64)
        + revision_len
        + seq_len;
    let mut buf = Vec::with_capacity(len);
    // Fields in tag order, proto3 defaults left out, as prost does.
    for (tag, s) in [(1, namespace), (2, repository)] {
        if !s.is_empty() {
            encode_key(tag, WireType::LengthDelimited, &mut buf);
            encode_varint(s.len() as u64, &mut buf);
            buf.extend_from_slice(s.as_bytes());
        }
    }
    encode_key(3, WireType::LengthDelimited, &mut buf);
    encode_varint(revision_len as u64, &mut buf);
    revision.encode_raw(&mut buf);
    if seq != 0 {
        encode_key(4, WireType::Varint, &mut buf);
        encode_varint(seq, &mut buf);
    }
    buf
}

fn repo_of_key(key: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(key).ok()?;
    let (_, name) = text.split_once('/')?;
    name.split('.').next()
}

fn digests(revision: &PackageRevision) -> Result<Vec<Digest>, StorageError> {
    revision
        .resources
        .iter()
        .map(|(path, digest)| {
            Digest::parse(digest).ok_or_else(|| {
                StorageError::Corrupt(format!("resource {path}: bad digest {digest:?}"))
            })
        })
        .collect()
}

impl View for PackageRevisionsView {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn apply(&self, tx: &mut ViewTx<'_>, envelope: &Envelope) -> Result<(), StorageError> {
        on_revision_change(envelope, |change| Self::fold(tx, envelope.seq, change))
    }

    fn blobs(&self, envelope: &Envelope) -> Vec<Digest> {
        let mut found = Vec::new();
        // A bad digest is the fold's error to report; here it is no blob.
        let _ = on_revision_change(envelope, |change| {
            if let Some(revision) = change.revision {
                found = digests(revision).unwrap_or_default();
            }
            Ok(())
        });
        found
    }
}

impl PackageRevisionsView {
    fn fold(
        tx: &mut ViewTx<'_>,
        seq: u64,
        RevisionChange {
            namespace,
            repository,
            name,
            revision,
        }: RevisionChange<'_>,
    ) -> Result<(), StorageError> {
        let key = Self::key(namespace, name);
        // A repository's rows are a group (see the module docs), read
        // many at a time by catch-up and first syncs.
        let group_len = repository_group_len(namespace, repository, name);
        if let Some(old) = tx.get_message_in_group::<PackageRevisionRow>(&key, group_len)? {
            for digest in digests(&old.revision.unwrap_or_default())? {
                tx.release_blob(&digest)?;
            }
        }
        match revision {
            Some(revision) => {
                for digest in digests(revision)? {
                    tx.retain_blob(&digest)?;
                }
                tx.put(key, row_bytes(namespace, repository, revision, seq));
            }
            None => tx.delete(key),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use cairn_events::v1::{PackageRevision, PackageRevisionRow, Task};
    use prost::Message as _;

    use super::row_bytes;

    #[test]
    fn rows_encode_as_prost_encodes_them() {
        let full = PackageRevision {
            name: "repo.pkg.v1".into(),
            path: "a/b".into(),
            package: "pkg".into(),
            workspace: "v1".into(),
            revision: 1,
            lifecycle: "Published".into(),
            commit: "c0ffee".into(),
            resources: [("Kptfile".into(), "sha256:00".into())].into(),
            published_by: "alice".into(),
            published_at: Some(pbjson_types::Timestamp {
                seconds: 1,
                nanos: 2,
            }),
            tasks: vec![Task {
                r#type: "init".into(),
                raw: "{}".into(),
            }],
            labels: [("a".into(), "b".into())].into(),
            latest: true,
            annotations: [("c".into(), "d".into())].into(),
        };
        for (namespace, repository, revision, seq) in [
            ("ns", "repo", full.clone(), 7),
            ("", "", PackageRevision::default(), 0),
            ("ns", "", full, 300),
            ("", "repo", PackageRevision::default(), u64::MAX),
        ] {
            let derived = PackageRevisionRow {
                namespace: namespace.into(),
                repository: repository.into(),
                revision: Some(revision.clone()),
                updated_seq: seq,
                lock: None,
            }
            .encode_to_vec();
            assert_eq!(row_bytes(namespace, repository, &revision, seq), derived);
        }
    }
}
