//! Stores for tests that use storage directly: [`TempStore`] (a real
//! RocksDB store in a temp directory) and [`events`], sample events.

use cairn_storage::{views::default_views, Store, StoreConfig};

/// A store in a temp directory.
#[derive(Debug)]
pub struct TempStore {
    /// The store.
    pub store: Store,
    /// Its directory (removed on drop).
    pub dir: tempfile::TempDir,
}

impl TempStore {
    /// Opens a fresh store with the default views.
    pub fn open() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(StoreConfig::new(dir.path().join("store")), default_views())
            .expect("open store");
        Self { store, dir }
    }
}

/// Sample events.
pub mod events {
    use cairn_events::{
        envelope::event,
        v1::{
            event::Payload, Event, GitSpec, RepositoryClosed, RepositoryRegistered, RepositorySpec,
            RepositorySpecChanged,
        },
    };

    /// A git repository spec.
    pub fn spec(namespace: &str, name: &str, branch: &str) -> RepositorySpec {
        RepositorySpec {
            namespace: namespace.into(),
            name: name.into(),
            r#type: "git".into(),
            git: Some(GitSpec {
                url: format!("file:///srv/git/{name}.git"),
                branch: branch.into(),
                directory: "/".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// `RepositoryRegistered`.
    pub fn registered(namespace: &str, name: &str) -> Event {
        event(Payload::RepositoryRegistered(RepositoryRegistered {
            spec: Some(spec(namespace, name, "main")),
        }))
    }

    /// `RepositorySpecChanged` to `branch`.
    pub fn spec_changed(namespace: &str, name: &str, branch: &str) -> Event {
        event(Payload::RepositorySpecChanged(RepositorySpecChanged {
            spec: Some(spec(namespace, name, branch)),
            next_sync_at: None,
        }))
    }

    /// `RepositoryClosed`.
    pub fn closed(reason: &str) -> Event {
        event(Payload::RepositoryClosed(RepositoryClosed {
            reason: reason.into(),
        }))
    }
}
