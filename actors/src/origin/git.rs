//! Git transport: local bare mirrors of upstream repositories.
//!
//! Each upstream URL has one bare mirror under the cache root, named after
//! the SHA-256 of the URL, so registrations of the same URL share it. A fetch
//! lists the upstream's refs, downloads only the objects the mirror lacks,
//! and makes the mirror's `refs/heads/*` and `refs/tags/*` exactly the
//! upstream's (forced, refs deleted upstream pruned) by writing one
//! `packed-refs` file; discovery then reads the mirror without touching the
//! network. cairn is the only writer of its mirrors.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use git2::{AutotagOption, Direction, FetchOptions, ObjectType, Repository};
use sha2::{Digest, Sha256};
use tracing::debug;

use super::{
    error::{map_git_error, OriginError},
    file_transport,
    remote::{callbacks, validate_url, Credentials},
};

/// Refspecs of a mirror fetch: every branch and tag, forced.
const MIRROR_REFSPECS: [&str; 2] = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];

/// Where fetched repositories live: one bare mirror per upstream URL, under
/// `root`.
#[derive(Debug, Clone)]
pub struct GitCache {
    root: PathBuf,
}

/// Result of [`GitCache::fetch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOutcome {
    /// Upstream refs after the fetch (`refs/heads/…`, `refs/tags/…`) → the
    /// object each names (an annotated tag's own id, not peeled).
    pub raw: BTreeMap<String, git2::Oid>,
    /// Whether any ref was added, moved or removed by this fetch.
    pub changed: bool,
    /// sha256 (hex) of the refs after the fetch (each name and raw
    /// target): equal digests, equal upstream.
    pub digest: String,
    /// The mirror fetched into.
    pub mirror: PathBuf,
}

impl FetchOutcome {
    /// The refs → hex of the commit each points at (annotated tags
    /// peeled). Peeled on demand: a fetch that changed nothing, the common
    /// case, never needs it (the digest comes from the raw targets).
    pub fn refs(&self) -> Result<BTreeMap<String, String>, OriginError> {
        let repo = Repository::open_bare(&self.mirror).map_err(map_git_error)?;
        Ok(peel_all(&repo, self.raw.clone())?
            .into_iter()
            .map(|(name, target)| (name, target.commit))
            .collect())
    }
}

impl GitCache {
    /// A cache rooted at `root` (created on first fetch).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        file_transport::register();
        // Objects are verified once, when a fetch indexes their pack (as
        // git does); libgit2 would otherwise hash every object again on
        // each read, a third of a large discovery.
        git2::opts::strict_hash_verification(false);
        GitCache { root: root.into() }
    }

    /// Local bare repository for `url`: `<root>/<sha256(url) hex>.git`.
    pub fn mirror_path(&self, url: &str) -> PathBuf {
        let digest = Sha256::digest(url.as_bytes());
        self.root.join(format!("{}.git", hex::encode(digest)))
    }

    /// Clones (bare) if the mirror is missing, else fetches: mirrors
    /// `refs/heads/*` and `refs/tags/*` from the upstream with force, pruning
    /// refs deleted upstream. Returns the ref map after the fetch and whether
    /// it changed. A first fetch that fails leaves no mirror behind.
    pub fn fetch(
        &self,
        url: &str,
        credentials: Option<&Credentials>,
    ) -> Result<FetchOutcome, OriginError> {
        validate_url(url)?;
        let path = self.mirror_path(url);
        let created = !path.exists();
        let repo = if created {
            fs::create_dir_all(&self.root).map_err(|e| {
                OriginError::Git(format!(
                    "cannot create cache root {}: {e}",
                    self.root.display()
                ))
            })?;
            Repository::init_bare(&path).map_err(map_git_error)?
        } else {
            Repository::open_bare(&path).map_err(map_git_error)?
        };
        let before = raw_refs(&repo).unwrap_or_default();
        let advertised = match fetch_into(&repo, url, credentials) {
            Ok(advertised) => advertised,
            Err(e) => {
                drop(repo);
                if created {
                    // Best effort: a half-initialised mirror would only be
                    // fetched into again, but an unreachable URL should leave
                    // nothing.
                    let _ = fs::remove_dir_all(&path);
                }
                return Err(e);
            }
        };
        // What a ref peels to follows from its raw target: comparing raw
        // targets is enough, and the old refs need no peeling. Only a
        // changed ref set is peeled (for the peeled lines of packed-refs).
        let changed = before != advertised;
        if changed || has_loose_refs(&path) {
            let peeled = peel_all(&repo, advertised.clone())?;
            write_refs(&path, &peeled)?;
        }
        let mut hasher = Sha256::new();
        for (name, raw) in &advertised {
            hasher.update(format!("{raw} {name}\n").as_bytes());
        }
        let digest = hex::encode(hasher.finalize());
        debug!(mirror = %path.display(), changed, "fetched");
        Ok(FetchOutcome {
            raw: advertised,
            changed,
            digest,
            mirror: path,
        })
    }

    /// Deletes the local mirror of `url` (when its last registration goes
    /// away). Not an error when there is none.
    pub fn remove(&self, url: &str) -> Result<(), OriginError> {
        let path = self.mirror_path(url);
        match fs::remove_dir_all(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(OriginError::Git(format!(
                "cannot remove mirror {}: {e}",
                path.display()
            ))),
        }
    }
}

