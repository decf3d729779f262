//! Single flight, and the NATS calls of computes and origins.
//!
//! # Single flight
//! Concurrent misses of one entry on this node share one call: the first
//! caller of [`Flights::run`] for `(kind, namespace, key)` runs the work
//! (the compute or the origin read, then the set), the others wait for its
//! outcome — the value, or the error, which every waiter gets and nothing
//! caches. A compute and a read-through of one entry are two flights
//! (kinds `compute` and `origin`). A caller that arrives once the flight
//! finished finds the entry cached (or starts a new flight after an
//! error). The flights live in the
//! node: in a cluster, cluster-wide single flight follows the owner of the
//! namespace's partition (requests for a namespace are single-flighted by
//! the node that serves them; routing them to the partition's owner makes
//! it cluster-wide — the cluster issue's routing).
//!
//! # Calls
//! A compute (`kv.get_or_compute`'s `compute: {subject, body}`) sends
//! `body` as JSON to `subject`; an origin (`kv.configure`'s `origin`) gets
//! `{"op": "get", "namespace", "key"}` on a miss and, with
//! `write_through`, `{"op": "set", "namespace", "key", "value" |
//! "value_b64", "tags", "ttl_ms"}` before a set. A reply with the micro
//! protocol's `Nats-Service-Error-Code` header is an error (an origin's
//! 404 on a get is a miss); otherwise its body is the value (JSON when it
//! parses as JSON, else bytes). No responder is a 503, no reply within
//! `kv.origin-timeout` a 504; an error reply keeps its code and message.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use parking_lot::Mutex;
use tokio::sync::OnceCell;

use crate::ServiceError;

/// One flight: its outcome once known, and how many callers wait on it.
#[derive(Debug)]
struct Flight<T> {
    outcome: OnceCell<Result<T, ServiceError>>,
    callers: AtomicUsize,
}

/// A flight's `(kind, namespace, key)`: what fills the entry (`origin`,
/// `compute`) and the entry.
type FlightId = (&'static str, String, String);

/// The node's flights, by kind and `(namespace, key)`: a read-through and a
/// compute of one entry are two flights (an origin's 404 is no answer to a
/// `get_or_compute`).
#[derive(Debug)]
pub struct Flights<T> {
    running: Mutex<HashMap<FlightId, Arc<Flight<T>>>>,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Self {
            running: Mutex::default(),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Flights<T> {
    /// Runs `work` once for all concurrent callers of `kind` for
    /// `(namespace, key)`.
    pub async fn run<F, Fut>(
        &self,
        kind: &'static str,
        namespace: &str,
        key: &str,
        work: F,
    ) -> Result<T, ServiceError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, ServiceError>>,
    {
        let id = (kind, namespace.to_owned(), key.to_owned());
        let flight = self
            .running
            .lock()
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(Flight {
                    outcome: OnceCell::new(),
                    callers: AtomicUsize::new(0),
                })
            })
            .clone();
        flight.callers.fetch_add(1, Ordering::SeqCst);
        let outcome = flight.outcome.get_or_init(work).await.clone();
        flight.callers.fetch_sub(1, Ordering::SeqCst);
        let mut running = self.running.lock();
        if running.get(&id).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            running.remove(&id);
        }
        outcome
    }

    /// Callers in the `kind` flight of `(namespace, key)` now (0: none
    /// running).
    pub fn callers(&self, kind: &'static str, namespace: &str, key: &str) -> usize {
        self.running
            .lock()
            .get(&(kind, namespace.to_owned(), key.to_owned()))
            .map_or(0, |f| f.callers.load(Ordering::SeqCst))
    }
}

/// What a call answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A value: JSON text (`true`) or bytes.
    Value(Vec<u8>, bool),
    /// The responder said 404.
    NotFound,
}

/// Sends `body` to `subject` and reads the answer (see the module docs);
/// `what` names the callee in errors (`compute`, `origin`).
pub async fn call(
    client: &async_nats::Client,
    what: &str,
    subject: &str,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Answer, ServiceError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    // A `kv.call` span (compute or origin); the callee gets its context.
    let span = tracing::info_span!("kv.call", callee = what);
    span.in_scope(|| crate::trace::inject_nats(&mut headers));
    let request = async_nats::Request::new()
        .payload(body.into())
        .headers(headers)
        .timeout(Some(timeout));
    let sent =
        tracing::Instrument::instrument(client.send_request(subject.to_owned(), request), span);
    let reply = match sent.await {
        Ok(reply) => reply,
        Err(e) => {
            use async_nats::client::RequestErrorKind;
            return Err(match e.kind() {
                RequestErrorKind::NoResponders => {
                    ServiceError::unavailable(format!("{what} {subject}: no responders"))
                }
                RequestErrorKind::TimedOut => ServiceError {
                    code: 504,
                    message: format!("{what} {subject}: no reply within {timeout:?}"),
                },
                RequestErrorKind::InvalidSubject | RequestErrorKind::MaxPayloadExceeded => {
                    ServiceError::bad_request(format!("{what} {subject}: {e}"))
                }
                RequestErrorKind::Other => {
                    ServiceError::unavailable(format!("{what} {subject}: {e}"))
                }
            });
        }
    };
    let code = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
        .and_then(|v| v.as_str().parse::<u16>().ok());
    if let Some(code) = code {
        if code == 404 {
            return Ok(Answer::NotFound);
        }
        let message = reply
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error"))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_else(|| String::from_utf8_lossy(&reply.payload).into_owned());
        return Err(ServiceError {
            code,
            message: format!("{what} {subject}: {message}"),
        });
    }
    let json = serde_json::from_slice::<serde_json::Value>(&reply.payload).is_ok();
    Ok(Answer::Value(reply.payload.to_vec(), json))
}
