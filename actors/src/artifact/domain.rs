//! The artifact streams' writer: `StreamWriter<ArtifactDomain>`, one per
//! partition (`artifact/<n>`), the only appender of its stream.
//!
//! The decisions are small — the cache component decided already that a
//! response is storable, stale or evicted — so the writer's part is the
//! ordering and fencing every domain shares: an append at the version the
//! writer saw, so two writers of one stream (a cluster moving ownership)
//! can never both append, and a body's pin held until the event that
//! refers to it has committed.
//!
//! What removes entries is checked by the writer against its stream's
//! rows as they are when the command runs (the writer is the only one to
//! change them), because on a cluster the node that decided it may not be
//! the stream's owner and may have seen an older replica:
//! [`ArtifactCommand::Invalidate`] appends only when the URL has a stored
//! response; [`ArtifactCommand::EvictIfCurrent`] evicts an entry only while
//! its row is the one the decider saw (same body, same stream version: an
//! entry stored again or revalidated meanwhile stays, and two nodes
//! evicting one entry append one event);
//! [`ArtifactCommand::EvictUrl`] / [`ArtifactCommand::EvictDigest`] select
//! their entries here. So the owner makes every removal decision final,
//! and the log says the same on every node. A command answers how many
//! events it appended.
//!
//! A command whose metadata carries an idempotency key (a cluster record,
//! see [`super::cluster`]) is checked against the `requests` view first:
//! when the key was applied, the writer appends nothing and answers how
//! many events the key's first run appended (the same key with another
//! record is [`ArtifactError::RequestReused`], a 409).

use cairn_events::v1::ArtifactRow;
use cairn_events::{
    v1::{
        event::Payload, ArtifactEvicted, ArtifactInvalidated, ArtifactRevalidated, ArtifactStored,
        Event,
    },
    StreamId,
};
use cairn_storage::{
    views::{artifacts::INDEXED_METHOD, ArtifactsView},
    AsyncAppend, BlobPin, Store,
};
use futures::future::BoxFuture;

use super::{key::partition, ArtifactError};
use crate::writer::{off_arbiter, Chunking, Session, StreamDomain, StreamWriter};

/// The artifact domain (see the module docs).
#[derive(Debug)]
pub struct ArtifactDomain;

/// The writer of one artifact stream.
pub type ArtifactWriter = StreamWriter<ArtifactDomain>;

/// What a writer knows of its stream.
#[derive(Debug, Clone)]
pub struct ArtifactState {
    /// `artifact/<partition>`.
    pub stream: StreamId,
    /// The partition number.
    pub partition: u32,
    /// The stream version seen.
    pub version: u64,
}

/// What the writers share.
#[derive(Debug)]
pub struct ArtifactEnv {
    /// The node's store (reads).
    pub store: Store,
    /// Where the writers append.
    pub log: ArtifactLog,
}

/// Where the artifact writers append.
#[derive(Debug, Clone)]
pub enum ArtifactLog {
    /// A single node's store.
    Store(Store),
    /// The cluster's replicated log (fenced, answered once applied here).
    Cluster(crate::cluster::ClusterAppend),
}

/// Most entries one `artifact.evict {digest}` selects in a partition.
pub const EVICT_DIGEST_MAX_ENTRIES: usize = 10_000;

/// One command of an artifact stream.
#[derive(Debug)]
pub enum ArtifactCommand {
    /// Record a downloaded response whose body `pin` holds in the store.
    Store {
        /// The event.
        event: ArtifactStored,
        /// Keeps the body from collection until the event has committed.
        pin: BlobPin,
    },
    /// Record a 304's header update.
    Revalidate(ArtifactRevalidated),
    /// Drop every stored response of a URL (nothing when it has none).
    Invalidate(ArtifactInvalidated),
    /// Drop entries.
    Evict(Vec<ArtifactEvicted>),
    /// Drop each entry only while its row is the one the decider saw: the
    /// same body digest and the stream version given.
    EvictIfCurrent(Vec<(ArtifactEvicted, u64)>),
    /// Drop every stored variant of a URL.
    EvictUrl {
        /// The URL.
        url: String,
        /// `request`.
        reason: String,
    },
    /// Drop the entries of the writer's partition whose body is `digest`
    /// (at most [`EVICT_DIGEST_MAX_ENTRIES`]).
    EvictDigest {
        /// `sha256:<hex>`.
        digest: String,
        /// `request`.
        reason: String,
    },
}

/// One artifact event.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactEvent(pub Payload);

impl From<ArtifactEvent> for Event {
    fn from(e: ArtifactEvent) -> Self {
        cairn_events::envelope::event(e.0)
    }
}

