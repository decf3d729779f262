//! The `package_revision_list` view: what `pkgrev.list` pages are made of.
//!
//! Two key spaces share its column family:
//! - `L<namespace>\0<repository>\0<package>\0<path>\0<name>` → a listing
//!   row: the length-delimited [`PackageRevisionListing`] (the fields a
//!   filter looks at beyond the key) followed by the revision's JSON form
//!   ([`cairn_events::revision`], `resource_version` included). A page is a
//!   concatenation of row tails: nothing is decoded or rendered per read,
//!   and only filters on workspace, revision, lifecycle, labels,
//!   annotations or latest decode the (small) head. Key order makes namespace, repository,
//!   package and package + path filters prefix scans.
//! - `N<namespace>\0<name>` → the `L` key of that revision, since a
//!   deletion names only the revision.
//!
//! Namespaces and repositories are DNS-1123 labels and packages and paths
//! are Git tree paths, none of which can hold a NUL; the name comes last,
//! so even a NUL in it could not shift the other parts.

use std::ops::ControlFlow;

use cairn_events::{
    revision,
    v1::{Envelope, PackageRevision, PackageRevisionListing},
};
use prost::Message as _;

use super::change::{on_revision_change, RevisionChange};
use crate::{
    read::{ViewRead, ViewReadExt},
    StorageError, StoreSnapshot, View, ViewTx,
};

/// Package revisions in listing order, with their JSON form.
#[derive(Clone, Copy, Debug, Default)]
pub struct PackageRevisionListView;

/// Which part of the view a scan covers: each given field narrows it, the
/// leading ones (up to the first `None`) by key prefix.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scope<'a> {
    /// Only this namespace.
    pub namespace: Option<&'a str>,
    /// Only this repository.
    pub repository: Option<&'a str>,
    /// Only this package.
    pub package: Option<&'a str>,
    /// Only this package path.
    pub path: Option<&'a str>,
}

impl Scope<'_> {
    fn fields(&self) -> [Option<&str>; 4] {
        [self.namespace, self.repository, self.package, self.path]
    }

    /// The key prefix shared by every row in scope.
    fn prefix(&self) -> Vec<u8> {
        let mut prefix = vec![LISTING];
        for field in self.fields().into_iter().map_while(|f| f) {
            prefix.extend_from_slice(field.as_bytes());
            prefix.push(0);
        }
        prefix
    }

    fn contains(&self, row: &ListedRevision<'_>) -> bool {
        let parts = [row.namespace, row.repository, row.package, row.path];
        self.fields()
            .iter()
            .zip(parts)
            .all(|(want, have)| want.is_none_or(|w| w == have))
    }
}

/// One row of the view, borrowed from the store.
#[derive(Clone, Copy, Debug)]
pub struct ListedRevision<'a> {
    /// The row's key: what a continue token points at.
    pub key: &'a [u8],
    /// Namespace.
    pub namespace: &'a str,
    /// Repository.
    pub repository: &'a str,
    /// Package.
    pub package: &'a str,
    /// Package path.
    pub path: &'a str,
    /// Porch object name.
    pub name: &'a str,
    head: &'a [u8],
    /// The revision's JSON form.
    pub json: &'a [u8],
}

