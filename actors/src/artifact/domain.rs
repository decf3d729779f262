//! The artifact streams' writer: `StreamWriter<ArtifactDomain>`, one per
//! partition (`artifact/<n>`), the only appender of its stream.
//!
//! The decisions are small — the cache component decided already that a
//! response is storable, stale or evicted — so the writer's part is the
//! ordering and fencing every domain shares: an append at the version the
//! writer saw, so two writers of one stream (a cluster moving ownership)
//! can never both append, and a body's pin held until the event that
//! refers to it has committed.

use cairn_events::{
    v1::{
        event::Payload, ArtifactEvicted, ArtifactInvalidated, ArtifactRevalidated, ArtifactStored,
        Event,
    },
    StreamId,
};
use cairn_storage::{AsyncAppend, BlobPin, Store};
use futures::future::BoxFuture;

use super::{key::partition, ArtifactError};
use crate::writer::{Chunking, Session, StreamDomain, StreamWriter};

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
    /// The node's store.
    pub store: Store,
}

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
    /// Drop every stored response of a URL.
    Invalidate(ArtifactInvalidated),
    /// Drop entries.
    Evict(Vec<ArtifactEvicted>),
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

impl StreamDomain for ArtifactDomain {
    type State = ArtifactState;
    type Command = ArtifactCommand;
    type Event = ArtifactEvent;
    type Reply = ();
    type Error = ArtifactError;
    type Env = ArtifactEnv;

    const NAME: &'static str = "artifact";

    fn store(env: &Self::Env) -> &dyn AsyncAppend {
        &env.store
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
            let events = decide(session.state(), &command)?;
            session.append(events, Chunking::Whole).await?;
            // The body's pin goes only now that its event has committed.
            drop(command);
            Ok(())
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