/// The objects of a local mirror, read by id: the resource contents
/// discovery lists as blob ids.
pub struct Blobs {
    repo: Repository,
}

impl std::fmt::Debug for Blobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs")
            .field("repo", &self.repo.path())
            .finish()
    }
}

impl Blobs {
    /// Opens the repository at `path`.
    pub fn open(path: &Path) -> Result<Self, OriginError> {
        Ok(Blobs {
            repo: Repository::open_bare(path).map_err(map_git_error)?,
        })
    }

    /// Calls `f` with the content of blob `id`.
    pub fn with<T>(&self, id: git2::Oid, f: impl FnOnce(&[u8]) -> T) -> Result<T, OriginError> {
        let blob = self.repo.find_blob(id).map_err(map_git_error)?;
        Ok(f(blob.content()))
    }
}

/// A ref's raw target (to notice retargeted annotated tags), the object an
/// annotated tag finally names (`None` for anything else), and the commit
/// the ref stands for.
#[derive(Debug, PartialEq, Eq)]
struct RefTarget {
    raw: git2::Oid,
    peeled: Option<git2::Oid>,
    commit: String,
}

/// Whether `name` is a ref a mirror keeps.
fn mirrored(name: &str) -> bool {
    name.starts_with("refs/heads/") || name.starts_with("refs/tags/")
}

/// `refs/heads/*` and `refs/tags/*` of `repo` and their raw targets.
fn raw_refs(repo: &Repository) -> Result<BTreeMap<String, git2::Oid>, OriginError> {
    let mut raw = BTreeMap::new();
    for reference in repo.references().map_err(map_git_error)? {
        let reference = reference.map_err(map_git_error)?;
        let (Ok(name), Some(target)) = (reference.name(), reference.target()) else {
            continue; // not UTF-8, or symbolic
        };
        if mirrored(name) {
            raw.insert(name.to_owned(), target);
        }
    }
    Ok(raw)
}

/// Peels each ref's target: annotated tags to the object they finally name.
fn peel_all(
    repo: &Repository,
    raw: BTreeMap<String, git2::Oid>,
) -> Result<BTreeMap<String, RefTarget>, OriginError> {
    let odb = repo.odb().map_err(map_git_error)?;
    let kind = |oid| odb.read_header(oid).map(|(_, kind)| kind);
    let mut out = BTreeMap::new();
    for (name, raw) in raw {
        let mut peeled = None;
        let mut current = raw;
        // Tags of tags are legal; a chain longer than this is not sane.
        for _ in 0..16 {
            if kind(current).map_err(map_git_error)? != ObjectType::Tag {
                break;
            }
            current = repo.find_tag(current).map_err(map_git_error)?.target_id();
            peeled = Some(current);
        }
        // A tag of a tree or blob: report the object the ref names.
        let commit = if kind(current).map_err(map_git_error)? == ObjectType::Commit {
            current
        } else {
            raw
        };
        out.insert(
            name,
            RefTarget {
                raw,
                peeled,
                commit: commit.to_string(),
            },
        );
    }
    Ok(out)
}

