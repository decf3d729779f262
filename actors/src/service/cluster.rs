//! The service in a cluster: commands reach their stream's owner, reads wait
//! for the seq a client saw.
//!
//! - **Routing** ([`route`]): a command (every endpoint that writes) names
//!   its stream — `repo/<namespace>/<name>`, for a revision the repository
//!   the node's views give it. The node that received it runs it when it
//!   owns the stream, or is its preferred owner and can take its lease now
//!   (a new repository, or the owner was lost); otherwise it **forwards**
//!   the request, headers and body untouched, to the owner's own subject
//!   `cairn.node.<node>.cairn.v1.<endpoint>` (every node serves every
//!   endpoint there too, so a client can also ask one node in particular)
//!   with `Cairn-Forwarded: <this node>`, and relays the owner's reply as
//!   is. A forwarded request is never forwarded again: the owner runs it
//!   or answers 503 naming the owner it knows. While a stream changes hands (no
//!   responder, "taken over", "does not own"), the forwarder routes again,
//!   for at most [`REROUTE_WINDOW`].
//! - **One key per command**: every attempt of a forwarded command carries
//!   an idempotency key (`Cairn-Request-Id`), so one the previous owner
//!   applied before it died is not applied again. The caller makes it,
//!   once per command, before it routes ([`super::idempotency::made_id`]),
//!   because [`Forwarded::RunHere`] and a routing again after "does not
//!   own" leave this module: the run here and the next [`forward`] must
//!   carry the key the earlier attempts carried. The service's writes
//!   (`super::serve`), the key-value cache and the artifact cache's
//!   records all do; [`forward_on`] makes one itself only for a request
//!   that arrives without (kept as a fallback: good for that call's
//!   attempts alone, e.g. a kv part, whose writer checks no key).
//! - **Read your writes anywhere**: every reply carries `Cairn-Seq`, the
//!   last seq the answering node applied; a request with `Cairn-Min-Seq`
//!   waits (at most `cluster.read-wait`) until this node applied it, or
//!   answers 503 naming how far behind the node is. A single node
//!   honours the header the same way.

use std::time::Duration;

use async_nats::{client::RequestErrorKind, HeaderMap};
use cairn_events::StreamId;
use cairn_storage::EventLog as _;

use super::ServiceContext;
use crate::{
    cluster::{AcquireError, Ownership},
    ServiceError,
};

/// Header of every reply: the last seq the answering node applied.
pub const SEQ_HEADER: &str = "Cairn-Seq";
/// Header of a request: answer only once this seq is applied here.
pub const MIN_SEQ_HEADER: &str = "Cairn-Min-Seq";
/// Header of a command another node forwarded (its value: that node).
pub const FORWARDED_HEADER: &str = "Cairn-Forwarded";
/// Prefix of the subjects only one node serves.
pub const NODE_SUBJECT_PREFIX: &str = "cairn.node.";
/// How long a forwarder keeps routing a command again while its stream
/// changes hands.
pub const REROUTE_WINDOW: Duration = Duration::from_secs(15);
/// Longest a command waits for its node to take the stream's lease (and
/// catch up) before it is answered 503.
pub const ACQUIRE_WAIT: Duration = Duration::from_secs(5);
/// Pause between two routings of one command.
pub const REROUTE_PAUSE: Duration = Duration::from_millis(200);

/// What the service needs of the cluster.
#[derive(Debug, Clone)]
pub struct ClusterRouting {
    /// Leases and membership.
    pub ownership: Ownership,
    /// Longest wait for a forwarded command's answer (a registration
    /// waits for its first sync).
    pub forward_timeout: Duration,
}

/// The subject node `node` serves endpoint `subject` (`cairn.v1.…`) on.
pub fn node_subject(node: &str, subject: &str) -> String {
    format!("{NODE_SUBJECT_PREFIX}{node}.{subject}")
}

/// The stream a command of `endpoint` (`cairn.v1.…`) writes, from its JSON
/// body; `None` when the body does not say (the handler answers 400).
pub async fn target_stream(
    context: &ServiceContext,
    endpoint: &str,
    body: &[u8],
) -> Option<StreamId> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let text = |field: &str| value.get(field).and_then(|v| v.as_str()).map(str::to_owned);
    let namespace = text("namespace")?;
    let verb = endpoint.strip_prefix("cairn.v1.")?;
    if verb.starts_with("repo.") {
        return StreamId::repository(&namespace, &text("name")?).ok();
    }
    if verb == "pkgrev.create" {
        return StreamId::repository(&namespace, &text("repository")?).ok();
    }
    let name = text("name")?;
    let store = context.store.clone();
    let ns = namespace.clone();
    let row = tokio::task::spawn_blocking(move || {
        cairn_storage::views::PackageRevisionsView::get(&store, &ns, &name)
    })
    .await
    .ok()?
    .ok()??;
    StreamId::repository(&namespace, &row.repository).ok()
}

