//! Idempotent retries of writes: the `Cairn-Request-Id` header.
//!
//! A client that sent a write and got no answer (a timeout, a node that
//! died, a NATS outage) cannot tell whether it was applied. It retries
//! with the same `Cairn-Request-Id` (1–128 characters of letters, digits,
//! `.`, `_`, `:` and `-`; the CLI sends a fresh UUID per command and
//! reuses it on its retries):
//!
//! - the id and a digest of the endpoint and body are recorded in the
//!   envelope of every event the command appends, and folded into the
//!   `requests` view ([`RequestsView`]) in the same batch — so the record
//!   is exactly as durable as the events, survives restarts and reaches
//!   every replica;
//! - a request whose id the view holds (recorded less than
//!   [`REQUEST_ID_WINDOW_SECS`](cairn_storage::views::requests::REQUEST_ID_WINDOW_SECS) (24 hours) ago) runs nothing: the endpoint's *replay*
//!   answers what the command answers, read from the views now (the
//!   revision or repository it created or changed, as it is now; `delete`
//!   and `unregister` answer what they deleted), with the header
//!   `Cairn-Replayed: <seq of the first event>`;
//! - the same id with another endpoint or body is refused (409) — an id
//!   names one request;
//! - requests with one id run one at a time on a node ([`InFlight`]), so a
//!   retry that arrives while the first attempt still runs waits for it
//!   and then replays it;
//! - a command that appended nothing (it failed, or had nothing to do)
//!   leaves no record: its retry runs again, which is safe because nothing
//!   was applied.
//!
//! Writes without the header behave as before. Reads ignore it.
//!
//! Stream writers that check keys themselves, right before they append
//! ([`recorded_blocking`], [`events_blocking`]): the key-value cache's
//! `kv.set|delete|configure` (see `crate::kv`) and, on a cluster, the
//! artifact cache's records (see `crate::artifact::cluster`), whose keys a
//! node makes and sends with every attempt.
//!
//! # Keys a node makes (clusters)
//! On a cluster a write may run elsewhere than where it arrived: it is
//! forwarded to its stream's owner, sent again when an answer is lost,
//! routed again while the stream changes hands, or run on the receiving
//! node after all once the stream came to it. Each of those attempts may
//! follow one that was applied (an owner that appended and died before
//! answering), so they all carry one key: the client's, or — when it sent
//! none — one the receiving node makes once per command ([`made_id`],
//! `fwd-<uuid v7>`) before it routes it, and puts in the headers it
//! forwards *and* runs it with ([`with_id`]). A run here after a forward
//! then finds the forwarded attempt's record and appends nothing. The
//! service endpoints with a replay make it for every write on a cluster
//! (see `super::serve`); the key-value cache the first time it forwards
//! a command sent whole (its local writes carry no key, so compaction
//! keeps no tombstone for them; see `super::kv::on_owner`).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use cairn_events::v1::RequestRow;
use cairn_storage::{views::RequestsView, Store};
use sha2::{Digest as _, Sha256};

use super::context::{blocking, Incoming, ServiceContext};
use crate::ServiceError;

/// The request header carrying the idempotency key.
pub const REQUEST_ID_HEADER: &str = "Cairn-Request-Id";

/// The reply header set on a replayed answer: the global sequence number
/// of the first event the original command appended.
pub const REPLAYED_HEADER: &str = "Cairn-Replayed";

/// Longest idempotency key accepted, in characters.
pub const REQUEST_ID_MAX_CHARS: usize = 128;

/// The idempotency key of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKey {
    /// The `Cairn-Request-Id` header.
    pub id: String,
    /// SHA-256 of the endpoint, a NUL and the body's canonical JSON (see
    /// [`canonical`]).
    pub digest: Vec<u8>,
}

/// The key of a request to `endpoint`, when it carries one; a malformed
/// header is a 400 naming it.
pub fn request_key(
    endpoint: &str,
    headers: Option<&async_nats::HeaderMap>,
    body: &[u8],
) -> Result<Option<RequestKey>, ServiceError> {
    let Some(value) = headers.and_then(|h| h.get(REQUEST_ID_HEADER)) else {
        return Ok(None);
    };
    let id = value.as_str();
    let valid = !id.is_empty()
        && id.len() <= REQUEST_ID_MAX_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if !valid {
        return Err(ServiceError::bad_field(
            REQUEST_ID_HEADER,
            format!(
                "{:?} is not a request id (1-{REQUEST_ID_MAX_CHARS} letters, digits, '.', '_', ':' or '-')",
                truncated(id)
            ),
        ));
    }
    Ok(Some(key_of(endpoint, id.to_owned(), body)))
}

