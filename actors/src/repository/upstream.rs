//! Reading an upstream: fetch (shared between registrations of one URL),
//! discover package revisions the Porch way (opened here, read a batch at a
//! time by the sync), store their resources in the blob store
//! ([`Resources`]). All blocking: callers run it in `spawn_blocking`.
//!
//! A read fails with a [`ReadError`]: the upstream's failure
//! ([`ReadError::Origin`]) or the store's ([`ReadError::Store`]), never one
//! dressed as the other.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use cairn_events::v1::{PackageRevision, RepositorySpec, Task};
use cairn_storage::{BlobPin, BlobStore, StorageError, Store};
use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};
use tracing::debug;

use super::naming::object_name;
use crate::origin::{self, write::WriteConfig, Credentials, FetchOutcome, GitCache, OriginError};

/// Why reading an upstream failed: the upstream itself, or storing what
/// was read in the node's blob store — kept apart, so a storage failure is
/// never reported as an upstream one.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Fetching or discovering failed (see [`OriginError`]): an upstream
    /// failure with its class, retried by the schedule.
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// Storing a resource in the blob store failed: a node problem (500,
    /// class `internal`; 503 while the node shuts down).
    #[error("storing {path}: {source}")]
    Store {
        /// The resource's path in its package.
        path: String,
        /// What the store said.
        #[source]
        source: StorageError,
    },
}

/// Resolves `secret_ref` names to credentials: the secret `<name>` is the
/// directory `<secrets dir>/<name>` holding the files `username` and
/// `password` (the layout of a mounted Kubernetes secret). Credentials never
/// leave this process: events, logs and views hold only the name.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    dir: Option<PathBuf>,
}

impl Secrets {
    /// Secrets under `dir` (none configured when `None`).
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self { dir }
    }

    /// The credentials named `name`; `None` for an empty name.
    pub fn resolve(&self, name: &str) -> Result<Option<Credentials>, OriginError> {
        if name.is_empty() {
            return Ok(None);
        }
        let Some(dir) = &self.dir else {
            return Err(OriginError::Auth(format!("secret {name:?} requested but no secrets directory is configured (git.secrets-dir)")));
        };
        let base = dir.join(name);
        let read = |file: &str| {
            std::fs::read_to_string(base.join(file))
                .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| OriginError::Auth(format!("secret {name:?}: cannot read {file}: {e}")))
        };
        Ok(Some(Credentials {
            username: read("username")?,
            password: read("password")?,
        }))
    }
}

#[derive(Debug)]
struct LastFetch {
    finished: Instant,
    outcome: FetchOutcome,
}

/// Shares fetches between registrations of one upstream URL: a sync asked
/// for at time T is served by any fetch of that URL that finished after T
/// (one that was running when it asked, or started later). So concurrent
/// syncs of two registrations of one URL cost one fetch, and they share one
/// local mirror.
#[derive(Debug)]
pub struct Fetches {
    cache: GitCache,
    slots: Mutex<HashMap<String, Arc<Mutex<Option<LastFetch>>>>>,
    count: AtomicU64,
}

impl Fetches {
    /// Fetches into mirrors under `cache`.
    pub fn new(cache: GitCache) -> Self {
        Self {
            cache,
            slots: Mutex::new(HashMap::new()),
            count: AtomicU64::new(0),
        }
    }

    /// The mirror cache.
    pub fn cache(&self) -> &GitCache {
        &self.cache
    }

    /// Fetches performed so far (shared ones count once).
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// A fetch of `url` that finished after `asked_at`.
    pub fn fetch(
        &self,
        url: &str,
        credentials: Option<&Credentials>,
        asked_at: Instant,
    ) -> Result<FetchOutcome, OriginError> {
        let slot = self.slots.lock().entry(url.to_owned()).or_default().clone();
        let mut last = slot.lock();
        if let Some(done) = last.as_ref().filter(|l| l.finished > asked_at) {
            return Ok(done.outcome.clone());
        }
        let outcome = self.cache.fetch(url, credentials)?;
        self.count.fetch_add(1, Ordering::Relaxed);
        *last = Some(LastFetch {
            finished: Instant::now(),
            outcome: outcome.clone(),
        });
        Ok(outcome)
    }