/// Where a command of `stream` runs.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Here: this node holds the stream's lease.
    Local,
    /// At node `.0`.
    Forward(String),
}

/// Decides where a command of `stream` runs (see the module docs);
/// `forwarded`: the request came on this node's own subject.
pub async fn route(
    routing: &ClusterRouting,
    stream: &StreamId,
    forwarded: bool,
) -> Result<Route, ServiceError> {
    let view = routing.ownership.view();
    if view.holds(stream) {
        return Ok(Route::Local);
    }
    let me = view.node().to_owned();
    let target = view.route(stream);
    if forwarded || target.as_deref() == Some(me.as_str()) {
        let acquired =
            tokio::time::timeout(ACQUIRE_WAIT, routing.ownership.acquire(stream.clone()))
                .await
                .unwrap_or_else(|_| {
                    Err(AcquireError::Unavailable(format!(
                        "taking its lease did not finish within {ACQUIRE_WAIT:?}"
                    )))
                });
        return match acquired {
            Ok(()) => Ok(Route::Local),
            Err(AcquireError::Elsewhere(why)) => Err(ServiceError::unavailable(format!(
                "node {me} does not own stream {stream}: {why}; retry"
            ))),
            Err(AcquireError::Unavailable(why)) => Err(ServiceError::unavailable(format!(
                "stream {stream} cannot be written now: {why}; retry"
            ))),
        };
    }
    match target {
        Some(node) => Ok(Route::Forward(node)),
        None => Err(ServiceError::unavailable(format!(
            "no live cairn node is known to own stream {stream} (node {me} sees {:?}, leaving: {}); retry",
            view.live(),
            view.is_leaving()
        ))),
    }
}

/// What became of a forwarded command.
#[derive(Debug)]
pub enum Forwarded {
    /// The owner's reply, to relay as is.
    Reply(HeaderMap, bytes::Bytes),
    /// The stream came to this node meanwhile: run it here.
    RunHere,
}

/// Forwards a request of endpoint `subject` (`payload` with `headers`,
/// as received, or a part a command sends on, see [`crate::service::kv`])
/// to `node` and relays its reply; routes again while the stream changes
/// hands. Answers the reply to send, or the error to answer.
pub async fn forward(
    context: &ServiceContext,
    routing: &ClusterRouting,
    payload: bytes::Bytes,
    headers: Option<&HeaderMap>,
    subject: &str,
    stream: &StreamId,
    node: String,
) -> Result<Forwarded, ServiceError> {
    forward_on(
        &context.client,
        routing,
        payload,
        headers,
        subject,
        stream,
        node,
    )
    .await
}

