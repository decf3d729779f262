//! The `repositories` view: one row per registered (not closed) repository.

use cairn_events::v1::{event::Payload, Envelope, RepositoryRow, RepositoryStatus};

use crate::{
    read::{ViewRead, ViewReadExt},
    StorageError, View, ViewTx,
};

/// Registered repositories, keyed by `<namespace>/<name>`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RepositoriesView;

impl RepositoriesView {
    /// The view's name.
    pub const NAME: &'static str = "repositories";

    fn key(namespace: &str, name: &str) -> Vec<u8> {
        format!("{namespace}/{name}").into_bytes()
    }

    /// The row of repository `namespace/name`, if registered.
    pub fn get(
        store: &(impl ViewRead + ?Sized),
        namespace: &str,
        name: &str,
    ) -> Result<Option<RepositoryRow>, StorageError> {
        store.view_get_message(Self::NAME, &Self::key(namespace, name))
    }

    /// Every registered repository (of `namespace`, when given), ordered by
    /// namespace then name.
    pub fn list(
        store: &(impl ViewRead + ?Sized),
        namespace: Option<&str>,
    ) -> Result<Vec<RepositoryRow>, StorageError> {
        let prefix = namespace
            .map(|ns| format!("{ns}/").into_bytes())
            .unwrap_or_default();
        Ok(store
            .view_scan_messages(Self::NAME, &prefix, None, usize::MAX)?
            .into_iter()
            .map(|(_, row)| row)
            .collect())
    }
}

impl View for RepositoriesView {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn apply(&self, tx: &mut ViewTx<'_>, envelope: &Envelope) -> Result<(), StorageError> {
        let Ok(stream) = cairn_events::StreamId::new(envelope.stream.clone()) else {
            return Ok(());
        };
        let Some((namespace, name)) = stream.as_repository() else {
            return Ok(());
        };
        let key = Self::key(namespace, name);
        let Some(payload) = envelope.event.as_ref().and_then(|e| e.payload.as_ref()) else {
            return Ok(());
        };
        match payload {
            Payload::RepositoryRegistered(registered) => {
                let row = RepositoryRow {
                    status: Some(RepositoryStatus {
                        reason: "Reconciling".into(),
                        ..Default::default()
                    }),
                    spec: registered.spec.clone(),
                    stream_version: envelope.stream_version,
                    updated_seq: envelope.seq,
                    registered_at: envelope.recorded_at,
                    registered_by: envelope.principal.clone(),
                    updated_at: envelope.recorded_at,
                };
                tx.put_message(key, &row);
            }
            Payload::RepositorySpecChanged(changed) => {
                // A change to a repository that is not registered (closed
                // already) changes nothing: it must not bring it back.
                let Some(mut row) = tx.get_message::<RepositoryRow>(&key)? else {
                    return Ok(());
                };
                row.spec = changed.spec.clone();
                if let Some(status) = row.status.as_mut() {
                    status.refs_digest.clear();
                    // The time the new spec's plan gives (older events
                    // carry none: the last sync's time stays).
                    if changed.next_sync_at.is_some() {
                        status.next_sync_at = changed.next_sync_at;
                    }
                }
                row.stream_version = envelope.stream_version;
                row.updated_seq = envelope.seq;
                row.updated_at = envelope.recorded_at;
                tx.put_message(key, &row);
            }
            Payload::RepositoryClosed(_) => tx.delete(key),
            Payload::SyncStarted(_) | Payload::SyncSucceeded(_) | Payload::SyncFailed(_) => {
                let Some(mut row) = tx.get_message::<RepositoryRow>(&key)? else {
                    return Ok(());
                };
                let status = row.status.get_or_insert_with(RepositoryStatus::default);
                match payload {
                    Payload::SyncSucceeded(ok) => {
                        *status = RepositoryStatus {
                            ready: true,
                            reason: "Ready".into(),
                            message: String::new(),
                            commit: ok.commit.clone(),
                            package_count: ok.package_count,
                            last_sync_at: envelope.recorded_at,
                            next_sync_at: ok.next_sync_at,
                            error_class: String::new(),
                            refs_digest: ok.refs_digest.clone(),
                        };
                    }
                    Payload::SyncFailed(failed) => {
                        status.ready = false;
                        status.reason = "Error".into();
                        status.message = failed.message.clone();
                        status.error_class = failed.error_class.clone();
                        status.next_sync_at = failed.retry_at;
                    }
                    // A sync running keeps the last result, and says so
                    // only while nothing succeeded yet.
                    _ if status.last_sync_at.is_none() && status.reason != "Error" => {
                        status.reason = "Reconciling".into();
                    }
                    _ => {}
                }
                row.stream_version = envelope.stream_version;
                row.updated_seq = envelope.seq;
                tx.put_message(key, &row);
            }
            _ => {}
        }
        Ok(())
    }
}