    /// Runs `write` on the mirror of `url` (fetched first when there is
    /// none yet) while no fetch of it runs. `write` gets the mirror's path
    /// and a way to fetch into it again (for a retry after the upstream
    /// moved). The last fetch is forgotten after, as `write` changed the
    /// upstream: a sync asked from now on fetches again.
    pub fn write<T>(
        &self,
        url: &str,
        credentials: Option<&Credentials>,
        write: impl FnOnce(&Path, &mut dyn FnMut() -> Result<(), OriginError>) -> Result<T, OriginError>,
    ) -> Result<T, OriginError> {
        let slot = self.slots.lock().entry(url.to_owned()).or_default().clone();
        let mut last = slot.lock();
        let mirror = self.cache.mirror_path(url);
        let mut refetch = || {
            self.cache.fetch(url, credentials)?;
            self.count.fetch_add(1, Ordering::Relaxed);
            Ok(())
        };
        if !mirror.exists() {
            refetch()?;
        }
        let result = write(&mirror, &mut refetch);
        *last = None;
        result
    }

    /// Forgets `url` and removes its mirror (its last registration is gone).
    pub fn remove(&self, url: &str) -> Result<(), OriginError> {
        let slot = self.slots.lock().remove(url);
        let _guard = slot.as_ref().map(|s| s.lock());
        self.cache.remove(url)
    }
}

/// What syncing needs besides the repository itself.
#[derive(Debug)]
pub struct SyncEnv {
    /// The node's store (blobs go here).
    pub store: Store,
    /// Shared fetches and mirrors.
    pub fetches: Fetches,
    /// Credentials by name.
    pub secrets: Secrets,
    /// Hands memory freed by a sync or unregister that changed revisions
    /// back to the system (the node passes its allocator's purge; a no-op
    /// `|| {}` is fine).
    pub release_memory: fn(),
    /// Discoveries run so far (see `registry::DiscoveryCount`).
    pub discoveries: AtomicU64,
    /// The node-wide cap on syncs running at once.
    pub slots: crate::timing::SyncSlots,
    /// The node-wide memory budget of syncs' chunks.
    pub budget: crate::timing::SyncBudget,
    /// Tags, drafts and proposals discoveries read so far (see
    /// `registry::RefsRead`): an incremental sync reads only the changed
    /// packages' refs.
    pub refs_read: AtomicU64,
    /// How commits are signed and failed pushes retried (`[git]`
    /// `committer-name`, `committer-email`, `push-attempts`,
    /// `push-retry-delay`).
    pub write: WriteConfig,
    /// In a cluster, the replicated log repositories append through (see
    /// [`crate::cluster`]); `None` appends to `store` directly.
    pub cluster: Option<crate::cluster::ClusterAppend>,
}

/// What a RepositoryActor knows of its upstream from its last successful
/// sync: the digest the view records and the refs behind it.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// `refs_digest` of the last successful sync (from the view).
    pub digest: String,
    /// The raw refs that sync read, when this actor ran it (kept in memory
    /// only: after a restart the next change is read in full).
    pub refs: Option<Arc<BTreeMap<String, git2::Oid>>>,
}

/// The digest a sync records (`SyncSucceeded.refs_digest`) and compares
/// with the next fetch's: the fetched refs' digest (see
/// [`crate::origin::FetchOutcome::digest`]) with discovery's
/// [`origin::RULES_VERSION`] folded in, so that the same refs read by a
/// node with other discovery rules are not "unchanged": its first sync
/// after an upgrade discovers the repository again and reports the
/// revisions the new rules read differently as `Modified`, once.
/// sha256 (hex), like the fetched digest.
pub fn refs_digest(fetched: &str) -> String {
    rules_digest(origin::RULES_VERSION, fetched)
}