/// [`forward`] on `client`: for a component that is not a service
/// endpoint (the artifact cache sends its writes to their stream's owner
/// from the HTTP face too).
pub async fn forward_on(
    client: &async_nats::Client,
    routing: &ClusterRouting,
    payload: bytes::Bytes,
    headers: Option<&HeaderMap>,
    subject: &str,
    stream: &StreamId,
    mut node: String,
) -> Result<Forwarded, ServiceError> {
    let deadline = tokio::time::Instant::now() + REROUTE_WINDOW;
    let overall = tokio::time::Instant::now() + routing.forward_timeout;
    // Every forwarded command carries an idempotency key: sent again to a
    // new owner after the first one died with it, it runs at most once.
    // The caller's (see the module docs); made here only as a fallback,
    // good for this call's attempts alone.
    let mut headers = match headers {
        Some(h) if h.get(super::idempotency::REQUEST_ID_HEADER).is_some() => h.clone(),
        other => super::idempotency::with_id(other, &super::idempotency::made_id()),
    };
    headers.insert(FORWARDED_HEADER, routing.ownership.view().node());
    // The owner's spans continue this node's command span.
    crate::trace::inject_nats(&mut headers);
    loop {
        let outgoing = async_nats::Request::new()
            .payload(payload.clone())
            .headers(headers.clone())
            .timeout(Some(FORWARD_ATTEMPT_WAIT.min(routing.forward_timeout)));
        let target = node_subject(&node, subject);
        tracing::debug!(stream = %stream, node = %node, "forwarding the command to its owner");
        let answer = tokio::select! {
            answer = client.send_request(target, outgoing) => answer,
            () = owner_gone(routing, stream, &node) => {
                // The owner lost the stream while the command was with it:
                // its answer, if any, is lost. Sent again (same key).
                if tokio::time::Instant::now() >= deadline {
                    return Err(ServiceError::unavailable(format!(
                        "node {node}, the owner of stream {stream}, went away while running the command: it may have been recorded; retry with the same {}",
                        super::idempotency::REQUEST_ID_HEADER
                    )));
                }
                match route(routing, stream, false).await {
                    Ok(Route::Forward(next)) => node = next,
                    Ok(Route::Local) => return Ok(Forwarded::RunHere),
                    Err(_) => tokio::time::sleep(REROUTE_PAUSE).await,
                }
                continue;
            }
        };
        let retry_why = match answer {
            Ok(reply) => {
                let headers = reply.headers.clone().unwrap_or_default();
                let moving = headers
                    .get("Nats-Service-Error-Code")
                    .is_some_and(|c| c.as_str() == "503")
                    && headers
                        .get("Nats-Service-Error")
                        .is_some_and(|m| moving_message(m.as_str()));
                if !moving || tokio::time::Instant::now() >= deadline {
                    return Ok(Forwarded::Reply(headers, reply.payload));
                }
                "the stream is changing hands".to_owned()
            }
            Err(e) if e.kind() == RequestErrorKind::NoResponders => {
                format!("node {node} does not answer")
            }
            // No answer in an attempt's time: the request or its reply may
            // have been lost with a connection. Sent again (same key: a
            // command still running there is waited for, one that ran is
            // answered as it was), for up to `cluster.forward-timeout`.
            Err(e)
                if e.kind() == RequestErrorKind::TimedOut
                    && tokio::time::Instant::now() < overall =>
            {
                tracing::debug!(stream = %stream, node = %node, "no answer in time; sending the command again");
                match route(routing, stream, false).await {
                    Ok(Route::Forward(next)) => node = next,
                    Ok(Route::Local) => return Ok(Forwarded::RunHere),
                    Err(_) => {}
                }
                continue;
            }
            Err(e) => {
                return Err(ServiceError::unavailable(format!(
                    "forwarding to node {node}, the owner of stream {stream}: {e}"
                )))
            }
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(ServiceError::unavailable(format!(
                "stream {stream} has no reachable owner ({retry_why}); retry"
            )));
        }
        tokio::time::sleep(REROUTE_PAUSE).await;
        match route(routing, stream, false).await {
            Ok(Route::Forward(next)) => node = next,
            Ok(Route::Local) => return Ok(Forwarded::RunHere),
            Err(_) => {}
        }
    }
}

/// Whether `error` says the command's stream is changing hands (and
/// nothing of the command ran): routing it again finds the new owner.
pub fn is_moving(error: &ServiceError) -> bool {
    error.code == 503 && moving_message(&error.message)
}

/// "does not own": nothing of the command ran. A command refused by the
/// log after its owner was deposed ("taken over") may have done its Git
/// part: it is answered, not run again elsewhere.
fn moving_message(message: &str) -> bool {
    message.contains("does not own")
}

/// Resolves once `node` is no longer `stream`'s owner nor a live node (it
/// died, or gave the stream up and another took it).
async fn owner_gone(routing: &ClusterRouting, stream: &StreamId, node: &str) {
    loop {
        tokio::time::sleep(OWNER_CHECK_EVERY).await;
        let view = routing.ownership.view();
        let owner = view.owner_of(stream);
        let live = view.live().iter().any(|n| n == node);
        if owner.as_deref() != Some(node) && (owner.is_some() || !live) {
            return;
        }
    }
}

/// Longest one forwarding attempt waits for its answer before the command
/// is sent again (with the same idempotency key).
const FORWARD_ATTEMPT_WAIT: Duration = Duration::from_secs(10);

/// How often a forwarder checks that the owner it waits for still is one.
const OWNER_CHECK_EVERY: Duration = Duration::from_millis(500);

