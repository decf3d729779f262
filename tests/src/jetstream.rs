//! What a JetStream stream holds, in stream order: [`cairn_seqs`] reads
//! the `Cairn-Seq` header of every message of `CAIRN_EVENTS` (or another
//! stream) with an ordered consumer, so a suite can compare stream
//! positions with the log's sequence numbers.

use async_nats::jetstream::{self, consumer::push::OrderedConfig};
use futures::StreamExt as _;

use crate::wait::{within, WAIT};

/// One stored message: its stream position and its `Cairn-Seq` header
/// (`None` when it has none or it is not a number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The message's stream sequence (its position).
    pub position: u64,
    /// Its `Cairn-Seq` header.
    pub cairn_seq: Option<u64>,
    /// Its `Nats-Msg-Id` header (the event id).
    pub msg_id: Option<String>,
}

/// Every message of `stream`, first to last, with its position and
/// `Cairn-Seq` (each wait bounded by [`WAIT`]).
pub async fn cairn_seqs(client: &async_nats::Client, stream: &str) -> Vec<Stored> {
    let js = jetstream::new(client.clone());
    let mut handle = within("the stream", WAIT, js.get_stream(stream))
        .await
        .unwrap_or_else(|e| panic!("stream {stream}: {e}"));
    let state = within("the stream's info", WAIT, handle.info())
        .await
        .unwrap_or_else(|e| panic!("info of {stream}: {e}"))
        .state
        .clone();
    if state.messages == 0 {
        return Vec::new();
    }
    let last = state.last_sequence;
    let consumer = within(
        "an ordered consumer",
        WAIT,
        handle.create_consumer(OrderedConfig {
            deliver_subject: client.new_inbox(),
            ..Default::default()
        }),
    )
    .await
    .unwrap_or_else(|e| panic!("an ordered consumer on {stream}: {e}"));
    let mut messages = within("the consumer's messages", WAIT, consumer.messages())
        .await
        .unwrap_or_else(|e| panic!("messages of {stream}: {e}"));
    let mut out = Vec::with_capacity(state.messages as usize);
    loop {
        let message = within(
            &format!("message {} of {last} in {stream}", out.len() + 1),
            WAIT,
            messages.next(),
        )
        .await
        .expect("the ordered consumer ended")
        .unwrap_or_else(|e| panic!("reading {stream}: {e}"));
        let position = message
            .info()
            .unwrap_or_else(|e| panic!("a JetStream message's info: {e}"))
            .stream_sequence;
        let cairn_seq = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Cairn-Seq"))
            .and_then(|v| v.as_str().parse().ok());
        let msg_id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_owned());
        out.push(Stored {
            position,
            cairn_seq,
            msg_id,
        });
        if position >= last {
            return out;
        }
    }
}