impl ArtifactEvent {
    /// The URL the event is about.
    fn url(&self) -> &str {
        match &self.0 {
            Payload::ArtifactStored(e) => e.key.as_ref().map_or("", |k| k.url.as_str()),
            Payload::ArtifactRevalidated(e) => e.key.as_ref().map_or("", |k| k.url.as_str()),
            Payload::ArtifactInvalidated(e) => &e.url,
            Payload::ArtifactEvicted(e) => e.key.as_ref().map_or("", |k| k.url.as_str()),
            _ => "",
        }
    }
}

/// The pure decision: the command's events, each about a URL of the
/// writer's partition (anything else is a bug, refused whole).
pub fn decide(
    state: &ArtifactState,
    command: &ArtifactCommand,
) -> Result<Vec<ArtifactEvent>, ArtifactError> {
    let events = match command {
        ArtifactCommand::Store { event, .. } => {
            vec![ArtifactEvent(Payload::ArtifactStored(event.clone()))]
        }
        ArtifactCommand::Revalidate(e) => {
            vec![ArtifactEvent(Payload::ArtifactRevalidated(e.clone()))]
        }
        ArtifactCommand::Invalidate(e) => {
            vec![ArtifactEvent(Payload::ArtifactInvalidated(e.clone()))]
        }
        ArtifactCommand::Evict(list) => list
            .iter()
            .map(|e| ArtifactEvent(Payload::ArtifactEvicted(e.clone())))
            .collect(),
        ArtifactCommand::EvictIfCurrent(_)
        | ArtifactCommand::EvictUrl { .. }
        | ArtifactCommand::EvictDigest { .. } => {
            // Resolved against the rows first ([`resolve`]).
            return Err(ArtifactError::NotFound(
                "an eviction to check against the rows reached the pure decision".to_owned(),
            ));
        }
    };
    for event in &events {
        let found = partition(event.url());
        if found != state.partition {
            return Err(ArtifactError::WrongPartition {
                url: event.url().to_owned(),
                expected: found,
                found: state.partition,
            });
        }
    }
    Ok(events)
}

/// The rows of the writer's partition a removal selects, as they are now
/// (the writer is their only writer): `None` when the command removes
/// nothing but is decided on its own.
fn resolve_blocking(
    store: &Store,
    partition_of_writer: u32,
    command: &ArtifactCommand,
) -> Result<Option<Vec<ArtifactEvicted>>, ArtifactError> {
    let evicted = |row: ArtifactRow, reason: &str| ArtifactEvicted {
        digest: row.digest,
        key: row.key,
        reason: reason.to_owned(),
    };
    let variants = |url: &str| -> Result<Vec<ArtifactRow>, ArtifactError> {
        let mut rows = Vec::new();
        let listed = ArtifactsView::variants(store, INDEXED_METHOD, url)?;
        for vary_key in listed.map(|v| v.vary_keys).unwrap_or_default() {
            let key = cairn_events::v1::ArtifactKey {
                method: INDEXED_METHOD.to_owned(),
                url: url.to_owned(),
                vary_key,
            };
            rows.extend(ArtifactsView::get(store, &key)?);
        }
        Ok(rows)
    };
    Ok(match command {
        ArtifactCommand::EvictIfCurrent(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (e, version) in list {
                let Some(key) = e.key.as_ref() else { continue };
                let current = ArtifactsView::get(store, key)?;
                if current
                    .is_some_and(|row| row.digest == e.digest && row.stream_version == *version)
                {
                    out.push(e.clone());
                }
            }
            Some(out)
        }
        ArtifactCommand::EvictUrl { url, reason } => Some(
            variants(url)?
                .into_iter()
                .map(|row| evicted(row, reason))
                .collect(),
        ),
        ArtifactCommand::EvictDigest { digest, reason } => {
            let mut out = Vec::new();
            for key in ArtifactsView::keys_of_digest(store, digest, EVICT_DIGEST_MAX_ENTRIES)? {
                if partition(&key.url) != partition_of_writer {
                    continue;
                }
                if let Some(row) = ArtifactsView::get(store, &key)? {
                    out.push(evicted(row, reason));
                }
            }
            Some(out)
        }
        ArtifactCommand::Invalidate(e) => {
            if ArtifactsView::variants(store, INDEXED_METHOD, &e.url)?.is_some() {
                None
            } else {
                Some(Vec::new())
            }
        }
        _ => None,
    })
}