fn rules_digest(rules_version: u32, fetched: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!("cairn discovery rules {rules_version}\n{fetched}").as_bytes());
    hex::encode(hasher.finalize())
}

/// Which revisions an upstream read covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// All of the repository's.
    Full,
    /// The revisions of these packages (full paths in the repository); the
    /// rest are as the view has them.
    Packages(HashSet<String>),
}

/// The packages whose revisions differ between refs `old` and `new`, when
/// only tags, drafts and proposals changed; `None` when the registered
/// branch or a deletion proposal moved (those touch placeholders and
/// lifecycles across packages: read in full).
pub fn changed_packages(
    old: &BTreeMap<String, git2::Oid>,
    new: &BTreeMap<String, git2::Oid>,
    branch: &str,
) -> Option<HashSet<String>> {
    let main = format!("refs/heads/{branch}");
    let mut packages = HashSet::new();
    let changed = old
        .iter()
        .filter(|(name, oid)| new.get(*name) != Some(oid))
        .chain(new.iter().filter(|(name, oid)| old.get(*name) != Some(oid)));
    for (name, _) in changed {
        if *name == main || name.starts_with("refs/heads/deletionProposed/") {
            return None;
        }
        if let Some(package) = origin::package_of_ref(name) {
            packages.insert(package.to_owned());
        }
    }
    Some(packages)
}

/// What a read of the upstream found.
#[derive(Debug)]
pub enum UpstreamRead {
    /// Its refs have the digest the caller already knew: nothing changed.
    Unchanged,
    /// Its state, ready to reconcile (boxed: it holds the open discovery).
    Changed(Box<Upstream>),
}

/// The upstream's state, ready to reconcile.
#[derive(Debug)]
pub struct Upstream {
    /// Digest of the upstream's refs (see [`crate::origin::FetchOutcome`]).
    pub refs_digest: String,
    /// The refs read.
    pub refs: Arc<BTreeMap<String, git2::Oid>>,
    /// Which revisions `revisions` covers.
    pub scope: Scope,
    /// Commit of the registered branch.
    pub commit: String,
    /// The package revisions, handed out in batches (each read and stored
    /// as it is asked for, see [`Resources`]).
    pub revisions: origin::DiscoveryStream,
    /// The mirror the revisions are read from.
    pub mirror: PathBuf,
}