/// Whether the mirror at `path` holds loose refs (written by libgit2 for a
/// push, or by an older cairn): they would shadow the `packed-refs` file.
fn has_loose_refs(path: &Path) -> bool {
    ["refs/heads", "refs/tags"]
        .iter()
        .any(|dir| fs::read_dir(path.join(dir)).is_ok_and(|mut d| d.next().is_some()))
}

/// Makes `refs` the mirror's refs: writes them as its `packed-refs` file
/// (with the peeled targets of annotated tags, as `git pack-refs` does),
/// replacing the old one atomically, then removes loose refs if there are
/// any (readers of the mirror see the directories go only then). One file for
/// any number of refs, where libgit2's fetch writes (and the file system
/// allocates) a file per ref.
fn write_refs(path: &Path, refs: &BTreeMap<String, RefTarget>) -> Result<(), OriginError> {
    let io = |what: &str, e: std::io::Error| {
        OriginError::Git(format!("cannot {what} in mirror {}: {e}", path.display()))
    };
    let mut text = String::with_capacity(64 + refs.len() * 100);
    text.push_str("# pack-refs with: peeled fully-peeled sorted \n");
    // BTreeMap order is byte order of the names, as the `sorted` trait asks.
    for (name, target) in refs {
        text.push_str(&format!("{} {name}\n", target.raw));
        if let Some(peeled) = target.peeled {
            text.push_str(&format!("^{peeled}\n"));
        }
    }
    let temp = path.join("packed-refs.cairn-new");
    let mut file = fs::File::create(&temp).map_err(|e| io("write packed-refs", e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io("write packed-refs", e))?;
    fs::rename(&temp, path.join("packed-refs")).map_err(|e| io("replace packed-refs", e))?;
    if !has_loose_refs(path) {
        return Ok(());
    }
    for dir in ["refs/heads", "refs/tags"] {
        let dir = path.join(dir);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove loose refs", e)),
        }
        fs::create_dir_all(&dir).map_err(|e| io("create refs directory", e))?;
    }
    Ok(())
}

/// Lists the upstream's refs and downloads the objects the mirror lacks
/// (nothing when it has them all, so a fetch with no upstream change costs
/// about one `ls-remote`). Refs are not written here (see [`write_refs`]).
/// Returns the advertised `refs/heads/*` and `refs/tags/*`.
fn fetch_into(
    repo: &Repository,
    url: &str,
    credentials: Option<&Credentials>,
) -> Result<BTreeMap<String, git2::Oid>, OriginError> {
    let mut remote = repo.remote_anonymous(url).map_err(map_git_error)?;
    let mut connection = remote
        .connect_auth(Direction::Fetch, Some(callbacks(credentials)), None)
        .map_err(map_git_error)?;
    let advertised: BTreeMap<String, git2::Oid> = connection
        .list()
        .map_err(map_git_error)?
        .iter()
        .filter(|head| mirrored(head.name()) && !head.name().ends_with("^{}"))
        .map(|head| (head.name().to_owned(), head.oid()))
        .collect();
    let odb = repo.odb().map_err(map_git_error)?;
    if advertised.values().any(|oid| !odb.exists(*oid)) {
        let mut options = FetchOptions::new();
        options
            .remote_callbacks(callbacks(credentials))
            .download_tags(AutotagOption::None)
            .update_fetchhead(false);
        connection
            .remote()
            .download(&MIRROR_REFSPECS, Some(&mut options))
            .map_err(map_git_error)?;
    }
    Ok(advertised)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn mirror_path_is_stable_per_url() {
        let cache = GitCache::new("/var/cache/cairn");
        let a = cache.mirror_path("https://example.com/a.git");
        assert_eq!(a, cache.mirror_path("https://example.com/a.git"));
        assert_ne!(a, cache.mirror_path("https://example.com/b.git"));
        assert_eq!(a.parent(), Some(Path::new("/var/cache/cairn")));
        let name = a.file_name().unwrap().to_str().unwrap();
        assert_eq!(name.len(), 64 + ".git".len());
    }
}