impl ListedRevision<'_> {
    /// The filterable fields not in the key.
    pub fn listing(&self) -> Result<PackageRevisionListing, StorageError> {
        PackageRevisionListing::decode(self.head).map_err(|e| self.corrupt(e))
    }

    fn corrupt(&self, e: impl std::fmt::Display) -> StorageError {
        StorageError::Corrupt(format!(
            "view {}: row {}: {e}",
            PackageRevisionListView::NAME,
            String::from_utf8_lossy(self.key)
        ))
    }

    fn parse<'a>(key: &'a [u8], value: &'a [u8]) -> Result<ListedRevision<'a>, StorageError> {
        let corrupt = |what: &str| {
            StorageError::Corrupt(format!(
                "view {}: row {}: {what}",
                PackageRevisionListView::NAME,
                String::from_utf8_lossy(key)
            ))
        };
        let text = key
            .strip_prefix(&[LISTING])
            .and_then(|k| std::str::from_utf8(k).ok())
            .ok_or_else(|| corrupt("key is not a listing key"))?;
        let mut parts = text.splitn(5, '\0');
        let mut part = || parts.next().ok_or_else(|| corrupt("key has too few parts"));
        let (namespace, repository, package, path, name) =
            (part()?, part()?, part()?, part()?, part()?);
        let mut rest = value;
        let head_len = prost::decode_length_delimiter(&mut rest)
            .map_err(|_| corrupt("value has no head length"))?;
        if head_len > rest.len() {
            return Err(corrupt("value is shorter than its head"));
        }
        let (head, json) = rest.split_at(head_len);
        Ok(ListedRevision {
            key,
            namespace,
            repository,
            package,
            path,
            name,
            head,
            json,
        })
    }
}

/// The length-delimited [`PackageRevisionListing`] of `revision`, byte
/// for byte what prost encodes for it, written from the borrowed fields
/// (the fold does not clone the revision's names and maps into a listing
/// only to encode and drop it), in a buffer with room for `more` bytes
/// after it (the JSON form).
fn listing_head(revision: &PackageRevision, more: usize) -> Vec<u8> {
    use prost::encoding::{bool, btree_map, encode_varint, encoded_len_varint, int64, string};

    let strings = [
        (1, &revision.name),
        (2, &revision.workspace),
        (4, &revision.lifecycle),
    ];
    let maps = [(6, &revision.labels), (7, &revision.annotations)];
    // Fields in tag order, proto3 defaults left out, as prost does.
    let string_len = |(tag, s): (u32, &String)| {
        if s.is_empty() {
            0
        } else {
            string::encoded_len(tag, s)
        }
    };
    let len = strings.iter().copied().map(string_len).sum::<usize>()
        + if revision.revision == 0 {
            0
        } else {
            int64::encoded_len(3, &revision.revision)
        }
        + if revision.latest {
            bool::encoded_len(5, &revision.latest)
        } else {
            0
        }
        + maps
            .iter()
            .map(|(tag, map)| {
                btree_map::encoded_len(string::encoded_len, string::encoded_len, *tag, map)
            })
            .sum::<usize>();
    let mut buf = Vec::with_capacity(encoded_len_varint(len as u64) + len + more);
    encode_varint(len as u64, &mut buf);
    for (tag, s) in &strings[..2] {
        if !s.is_empty() {
            string::encode(*tag, s, &mut buf);
        }
    }
    if revision.revision != 0 {
        int64::encode(3, &revision.revision, &mut buf);
    }
    if !revision.lifecycle.is_empty() {
        string::encode(4, &revision.lifecycle, &mut buf);
    }
    if revision.latest {
        bool::encode(5, &revision.latest, &mut buf);
    }
    for (tag, map) in maps {
        btree_map::encode(
            string::encode,
            string::encoded_len,
            string::encode,
            string::encoded_len,
            tag,
            map,
            &mut buf,
        );
    }
    buf
}

/// First byte of listing keys.
const LISTING: u8 = b'L';
/// First byte of name index keys.
const NAME: u8 = b'N';

impl PackageRevisionListView {
    /// The view's name.
    pub const NAME: &'static str = "package_revision_list";

    fn listing_key(namespace: &str, repository: &str, revision: &PackageRevision) -> Vec<u8> {
        let mut key = Scope {
            namespace: Some(namespace),
            repository: Some(repository),
            package: Some(&revision.package),
            path: Some(&revision.path),
        }
        .prefix();
        key.extend_from_slice(revision.name.as_bytes());
        key
    }

    fn name_key(namespace: &str, name: &str) -> Vec<u8> {
        let mut key = Vec::with_capacity(2 + namespace.len() + name.len());
        key.push(NAME);
        key.extend_from_slice(namespace.as_bytes());
        key.push(0);
        key.extend_from_slice(name.as_bytes());
        key
    }