/// Fetches the upstream of `spec` and opens its discovery, creating its
/// branch when it is missing and `create_branch` is set. When the fetched
/// refs have the digest of the last sync under this spec (`known`), stops
/// there: nothing changed, no discovery (the cost of about one
/// `ls-remote`). When `known` has the refs behind that digest and only
/// tags, drafts and proposals changed, discovers just the packages those
/// name ([`Scope::Packages`]). The revisions themselves are read later, a
/// batch at a time ([`Upstream::revisions`]).
pub fn read_upstream(
    env: &SyncEnv,
    spec: &RepositorySpec,
    asked_at: Instant,
    known: &Known,
) -> Result<UpstreamRead, ReadError> {
    let git = spec.git.clone().unwrap_or_default();
    let credentials = env.secrets.resolve(&git.secret_ref)?;
    let started = Instant::now();
    let fetch_span = tracing::info_span!("sync.fetch");
    let mut outcome =
        fetch_span.in_scope(|| env.fetches.fetch(&git.url, credentials.as_ref(), asked_at))?;
    drop(fetch_span);
    let fetched = started.elapsed();
    if !known.digest.is_empty() && refs_digest(&outcome.digest) == known.digest {
        debug!(url = %git.url, fetch_ms = fetched.as_millis(), "upstream unchanged");
        return Ok(UpstreamRead::Unchanged);
    }
    let mirror = env.fetches.cache().mirror_path(&git.url);
    env.discoveries.fetch_add(1, Ordering::Relaxed);
    // The discovery phase: the rest of this function (refs read, recorded
    // when known).
    let discovery_span = tracing::info_span!("sync.discovery", refs_read = tracing::field::Empty);
    let _discovery = discovery_span.enter();
    let mut scope = match &known.refs {
        Some(old) if !known.digest.is_empty() => {
            changed_packages(old, &outcome.raw, &git.branch).map(Scope::Packages)
        }
        _ => None,
    }
    .unwrap_or(Scope::Full);
    let mut discovery = match &scope {
        Scope::Full => origin::DiscoveryStream::open(&mirror, &git.branch, &git.directory, None)?,
        Scope::Packages(packages) => {
            origin::DiscoveryStream::open(&mirror, &git.branch, &git.directory, Some(packages))?
        }
    };
    if discovery.branch_commit().is_none() {
        if !git.create_branch {
            return Err(OriginError::BranchMissing {
                branch: git.branch.clone(),
            }
            .into());
        }
        origin::create_branch(
            env.fetches.cache(),
            &git.url,
            &git.branch,
            &env.write.committer,
            credentials.as_ref(),
        )?;
        outcome = env
            .fetches
            .fetch(&git.url, credentials.as_ref(), Instant::now())?;
        discovery = origin::DiscoveryStream::open(&mirror, &git.branch, &git.directory, None)?;
        scope = Scope::Full;
    }
    env.refs_read
        .fetch_add(discovery.refs_read() as u64, Ordering::Relaxed);
    discovery_span.record("refs_read", discovery.refs_read() as u64);
    crate::metrics::with(|m| m.sync_refs_read.add(discovery.refs_read() as u64, &[]));
    let commit = discovery
        .branch_commit()
        .ok_or_else(|| OriginError::BranchMissing {
            branch: git.branch.clone(),
        })?;
    debug!(
        url = %git.url,
        fetch_ms = fetched.as_millis(),
        open_ms = (started.elapsed() - fetched).as_millis(),
        "upstream read"
    );
    Ok(UpstreamRead::Changed(Box::new(Upstream {
        refs_digest: refs_digest(&outcome.digest),
        refs: Arc::new(outcome.raw),
        scope,
        commit,
        revisions: discovery,
        mirror,
    })))
}

/// Stores discovered revisions' contents in the blob store, as package
/// revisions of one repository: each Git blob read and put once per
/// [`Resources`] (a put of a digest the store holds writes nothing), its
/// pin kept until the events referring to it commit.
pub struct Resources {
    blobs: origin::Blobs,
    repository: String,
    /// Git blob → digest, of the blobs stored through this value.
    digests: HashMap<git2::Oid, String>,
    /// The pins of those blobs.
    pins: Vec<BlobPin>,
}

impl std::fmt::Debug for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resources")
            .field("repository", &self.repository)
            .field("stored", &self.digests.len())
            .finish_non_exhaustive()
    }
}

impl Resources {
    /// Reads blobs from the mirror at `mirror` for `spec`'s repository.
    pub fn open(mirror: &Path, spec: &RepositorySpec) -> Result<Self, ReadError> {
        Ok(Self {
            blobs: origin::Blobs::open(mirror)?,
            repository: spec.name.clone(),
            digests: HashMap::new(),
            pins: Vec::new(),
        })
    }

    /// `found` as a package revision (named by its object name), its
    /// contents stored in `blob_store`. Blocking.
    pub fn store(
        &mut self,
        blob_store: &dyn BlobStore,
        found: origin::DiscoveredRevision,
    ) -> Result<PackageRevision, ReadError> {
        let mut resources = BTreeMap::new();
        for (path, id) in found.resources.iter() {
            let digest = match self.digests.get(id) {
                Some(digest) => digest.clone(),
                None => {
                    let pin = self
                        .blobs
                        .with(*id, |content| blob_store.put(content))?
                        .map_err(|source| ReadError::Store {
                            path: path.clone(),
                            source,
                        })?;
                    let digest = pin.digest().to_string();
                    self.pins.push(pin);
                    self.digests.insert(*id, digest.clone());
                    digest
                }
            };
            resources.insert(path.clone(), digest);
        }
        let name = object_name(
            &self.repository,
            &found.path,
            &found.package,
            &found.workspace,
        );
        let published_at = found.published_at.as_deref().and_then(parse_timestamp);
        Ok(PackageRevision {
            name,
            path: found.path,
            package: found.package,
            workspace: found.workspace,
            revision: found.revision,
            lifecycle: found.lifecycle.as_str().to_owned(),
            commit: found.commit,
            resources,
            published_by: found.published_by.unwrap_or_default(),
            published_at,
            tasks: found
                .tasks
                .into_iter()
                .map(|t| Task {
                    r#type: t.r#type,
                    raw: t.raw,
                })
                .collect(),
            labels: found.labels,
            latest: found.latest,
            annotations: found.annotations,
        })
    }

