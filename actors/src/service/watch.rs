//! `cairn.v1.watch.start` and `cairn.v1.watch.stop` (see
//! [`crate::watch`] for how a watch works).
//!
//! `watch.start` `{"filter":{…pkgrev.list fields…},"kinds":[…],
//! "since_seq"?,"deliver_subject","heartbeat_ms"?}` → `{"watch_id","seq"}`:
//! `seq` is the listing's bookmark (without `since_seq`) or `since_seq`.
//! `watch.stop` `{"watch_id"}` → `{"stopped": id}`, 404 for an unknown id.

use std::{sync::Arc, time::Duration};

use actix::Actor;
use cairn_events::v1 as pb;
use cairn_storage::EventLog;
use prost::Message as _;
use serde_json::json;
use tokio::sync::oneshot;

use super::{
    codec::Body,
    context::{Incoming, ServiceContext},
    fields::Fields,
    pkgrev::LIST_FIELDS,
};
use crate::{
    revision_filter::Filter,
    watch::{
        Kinds, StartMode, WatchError, WatchFilter, Watcher, WatcherOptions, DEFAULT_HEARTBEAT_MS,
        MAX_HEARTBEAT_MS, MIN_HEARTBEAT_MS,
    },
    ServiceError,
};

/// Fields of a `watch.start` request.
pub const START_FIELDS: &[&str] = &[
    "filter",
    "kinds",
    "since_seq",
    "deliver_subject",
    "heartbeat_ms",
];

/// Longest deliver subject, in bytes.
pub const DELIVER_SUBJECT_MAX_BYTES: usize = 256;

/// Subject prefixes a watch may not deliver to: the service's own
/// endpoints, the event stream and the server's system subjects.
const RESERVED_PREFIXES: [&str; 3] = ["cairn.v1.", "cairn.events.", "$"];

/// A validated `watch.start` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    /// Kinds and filter.
    pub filter: WatchFilter,
    /// Resume after this sequence (else list first).
    pub since_seq: Option<u64>,
    /// Where events go.
    pub deliver_subject: String,
    /// Idle time before a heartbeat.
    pub heartbeat: Duration,
}

/// Parses and validates a `watch.start` body; errors name the field.
pub fn parse_start(payload: &[u8]) -> Result<StartRequest, ServiceError> {
    let f = Fields::parse(payload, START_FIELDS)?;
    let filter_fields: Vec<&str> = LIST_FIELDS
        .iter()
        .copied()
        .filter(|f| !["limit", "continue"].contains(f))
        .collect();
    let filter = match f.object("filter", &filter_fields)? {
        Some(sub) => Filter::parse(&sub)?,
        None => Filter::default(),
    };
    let kinds = Kinds::parse("kinds", f.strings("kinds")?.as_deref())?;
    let deliver_subject = f.required("deliver_subject")?;
    deliver_subject_ok("deliver_subject", &deliver_subject)?;
    let heartbeat_ms = f
        .u64_in("heartbeat_ms", MIN_HEARTBEAT_MS, MAX_HEARTBEAT_MS)?
        .unwrap_or(DEFAULT_HEARTBEAT_MS);
    Ok(StartRequest {
        filter: WatchFilter { filter, kinds },
        since_seq: f.u64("since_seq")?,
        deliver_subject,
        heartbeat: Duration::from_millis(heartbeat_ms),
    })
}

/// Checks a deliver subject: a plain NATS subject (dot-separated non-empty
/// tokens, no wildcards, no whitespace or control characters), at most
/// [`DELIVER_SUBJECT_MAX_BYTES`], outside the reserved prefixes.
pub fn deliver_subject_ok(field: &str, subject: &str) -> Result<(), ServiceError> {
    let bad = |why: &str| Err(ServiceError::bad_field(field, format!("{subject:?} {why}")));
    if subject.is_empty() {
        return bad("must not be empty");
    }
    if subject.len() > DELIVER_SUBJECT_MAX_BYTES {
        return bad(&format!("is longer than {DELIVER_SUBJECT_MAX_BYTES} bytes"));
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("must not contain whitespace or control characters");
    }
    if subject.contains(['*', '>']) {
        return bad("must not contain wildcards ('*', '>')");
    }
    if subject.split('.').any(str::is_empty) {
        return bad("has an empty token");
    }
    if let Some(prefix) = RESERVED_PREFIXES.iter().find(|p| subject.starts_with(*p)) {
        return bad(&format!("is reserved (starts with {prefix:?})"));
    }
    Ok(())
}