    /// Calls `f` with each revision in `scope`, in key order, starting
    /// after key `after` (exclusive; a key from an earlier call), while `f`
    /// says continue. Reads any [`ViewRead`]: the store, a snapshot, …
    pub fn scan<E: From<StorageError>>(
        store: &(impl ViewRead + ?Sized),
        scope: &Scope<'_>,
        after: Option<&[u8]>,
        mut f: impl FnMut(ListedRevision<'_>) -> Result<ControlFlow<()>, E>,
    ) -> Result<(), E> {
        store.view_scan_each(Self::NAME, &scope.prefix(), after, |key, value| {
            let row = ListedRevision::parse(key, value)?;
            if scope.contains(&row) {
                f(row)
            } else {
                Ok(ControlFlow::Continue(()))
            }
        })
    }
}

impl PackageRevisionListView {
    /// [`PackageRevisionListView::scan`] through a snapshot: the rows are
    /// exactly the view at the snapshot's [`StoreSnapshot::last_seq`] (how
    /// a watch lists before it follows the log).
    pub fn scan_snapshot<E: From<StorageError>>(
        snapshot: &StoreSnapshot<'_>,
        scope: &Scope<'_>,
        after: Option<&[u8]>,
        f: impl FnMut(ListedRevision<'_>) -> Result<ControlFlow<()>, E>,
    ) -> Result<(), E> {
        Self::scan(snapshot, scope, after, f)
    }
}

impl View for PackageRevisionListView {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn apply(&self, tx: &mut ViewTx<'_>, envelope: &Envelope) -> Result<(), StorageError> {
        on_revision_change(envelope, |change| Self::fold(tx, envelope.seq, change))
    }
}

impl PackageRevisionListView {
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
        let index = Self::name_key(namespace, name);
        // One repository's name index rows are a group, read many at a
        // time by catch-up and first syncs.
        let of_repository = name
            .strip_prefix(repository)
            .is_some_and(|rest| rest.starts_with('.'));
        let group_len = if of_repository {
            1 + namespace.len() + 1 + repository.len() + 1
        } else {
            index.len()
        };
        let old = tx.get_in_group(&index, group_len)?;
        match revision {
            Some(revision) => {
                let key = Self::listing_key(namespace, repository, revision);
                if let Some(old) = old.filter(|old| *old != key) {
                    tx.delete(old);
                }
                let json = revision::render(namespace, repository, revision, seq);
                let mut value = listing_head(revision, json.len());
                value.extend_from_slice(&json);
                tx.put(index, key.clone());
                tx.put(key, value);
            }
            None => {
                if let Some(old) = old {
                    tx.delete(old);
                    tx.delete(index);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use cairn_events::v1::{PackageRevision, PackageRevisionListing};
    use prost::Message as _;

    use super::listing_head;

    #[test]
    fn listing_heads_encode_as_prost_encodes_them() {
        let full = PackageRevision {
            name: "repo.pkg.v1".into(),
            workspace: "v1".into(),
            revision: -1,
            lifecycle: "Published".into(),
            latest: true,
            labels: [("a".into(), "b".into()), ("c".into(), String::new())].into(),
            annotations: [("d".into(), "e".into())].into(),
            path: "ignored".into(),
            ..Default::default()
        };
        let some = PackageRevision {
            lifecycle: "Draft".into(),
            revision: 3,
            ..Default::default()
        };
        for revision in [full, some, PackageRevision::default()] {
            let derived = PackageRevisionListing {
                name: revision.name.clone(),
                workspace: revision.workspace.clone(),
                revision: revision.revision,
                lifecycle: revision.lifecycle.clone(),
                latest: revision.latest,
                labels: revision.labels.clone(),
                annotations: revision.annotations.clone(),
            }
            .encode_length_delimited_to_vec();
            assert_eq!(listing_head(&revision, 0), derived);
        }
    }
}