/// The key `id` of a request to `endpoint` with `body` (the digest as
/// [`request_key`] computes it): for a key cairn makes itself, e.g. the
/// one a node gives an artifact record it sends to a stream's owner.
pub fn key_of(endpoint: &str, id: String, body: &[u8]) -> RequestKey {
    let mut hasher = Sha256::new();
    hasher.update(endpoint.as_bytes());
    hasher.update([0]);
    hasher.update(canonical(body));
    RequestKey {
        id,
        digest: hasher.finalize().to_vec(),
    }
}

/// Prefix of the keys a node makes for a command that came without one
/// (see the module docs).
pub const MADE_ID_PREFIX: &str = "fwd-";

/// A new key id a node makes for a command that came without one:
/// `fwd-<uuid v7>`.
pub fn made_id() -> String {
    format!("{MADE_ID_PREFIX}{}", cairn_events::envelope::new_id())
}

/// A new key for a request to `endpoint` (`cairn.v1.…` or bare) with
/// `body` that came without one: [`made_id`] with the digest
/// [`request_key`] computes (see the module docs).
pub fn made_key(endpoint: &str, body: &[u8]) -> RequestKey {
    key_of(
        endpoint.strip_prefix("cairn.v1.").unwrap_or(endpoint),
        made_id(),
        body,
    )
}

/// A copy of `headers` (none: empty) whose `Cairn-Request-Id` is `id`.
pub fn with_id(headers: Option<&async_nats::HeaderMap>, id: &str) -> async_nats::HeaderMap {
    let mut headers = headers.cloned().unwrap_or_default();
    headers.insert(REQUEST_ID_HEADER, id);
    headers
}

/// The body as the digest sees it: the JSON value with every object's
/// keys sorted, without whitespace — so one request re-serialised (other
/// key order, spacing, or sent as protobuf, which arrives as its JSON
/// mapping) is the same request. A body that is not JSON is taken as is
/// (its handler refuses it anyway).
pub fn canonical(body: &[u8]) -> Vec<u8> {
    fn sorted(value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(
                    entries.into_iter().map(|(k, v)| (k, sorted(v))).collect(),
                )
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sorted).collect())
            }
            other => other,
        }
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => serde_json::to_vec(&sorted(value)).unwrap_or_else(|_| body.to_vec()),
        Err(_) => body.to_vec(),
    }
}

fn truncated(s: &str) -> String {
    s.chars().take(REQUEST_ID_MAX_CHARS + 8).collect()
}

/// What a request with a key found.
#[derive(Debug)]
pub enum Prior {
    /// No command in the window carried the key: run the request.
    None,
    /// A command with this key and this request appended events: replay.
    Applied(RequestRow),
}

/// Looks `key` up in the `requests` view; the key used for another
/// request is a 409.
pub async fn prior(context: &ServiceContext, key: &RequestKey) -> Result<Prior, ServiceError> {
    let store = context.store.clone();
    let (id, digest) = (key.id.clone(), key.digest.clone());
    match blocking(move || Ok(recorded_blocking(&store, &id, &digest)?)).await? {
        Recorded::New => Ok(Prior::None),
        Recorded::Reused(row) => Err(ServiceError::conflict(reused_message(&key.id, &row))),
        Recorded::Applied(row) => Ok(Prior::Applied(row)),
    }
}

/// What the `requests` view holds of a key (see [`recorded_blocking`]).
#[derive(Debug)]
pub enum Recorded {
    /// No command in the window carried it.
    New,
    /// A command with this key and this digest appended events.
    Applied(RequestRow),
    /// A command with this key but another digest appended events: the
    /// key names another request (a 409).
    Reused(RequestRow),
}

/// The message of a key used for another request (answered 409).
pub fn reused_message(id: &str, row: &RequestRow) -> String {
    format!(
        "{REQUEST_ID_HEADER} {id:?} was already used for another request (applied at seq {}); \
         send a new id with a new request",
        row.first_seq
    )
}