/// `cairn.v1.watch.start`.
pub async fn handle_start(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    let format = request.format;
    let start = parse_start(&request.body)?;
    if let Some(since) = start.since_seq {
        let last = context.store.last_seq()?;
        if since > last {
            return Err(ServiceError::bad_field(
                "since_seq",
                format!("{since} is beyond the end of the log (last seq {last})"),
            ));
        }
    }
    let hub = context.watch.clone();
    let arbiter = context
        .arbiter
        .clone()
        .ok_or_else(|| ServiceError::unavailable("watches need the node's actix system"))?;
    let filter = Arc::new(start.filter);
    let registration = hub.register(filter.clone())?;
    let id = registration.id.clone();
    let (started, seq) = oneshot::channel();
    let options = WatcherOptions {
        filter,
        deliver_subject: start.deliver_subject,
        heartbeat: start.heartbeat,
        mode: match start.since_seq {
            Some(since_seq) => StartMode::Resume { since_seq },
            None => StartMode::Listing,
        },
        started,
        span: tracing::Span::current(),
    };
    let watcher = {
        let (hub, store, client) = (hub.clone(), context.store.clone(), context.client.clone());
        Watcher::start_in_arbiter(&arbiter, move |_| {
            Watcher::new(registration, options, hub, store, client)
        })
    };
    if !hub.attach(&id, watcher.clone().recipient()) {
        // Stopped (shutdown) between registering and starting.
        watcher.do_send(crate::watch::StopWatch {
            span: tracing::Span::current(),
        });
        return Err(WatchError::ShuttingDown.into());
    }
    let seq = seq.await.map_err(|_| WatchError::StoppedWhileStarting)??;
    Ok(Body::of(
        format,
        || json!({"watch_id": id, "seq": seq}),
        || {
            pb::WatchStarted {
                watch_id: id.clone(),
                seq,
            }
            .encode_to_vec()
        },
    ))
}

/// `cairn.v1.watch.stop`.
pub async fn handle_stop(context: ServiceContext, request: Incoming) -> Result<Body, ServiceError> {
    let format = request.format;
    let f = Fields::parse(&request.body, &["watch_id"])?;
    let id = f.required("watch_id")?;
    if id.is_empty() || id.len() > 64 || id.chars().any(char::is_control) {
        return Err(ServiceError::bad_field(
            "watch_id",
            format!("{id:?} is not a watch id"),
        ));
    }
    if !context.watch.stop(&id) {
        return Err(ServiceError::not_found(format!("watch {id} not found")));
    }
    Ok(Body::of(
        format,
        || json!({ "stopped": id }),
        || {
            pb::WatchStopped {
                stopped: id.clone(),
            }
            .encode_to_vec()
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> String {
        parse_start(body.as_bytes()).unwrap_err().message
    }

    #[test]
    fn start_requests_are_validated_field_by_field() {
        let ok = parse_start(
            br#"{"filter":{"repository":"r","lifecycle":["Published"]},"kinds":["repository","packagerevision"],"since_seq":4,"deliver_subject":"_INBOX.abc.1","heartbeat_ms":100}"#,
        )
        .unwrap();
        assert_eq!(ok.since_seq, Some(4));
        assert_eq!(ok.heartbeat, Duration::from_millis(100));
        assert!(ok.filter.kinds.repositories && ok.filter.kinds.package_revisions);
        let defaults = parse_start(br#"{"deliver_subject":"w.1"}"#).unwrap();
        assert_eq!(
            defaults.heartbeat,
            Duration::from_millis(DEFAULT_HEARTBEAT_MS)
        );
        assert_eq!(defaults.filter.kinds, Kinds::default());
        assert_eq!(defaults.since_seq, None);

        assert_eq!(err("{}"), "deliver_subject: required");
        assert_eq!(
            err(r#"{"deliver_subject":"a.*"}"#),
            "deliver_subject: \"a.*\" must not contain wildcards ('*', '>')"
        );
        assert_eq!(
            err(r#"{"deliver_subject":"a b"}"#),
            "deliver_subject: \"a b\" must not contain whitespace or control characters"
        );
        assert_eq!(
            err(r#"{"deliver_subject":"a..b"}"#),
            "deliver_subject: \"a..b\" has an empty token"
        );
        assert_eq!(
            err(r#"{"deliver_subject":"cairn.v1.repo.register"}"#),
            "deliver_subject: \"cairn.v1.repo.register\" is reserved (starts with \"cairn.v1.\")"
        );
        assert_eq!(
            err(r#"{"deliver_subject":"w","heartbeat_ms":99}"#),
            "heartbeat_ms: must be an integer between 100 and 60000, got 99"
        );
        assert_eq!(
            err(r#"{"deliver_subject":"w","kinds":["pods"]}"#),
            "kinds: unknown kind \"pods\", expected one of: packagerevision, repository"
        );
        assert_eq!(
            err(r#"{"deliver_subject":"w","since_seq":-1}"#),
            "since_seq: must be a non-negative integer, got -1"
        );
        assert_eq!(
            err(r#"{"deliver_subject":"w","filter":{"limit":5}}"#),
            "filter.limit: unknown field, expected one of: namespace, repository, path, package, workspace, revision, lifecycle, labels, annotations, latest"
        );
        assert_eq!(
            err(r#"{"deliver_subject":"w","filter":{"lifecycle":["Done"]}}"#),
            "filter.lifecycle: unknown lifecycle \"Done\", expected one of: Draft, Proposed, Published, DeletionProposed"
        );
        assert_eq!(
            err(r#"{"deliver_subject":"w","filter":{"package":7}}"#),
            "filter.package: must be a string, got 7"
        );
        assert_eq!(
            err(r#"{"deliver_subject":"w","filter":"all"}"#),
            "filter: must be an object, got \"all\""
        );
    }
}