    /// The pins of every blob stored so far, handed over (to be dropped
    /// once the events referring to them committed); the next revisions
    /// start a new set.
    pub fn take_pins(&mut self) -> Vec<BlobPin> {
        self.digests.clear();
        std::mem::take(&mut self.pins)
    }
}

/// The discovered `found` revisions as package revisions of `spec`'s
/// repository, their contents put into `blob_store` (one at a time, each
/// blob once), with the pins that keep those blobs until the events
/// referring to them commit. Blocking.
pub fn store_revisions(
    blob_store: &dyn BlobStore,
    mirror: &Path,
    spec: &RepositorySpec,
    found: Vec<origin::DiscoveredRevision>,
) -> Result<(BTreeMap<String, PackageRevision>, Vec<BlobPin>), ReadError> {
    let mut resources = Resources::open(mirror, spec)?;
    let mut revisions = BTreeMap::new();
    for found in found {
        let revision = resources.store(blob_store, found)?;
        revisions.insert(revision.name.clone(), revision);
    }
    Ok((revisions, resources.take_pins()))
}

/// Parses an RFC 3339 time into a protobuf timestamp.
pub fn parse_timestamp(text: &str) -> Option<pbjson_types::Timestamp> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_resolve_from_files_and_never_guess() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("git-creds")).unwrap();
        std::fs::write(dir.path().join("git-creds/username"), "bot\n").unwrap();
        std::fs::write(dir.path().join("git-creds/password"), "s3cret\n").unwrap();
        let secrets = Secrets::new(Some(dir.path().to_path_buf()));
        let creds = secrets.resolve("git-creds").unwrap().unwrap();
        assert_eq!(
            (creds.username.as_str(), creds.password.as_str()),
            ("bot", "s3cret")
        );
        assert_eq!(secrets.resolve("").unwrap(), None);
        let err = secrets.resolve("missing").unwrap_err();
        assert_eq!(err.class(), "auth");
        let err = Secrets::default().resolve("x").unwrap_err().to_string();
        assert!(err.contains("no secrets directory is configured"), "{err}");
    }

    /// The recorded digest follows the refs and the discovery rules: the
    /// same refs under other rules (a store synced by an older node, whose
    /// digest had no version) are a change.
    #[test]
    fn the_refs_digest_folds_in_the_discovery_rules() {
        let fetched = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let digest = refs_digest(fetched);
        assert_eq!(digest.len(), 64);
        assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(digest, refs_digest(fetched), "deterministic");
        // What the last node without a rules version recorded: the
        // fetched digest itself.
        assert_ne!(digest, fetched);
        assert_ne!(digest, rules_digest(origin::RULES_VERSION - 1, fetched));
        assert_ne!(digest, rules_digest(origin::RULES_VERSION + 1, fetched));
        assert_ne!(digest, refs_digest(&fetched.replace('9', "8")));
    }

    #[test]
    fn timestamps_parse_from_rfc3339() {
        let ts = parse_timestamp("2022-08-26T22:47:35Z").unwrap();
        assert_eq!((ts.seconds, ts.nanos), (1_661_554_055, 0));
        assert_eq!(parse_timestamp("yesterday"), None);
    }
}