/// Looks key `id` with `digest` up in the `requests` view of `store`, as
/// of now (a row older than the window is no record). Blocking: for a
/// stream writer that checks a command's key itself, right before it
/// appends — the writer runs one command at a time and its appends are
/// applied here before it answers, so a retry queued behind the first
/// attempt finds the first attempt's events, on this node or, after a
/// failover, on the stream's new owner (which applied the log up to its
/// fence before writing).
pub fn recorded_blocking(
    store: &Store,
    id: &str,
    digest: &[u8],
) -> Result<Recorded, cairn_storage::StorageError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    Ok(match RequestsView::get_live(store, id, now)? {
        None => Recorded::New,
        Some(row) if row.digest != digest => Recorded::Reused(row),
        Some(row) => Recorded::Applied(row),
    })
}

/// Most events [`events_blocking`] reads of one command.
pub const COMMAND_EVENTS_MAX: u64 = 10_000;

/// The events the command of `row` (key `id`) appended that are still in
/// the log, in order (at most [`COMMAND_EVENTS_MAX`]): a replay's answer
/// is read from them. A compacted stream may have lost some (a key-value
/// set superseded by a later set of its key).
pub fn events_blocking(
    store: &Store,
    id: &str,
    row: &RequestRow,
) -> Result<Vec<cairn_events::v1::Envelope>, cairn_storage::StorageError> {
    use cairn_storage::EventLog as _;
    let span = row
        .last_seq
        .saturating_sub(row.first_seq)
        .saturating_add(1)
        .min(COMMAND_EVENTS_MAX);
    let limit = usize::try_from(span).unwrap_or(usize::MAX);
    Ok(store
        .read_all(row.first_seq, limit)?
        .into_iter()
        .filter(|e| e.seq <= row.last_seq && e.request_id == id && e.stream == row.stream)
        .collect())
}

/// What an endpoint's replay found.
#[derive(Debug)]
pub enum Replayed {
    /// The command completed: its answer, read from the views and the
    /// command's events now (an `Err` of the replay is the command's error
    /// answered again, e.g. the recorded failure of its sync).
    Answer(super::codec::Body),
    /// The command did not complete (a sync cut short by a crash, an
    /// unregister interrupted between its appends): run it again, with the
    /// same key.
    RunAgain,
}

/// An endpoint's answer for a request whose key has events: see
/// [`Replayed`].
pub type Replay = fn(
    ServiceContext,
    Incoming,
    RequestRow,
) -> futures::future::BoxFuture<'static, Result<Replayed, ServiceError>>;

/// The last event the command of `row` appended (its outcome, for
/// commands that end with one: a sync's `SyncSucceeded` or `SyncFailed`).
pub async fn last_event(
    context: &ServiceContext,
    row: &RequestRow,
) -> Result<Option<cairn_events::v1::Envelope>, ServiceError> {
    use cairn_storage::EventLog as _;
    let store = context.store.clone();
    let seq = row.last_seq;
    blocking(move || Ok(store.read_all(seq, 1)?.into_iter().find(|e| e.seq == seq))).await
}

/// Longest a request waits for an earlier one with its key to finish:
/// 10 minutes (then 503; the client retries with the same key).
pub const IN_FLIGHT_WAIT_SECS: u64 = 600;