/// When the session's command carries an idempotency key that the
/// `requests` view holds (see [`crate::service::idempotency`]): the number
/// of events its first run appended, which is what it answered. Checked by
/// the writer, which runs one command at a time and whose appends are
/// applied to the view before it answers: a retry queued behind the first
/// attempt, or sent to the stream's next owner after a failover (which
/// applied the log up to its fence before writing), finds them.
async fn replayed(session: &Session<ArtifactDomain>) -> Result<Option<u64>, ArtifactError> {
    use crate::service::idempotency::{events_blocking, recorded_blocking, Recorded};
    let metadata = session.metadata();
    if metadata.request_id.is_empty() {
        return Ok(None);
    }
    let store = session.env().store.clone();
    let (id, digest) = (metadata.request_id.clone(), metadata.request_digest.clone());
    off_arbiter("artifact-request-id", move || {
        match recorded_blocking(&store, &id, &digest)? {
            Recorded::New => Ok(None),
            Recorded::Reused(row) => Err(ArtifactError::RequestReused {
                message: crate::service::idempotency::reused_message(&id, &row),
            }),
            Recorded::Applied(row) => {
                let count = events_blocking(&store, &id, &row)?.len() as u64;
                tracing::debug!(request_id = %id, first_seq = row.first_seq, count, "artifact record already applied; appending nothing");
                Ok(Some(count))
            }
        }
    })
    .await?
}

impl StreamDomain for ArtifactDomain {
    type State = ArtifactState;
    type Command = ArtifactCommand;
    type Event = ArtifactEvent;
    type Reply = u64;
    type Error = ArtifactError;
    type Env = ArtifactEnv;

    const NAME: &'static str = "artifact";

    fn store(env: &Self::Env) -> &dyn AsyncAppend {
        match &env.log {
            ArtifactLog::Store(store) => store,
            ArtifactLog::Cluster(appender) => appender,
        }
    }

    fn stream(state: &Self::State) -> &StreamId {
        &state.stream
    }

    fn version(state: &Self::State) -> u64 {
        state.version
    }

    fn fold(state: &mut Self::State, _event: &Self::Event, version: u64) {
        state.version = version;
    }

    fn run(
        session: &mut Session<Self>,
        command: Self::Command,
    ) -> BoxFuture<'_, Result<Self::Reply, Self::Error>> {
        Box::pin(async move {
            // A command sent again with its key (a record whose answer was
            // lost, to this owner or to the one before it) appends nothing
            // and answers what its first run appended.
            if let Some(count) = replayed(session).await? {
                return Ok(count);
            }
            let checked = matches!(
                command,
                ArtifactCommand::EvictIfCurrent(_)
                    | ArtifactCommand::EvictUrl { .. }
                    | ArtifactCommand::EvictDigest { .. }
                    | ArtifactCommand::Invalidate(_)
            );
            let command = if checked {
                let store = session.env().store.clone();
                let p = session.state().partition;
                let (resolved, command) = off_arbiter("artifact-evict", move || {
                    (resolve_blocking(&store, p, &command), command)
                })
                .await?;
                match resolved? {
                    Some(list) if list.is_empty() => return Ok(0),
                    Some(list) => ArtifactCommand::Evict(list),
                    None => command,
                }
            } else {
                command
            };
            let events = decide(session.state(), &command)?;
            let count = events.len() as u64;
            session.append(events, Chunking::MaxEvents).await?;
            // The body's pin goes only now that its event has committed.
            drop(command);
            Ok(count)
        })
    }
}

#[cfg(test)]
mod tests {
    use cairn_events::v1::ArtifactKey;

    use super::*;

    fn state_for(url: &str) -> ArtifactState {
        let p = partition(url);
        ArtifactState {
            stream: StreamId::artifact(p),
            partition: p,
            version: 0,
        }
    }

    #[test]
    fn given_a_partition_when_evicting_its_urls_then_one_event_each() {
        let url = "https://charts.example.com/a.tgz";
        let evicted = ArtifactEvicted {
            key: Some(ArtifactKey {
                method: "GET".into(),
                url: url.into(),
                vary_key: String::new(),
            }),
            digest: "sha256:00".into(),
            reason: "lru".into(),
        };
        let events = decide(
            &state_for(url),
            &ArtifactCommand::Evict(vec![evicted.clone(), evicted.clone()]),
        )
        .unwrap();
        assert_eq!(
            events,
            vec![
                ArtifactEvent(Payload::ArtifactEvicted(evicted.clone())),
                ArtifactEvent(Payload::ArtifactEvicted(evicted))
            ]
        );
    }

    #[test]
    fn given_another_partition_when_invalidating_then_refused() {
        let url = "https://charts.example.com/a.tgz";
        let mut state = state_for(url);
        state.partition = (state.partition + 1) % super::super::PARTITIONS;
        let err = decide(
            &state,
            &ArtifactCommand::Invalidate(ArtifactInvalidated {
                url: url.into(),
                reason: "PUT".into(),
            }),
        )
        .unwrap_err();
        assert!(matches!(err, ArtifactError::WrongPartition { .. }), "{err}");
    }
}