/// Waits until this node applied the seq the request's `Cairn-Min-Seq`
/// names, at most `wait`.
pub async fn wait_min_seq(
    context: &ServiceContext,
    headers: Option<&HeaderMap>,
    wait: Duration,
) -> Result<(), ServiceError> {
    let Some(value) = headers.and_then(|h| h.get(MIN_SEQ_HEADER)) else {
        return Ok(());
    };
    let min: u64 = value.as_str().trim().parse().map_err(|_| {
        ServiceError::bad_request(format!(
            "header {MIN_SEQ_HEADER}: {:?} is not a sequence number",
            value.as_str()
        ))
    })?;
    let mut committed = context.store.subscribe();
    if tokio::time::timeout(wait, committed.wait_for(|seq| *seq >= min))
        .await
        .is_err()
    {
        let applied = context.store.last_seq().unwrap_or(0);
        return Err(ServiceError::unavailable(format!(
            "this node has applied seq {applied}, {} behind the {MIN_SEQ_HEADER} {min} asked for, after waiting {wait:?}; retry, or ask another node",
            min.saturating_sub(applied)
        )));
    }
    Ok(())
}

/// The reply header naming what this node applied.
pub fn seq_header(context: &ServiceContext) -> (&'static str, String) {
    (
        SEQ_HEADER,
        context.store.last_seq().unwrap_or(0).to_string(),
    )
}

/// Waits (at most `wait`) until this node applied `seq`; answers whether
/// it did.
pub async fn wait_applied(context: &ServiceContext, seq: u64, wait: Duration) -> bool {
    let mut committed = context.store.subscribe();
    tokio::time::timeout(wait, committed.wait_for(|at| *at >= seq))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// The `Cairn-Seq` a reply carries (0 when none).
pub fn reply_seq(headers: &HeaderMap) -> u64 {
    headers
        .get(SEQ_HEADER)
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(0)
}

/// Relays a forwarded reply.
pub async fn relay(request: &async_nats::service::Request, headers: HeaderMap, body: bytes::Bytes) {
    if let Err(e) = request.respond_with_headers(Ok(body), headers).await {
        tracing::debug!(error = %e, "relaying a forwarded reply");
    }
}

/// `cairn.v1.cluster.status`: the nodes (from their heartbeats: applied seq,
/// lag behind the most advanced, what they own) and every lease with its
/// time left, as the answering node knows them. A single node answers 404.
pub async fn handle_status(
    context: ServiceContext,
    request: super::Incoming,
) -> Result<super::codec::Body, ServiceError> {
    use cairn_events::v1 as pb;
    use prost::Message as _;
    let format = request.format;
    super::fields::Fields::parse(&request.body, &[])?;
    let Some(routing) = context.config.cluster.as_ref() else {
        return Err(ServiceError::not_found(
            "this node is not in a cluster (cluster.enabled is off)",
        ));
    };
    let view = routing.ownership.view();
    let leases = view.lease_table();
    let members = view.members();
    let top = members.values().map(|m| m.applied_seq).max().unwrap_or(0);
    let status = pb::ClusterStatus {
        node: view.node().to_owned(),
        nodes: members
            .values()
            .map(|m| pb::ClusterNodeStatus {
                node: m.node.clone(),
                applied_seq: m.applied_seq,
                lag: top.saturating_sub(m.applied_seq),
                applied_position: m.applied_position,
                owns: m.owns as u64,
                streams: leases
                    .iter()
                    .filter(|(_, (owner, _))| *owner == m.node)
                    .map(|(stream, _)| stream.clone())
                    .collect(),
            })
            .collect(),
        leases: leases
            .iter()
            .map(|(stream, (owner, left))| pb::ClusterLease {
                stream: stream.clone(),
                owner: owner.clone(),
                expires_in_ms: left.as_millis() as u64,
            })
            .collect(),
    };
    Ok(super::codec::Body::of(
        format,
        || {
            serde_json::json!({
                "node": status.node,
                "nodes": status.nodes.iter().map(|n| serde_json::json!({
                    "node": n.node,
                    "applied_seq": n.applied_seq,
                    "lag": n.lag,
                    "applied_position": n.applied_position,
                    "owns": n.owns,
                    "streams": n.streams,
                })).collect::<Vec<_>>(),
                "leases": status.leases.iter().map(|l| serde_json::json!({
                    "stream": l.stream,
                    "owner": l.owner,
                    "expires_in_ms": l.expires_in_ms,
                })).collect::<Vec<_>>(),
            })
        },
        || status.encode_to_vec(),
    ))
}

/// The reply header naming the answering node, in a cluster.
pub fn node_header(context: &ServiceContext) -> Option<(&'static str, String)> {
    let routing = context.config.cluster.as_ref()?;
    Some((NODE_HEADER, routing.ownership.view().node().to_owned()))
}

/// Header of every reply in a cluster: the node that answered.
pub const NODE_HEADER: &str = "Cairn-Node";