/// The requests of each key running on this node; one at a time per key
/// (waiting with [`InFlight::lock`], or refused with [`InFlight::try_lock`]).
#[derive(Debug, Default)]
pub struct InFlight {
    running: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while a request with a key runs; the next with the key waits.
#[derive(Debug)]
pub struct InFlightGuard {
    in_flight: Arc<InFlight>,
    id: String,
    lock: Option<Arc<tokio::sync::Mutex<()>>>,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl InFlight {
    /// Waits until no other request with `id` runs here, then holds it.
    pub async fn lock(self: &Arc<Self>, id: &str) -> InFlightGuard {
        let lock = self
            .running
            .lock()
            .entry(id.to_owned())
            .or_default()
            .clone();
        let held = lock.clone().lock_owned().await;
        InFlightGuard {
            in_flight: self.clone(),
            id: id.to_owned(),
            lock: Some(lock),
            held: Some(held),
        }
    }

    /// Holds `id` if no request holds it now; `None` (at once) if one does.
    pub fn try_lock(self: &Arc<Self>, id: &str) -> Option<InFlightGuard> {
        let mut running = self.running.lock();
        let lock = running.entry(id.to_owned()).or_default().clone();
        match lock.clone().try_lock_owned() {
            Ok(held) => Some(InFlightGuard {
                in_flight: self.clone(),
                id: id.to_owned(),
                lock: Some(lock),
                held: Some(held),
            }),
            Err(_) => {
                // Not ours: leave the entry to its holder (who removes it).
                drop(lock);
                None
            }
        }
    }

    /// Keys with a request running or waiting.
    pub fn len(&self) -> usize {
        self.running.lock().len()
    }

    /// No request with a key runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        // Under the map's lock (where waiters take their reference): let
        // go of ours, then the entry goes if only the map refers to it —
        // nobody holds or waits for the key.
        let mut running = self.in_flight.running.lock();
        self.held.take();
        self.lock.take();
        if running
            .get(&self.id)
            .is_some_and(|entry| Arc::strong_count(entry) == 1)
        {
            running.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(id: &str) -> async_nats::HeaderMap {
        let mut h = async_nats::HeaderMap::new();
        h.insert(REQUEST_ID_HEADER, id);
        h
    }

    #[test]
    fn keys_are_checked_and_digest_endpoint_and_body() {
        assert_eq!(request_key("a", None, b"{}").unwrap(), None);
        let k = request_key("pkgrev.create", Some(&headers("0190-ab:c_d.e")), b"{}")
            .unwrap()
            .unwrap();
        assert_eq!(k.id, "0190-ab:c_d.e");
        assert_eq!(k.digest.len(), 32);
        // Key order and spacing do not make another request.
        let a = request_key(
            "e",
            Some(&headers("x")),
            br#"{"b":[{"d":1,"c":2}],"a":"x"}"#,
        )
        .unwrap()
        .unwrap();
        let b = request_key(
            "e",
            Some(&headers("x")),
            br#"{ "a": "x", "b": [ {"c":2, "d":1} ] }"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(a.digest, b.digest);
        let other_body = request_key("pkgrev.create", Some(&headers("x")), br#"{"a":1}"#)
            .unwrap()
            .unwrap();
        let other_endpoint = request_key("pkgrev.update", Some(&headers("x")), b"{}")
            .unwrap()
            .unwrap();
        let same = request_key("pkgrev.create", Some(&headers("x")), b"{}")
            .unwrap()
            .unwrap();
        assert_eq!(same.digest, k.digest);
        assert_ne!(other_body.digest, k.digest);
        assert_ne!(other_endpoint.digest, k.digest);
        for bad in ["a b", "é", &"x".repeat(129), "a/b"] {
            let e = request_key("a", Some(&headers(bad)), b"{}").unwrap_err();
            assert_eq!(e.code, 400, "{bad}");
            assert!(e.message.starts_with("Cairn-Request-Id: "), "{}", e.message);
        }
    }

    #[test]
    fn a_made_key_is_new_each_time_and_what_its_owner_computes() {
        let body = br#"{"namespace":"ns","name":"r"}"#;
        let made = made_key("cairn.v1.repo.update", body);
        assert!(made.id.starts_with("fwd-"), "{}", made.id);
        assert_ne!(made_key("cairn.v1.repo.update", body).id, made.id);
        // Sent on in the headers, it is the key the receiving node reads.
        let headers = with_id(None, &made.id);
        assert_eq!(
            request_key("repo.update", Some(&headers), body).unwrap(),
            Some(made.clone())
        );
        assert_eq!(made_key("repo.update", body).digest, made.digest);
        // `with_id` keeps the other headers.
        let mut sent = async_nats::HeaderMap::new();
        sent.insert("traceparent", "00-x");
        let headers = with_id(Some(&sent), &made.id);
        assert_eq!(headers.get("traceparent").unwrap().as_str(), "00-x");
        assert_eq!(headers.get(REQUEST_ID_HEADER).unwrap().as_str(), made.id);
    }

    #[tokio::test]
    async fn one_request_per_key_at_a_time() {
        let in_flight = Arc::new(InFlight::default());
        let first = in_flight.lock("k").await;
        let other = in_flight.lock("other").await;
        let waiter = {
            let in_flight = in_flight.clone();
            tokio::spawn(async move { in_flight.lock("k").await })
        };
        // Nobody gets the key while `first` holds it.
        assert!(in_flight.try_lock("k").is_none());
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), in_flight.lock("k"))
                .await
                .is_err(),
            "the key is held"
        );
        drop(first);
        let second = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("the waiter gets the key once it is free")
            .unwrap();
        assert_eq!(in_flight.len(), 2);
        drop(second);
        drop(other);
        assert!(in_flight.is_empty());
    }
}
