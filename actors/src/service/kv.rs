//! `cairn.v1.kv.*`: the key-value cache's endpoints (see [`crate::kv`] for
//! the design, README "Key-value cache" for the contract).
//!
//! Every request is validated before anything is sent to a writer: a bad
//! field is a 400 naming it, and nothing is stored. Writes go to the
//! writer of the namespace's partition; reads are answered from the memory
//! tier, else the `kv_entries` view.
//!
//! On a cluster, writes run at their partition's owner (`on_owner`: the
//! repository commands' routing, then this node waits until it applied
//! what the owner answered), and commands over every partition are split
//! into parts, one per partition, each run at its owner, the counts summed
//! (`by_partition`; each part atomic, the whole not — a failure names
//! the failed partitions and what the others removed). A `get_or_compute`
//! or read-through miss is sent to the owner too: one flight for the whole
//! cluster. Reads stay local.
//!
//! `kv.set`, `kv.delete` and `kv.configure` take `Cairn-Request-Id` (see
//! [`super::idempotency`]); a command forwarded whole always carries one
//! (the client's, or one the forwarder makes and keeps for every attempt
//! and for a run here after one, `on_owner`), so an attempt sent again
//! after its answer was lost is applied once.

use std::{sync::Arc, time::Duration};

use base64::Engine as _;
use cairn_events::v1::{
    KvCleanupReply, KvCountReply, KvDeleteReply, KvEntryRef, KvEntryRow, KvExistsReply,
    KvKeyForReply, KvKeysReply, KvNamespaceSettings, KvSetReply, KvStatsReply,
};
use cairn_storage::views::KvView;
use prost::Message as _;
use serde_json::{json, Value};

use super::{
    codec::{Body, Format},
    context::{metadata, Incoming, ServiceContext},
    fields::Fields,
    idempotency::{self, RequestKey, REQUEST_ID_HEADER},
};
use crate::{
    kv::{
        flight, full_key, glob::Glob, key_for::key_for, memory::EntryInfo, partition_of, Found,
        KvCommand, KvError, KvReply, Matcher, SetEntry, KV_PARTITIONS,
    },
    ServiceError,
};

/// Longest key, in bytes.
pub const KEY_MAX_BYTES: usize = 1024;
/// Longest namespace, in bytes.
pub const NAMESPACE_MAX_BYTES: usize = 256;
/// Most tags of one entry.
pub const TAGS_MAX: usize = 64;
/// Longest tag, in bytes.
pub const TAG_MAX_BYTES: usize = 256;
/// Longest pattern, in bytes.
pub const PATTERN_MAX_BYTES: usize = 1024;
/// What an entry's event (`KvEntrySet`) may need besides its value: the
/// longest key and namespace, the most and longest tags, the times and the
/// encoding's own bytes. A value fits one event when it is at most the
/// store's `store.event-max-bytes` less this ([`value_limit`]).
pub const ENTRY_ROOM_BYTES: usize =
    KEY_MAX_BYTES + NAMESPACE_MAX_BYTES + TAGS_MAX * (TAG_MAX_BYTES + 3) + 256;
/// Longest TTL: a year.
pub const TTL_MAX: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Default and largest page of `kv.keys`.
pub const KEYS_DEFAULT_LIMIT: u64 = 100;
/// Largest page of `kv.keys`.
pub const KEYS_MAX_LIMIT: u64 = 1000;
/// Entries one round of a bulk invalidation (pattern, namespace, clear) or
/// cleanup selects; a larger selection takes more rounds, at most
/// [`BULK_ROUNDS_MAX`].
pub const BULK_ROUND_ENTRIES: usize = 10_000;
/// Most rounds of one bulk invalidation or cleanup.
pub const BULK_ROUNDS_MAX: usize = 1_000;

/// Limits of the key-value service.
#[derive(Debug, Clone)]
pub struct KvServiceConfig {
    /// Largest value, in bytes (`kv.value-max-bytes`). Default: 1 MiB.
    pub value_max_bytes: usize,
    /// Bytes the memory tier holds at most (`kv.memory-max-bytes`).
    /// Default: 64 MiB.
    pub memory_max_bytes: u64,
    /// How often the sweeper removes expired entries
    /// (`kv.sweep-interval`); zero: never. Default: 60 s.
    pub sweep_interval: Duration,
    /// How long a compute or an origin may take to answer
    /// (`kv.origin-timeout`). Default: 5 s.
    pub origin_timeout: Duration,
    /// `kv.durability`: [`cairn_storage::Durability::Sync`] (`sync`, the
    /// default) or `Buffered` (`batched`).
    pub durability: cairn_storage::Durability,
    /// With `batched`, how often the WAL is fsynced (`kv.flush-interval`).
    /// Default: 1 s.
    pub flush_interval: Duration,
    /// How often the `kv/` class is compacted (`kv.compact-interval`);
    /// zero: never. Default: 10 min.
    pub compact_interval: Duration,
    /// How long a `KvEntryDeleted` stays in the log after it was recorded
    /// (`kv.tombstone-retention`). Default: 24 h.
    pub tombstone_retention: Duration,
    /// Most sets a partition's writer appends in one batch
    /// (`kv.set-batch-max`). Default: 512.
    pub set_batch_max: usize,
}

impl Default for KvServiceConfig {
    fn default() -> Self {
        Self {
            value_max_bytes: 1 << 20,
            memory_max_bytes: 64 << 20,
            sweep_interval: Duration::from_secs(60),
            origin_timeout: Duration::from_secs(5),
            durability: cairn_storage::Durability::Sync,
            flush_interval: Duration::from_secs(1),
            compact_interval: Duration::from_secs(600),
            tombstone_retention: Duration::from_secs(24 * 60 * 60),
            set_batch_max: 512,
        }
    }
}

fn bad(field: &'static str, reason: impl Into<String>) -> ServiceError {
    KvError::Invalid {
        field,
        reason: reason.into(),
    }
    .into()
}

fn check_name(field: &'static str, value: &str, max: usize) -> Result<(), ServiceError> {
    if value.len() > max {
        return Err(bad(
            field,
            format!("longer than {max} bytes ({} bytes)", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(bad(field, "must not contain control characters"));
    }
    Ok(())
}

fn namespace(f: &Fields) -> Result<String, ServiceError> {
    checked_namespace(f.string("namespace")?.unwrap_or_default())
}

fn checked_namespace(ns: String) -> Result<String, ServiceError> {
    check_name("namespace", &ns, NAMESPACE_MAX_BYTES)?;
    Ok(ns)
}

/// The namespace when the request names one (absent: all of them).
fn optional_namespace(f: &Fields) -> Result<Option<String>, ServiceError> {
    f.value("namespace").map(|_| namespace(f)).transpose()
}

fn key(f: &Fields) -> Result<String, ServiceError> {
    checked_key(f.required("key")?)
}

fn checked_key(key: String) -> Result<String, ServiceError> {
    if key.is_empty() {
        return Err(bad("key", "must not be empty"));
    }
    if key.len() > KEY_MAX_BYTES {
        return Err(bad(
            "key",
            format!("longer than {KEY_MAX_BYTES} bytes ({} bytes)", key.len()),
        ));
    }
    Ok(key)
}

fn tags(f: &Fields, field: &'static str) -> Result<Vec<String>, ServiceError> {
    let mut tags = f.strings(field)?.unwrap_or_default();
    if tags.len() > TAGS_MAX {
        return Err(bad(
            field,
            format!("more than {TAGS_MAX} tags ({})", tags.len()),
        ));
    }
    for t in &tags {
        if t.is_empty() {
            return Err(bad(field, "a tag must not be empty"));
        }
        check_name(field, t, TAG_MAX_BYTES)?;
    }
    tags.sort();
    tags.dedup();
    Ok(tags)
}

/// A duration field: a number of seconds or a text like `"90s"`, `"1h"`;
/// positive, at most [`TTL_MAX`].
fn ttl(f: &Fields, field: &'static str) -> Result<Option<u64>, ServiceError> {
    let Some(v) = f.value(field) else {
        return Ok(None);
    };
    let d = match v {
        Value::Number(n) => match n.as_f64() {
            Some(s) if s > 0.0 && s <= TTL_MAX.as_secs_f64() => Duration::from_secs_f64(s),
            _ => {
                return Err(bad(
                    field,
                    format!("must be a positive duration of at most a year, got {n}"),
                ))
            }
        },
        Value::String(s) if s.is_empty() => return Ok(None),
        Value::String(s) => match s.parse::<f64>() {
            Ok(secs) if secs > 0.0 && secs <= TTL_MAX.as_secs_f64() => {
                Duration::from_secs_f64(secs)
            }
            Ok(_) => {
                return Err(bad(
                    field,
                    format!("must be a positive duration of at most a year, got {s:?}"),
                ))
            }
            Err(_) => humantime::parse_duration(s)
                .map_err(|e| bad(field, format!("invalid duration {s:?}: {e}")))?,
        },
        other => {
            return Err(bad(
                field,
                format!("must be a duration (\"1h\") or a number of seconds, got {other}"),
            ))
        }
    };
    if d.is_zero() || d > TTL_MAX {
        return Err(bad(
            field,
            format!("must be a positive duration of at most a year, got {d:?}"),
        ));
    }
    Ok(Some(
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1),
    ))
}

fn pattern(f: &Fields, required: bool) -> Result<Option<String>, ServiceError> {
    let p = if required {
        Some(f.required("pattern")?)
    } else {
        f.string("pattern")?
    };
    if let Some(p) = &p {
        if p.len() > PATTERN_MAX_BYTES {
            return Err(bad(
                "pattern",
                format!("longer than {PATTERN_MAX_BYTES} bytes ({} bytes)", p.len()),
            ));
        }
        if required && p.is_empty() {
            return Err(bad("pattern", "must not be empty"));
        }
    }
    Ok(p)
}

fn timestamp_ms(ms: u64) -> Value {
    match pb_timestamp(ms) {
        None => Value::Null,
        Some(t) => super::timestamp_json(Some(&t)),
    }
}

fn pb_timestamp(ms: u64) -> Option<pbjson_types::Timestamp> {
    (ms != 0).then(|| pbjson_types::Timestamp {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: i32::try_from((ms % 1000) * 1_000_000).unwrap_or(0),
    })
}

fn kv(context: &ServiceContext) -> Result<&crate::kv::KvNode, ServiceError> {
    context
        .kv
        .as_ref()
        .ok_or_else(|| ServiceError::unavailable("the key-value cache is not running on this node"))
}

/// Header of one partition's part of a command another node split (its
/// value: the partition): the owner runs only that part.
pub const PARTITION_HEADER: &str = "Cairn-Kv-Partition";

/// Where a key-value command of one partition ran.
pub(crate) enum Ran<T> {
    /// Here: this node writes the partition (or is a single node).
    Here(T),
    /// At the partition's owner: its reply, to relay (this node applied
    /// what the owner answered, bounded by `cluster.read-wait`).
    There(async_nats::HeaderMap, bytes::Bytes),
}

/// Whether another node sent this request on (see
/// [`super::cluster::FORWARDED_HEADER`]).
fn forwarded(request: &Incoming) -> bool {
    request
        .headers
        .as_ref()
        .is_some_and(|h| h.get(super::cluster::FORWARDED_HEADER).is_some())
}

/// The partition a part names ([`PARTITION_HEADER`]), if this request is
/// one.
fn part_of(request: &Incoming) -> Result<Option<usize>, ServiceError> {
    let Some(value) = request
        .headers
        .as_ref()
        .and_then(|h| h.get(PARTITION_HEADER))
    else {
        return Ok(None);
    };
    match value.as_str().parse::<usize>() {
        Ok(p) if p < KV_PARTITIONS => Ok(Some(p)),
        _ => Err(ServiceError::bad_request(format!(
            "header {PARTITION_HEADER}: {:?} is not a partition (0 to {})",
            value.as_str(),
            KV_PARTITIONS - 1
        ))),
    }
}

/// How a command travels to a partition's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// As it came (body and headers, its format): the owner's reply is
    /// the client's.
    Whole,
    /// As the part of `partition` of a split command: JSON, with
    /// [`PARTITION_HEADER`]; the owner answers its count.
    Part(usize),
}

/// [`on_owner`] for a command sent whole whose run here is the partition
/// writer's `command()`: `Ok` with this node's reply, or `Err` with the
/// owner's reply relayed as this node's answer.
async fn execute_on_owner(
    context: &ServiceContext,
    request: &Incoming,
    endpoint: &'static str,
    partition: usize,
    command: impl Fn() -> KvCommand,
    meta: cairn_events::envelope::Metadata,
) -> Result<Result<KvReply, Body>, ServiceError> {
    let kv = kv(context)?;
    let ran = on_owner(context, request, endpoint, partition, Via::Whole, |key| {
        let (command, meta) = (command(), with_key(&meta, key));
        async move { Ok(kv.execute(partition, command, meta).await?) }
    })
    .await?;
    Ok(match ran {
        Ran::Here(reply) => Ok(reply),
        Ran::There(headers, body) => Err(relayed(request.format, &headers, body)?),
    })
}

/// Runs `local` when this node writes `partition` (always on a single
/// node), else sends the request (`endpoint`, as `how` says) to the
/// partition's owner and answers its reply — the routing repository
/// commands have ([`super::cluster::route`], [`super::cluster::forward`]:
/// the owner found by its lease or placement, taken here when this node
/// is its preferred owner, routed again while it changes hands). A
/// command that finds the partition handed over here ([`KvError::NotOwner`],
/// nothing of it ran) is routed again, for at most
/// [`super::cluster::REROUTE_WINDOW`]. Once the owner answered, this node
/// waits (at most `cluster.read-wait`) until it applied the owner's
/// `Cairn-Seq`, so this node's reply — and any read here after it —
/// reflects the write.
///
/// A command sent whole carries an idempotency key to the owner: the
/// client's `Cairn-Request-Id`, or one made here the first time it is
/// forwarded ([`idempotency::made_key`]: `fwd-<uuid v7>`, digest of the
/// endpoint and body), the same on every attempt. (Made lazily, unlike
/// the service's other writes, which make it before routing: a key on a
/// write run here keeps its superseded event through compaction, see
/// the idempotency module's docs.) `local` gets that made key (`None`
/// before any forward, or when the client gave one, which the command's
/// metadata holds already): when the partition comes to this node after
/// an attempt whose answer was lost, the run here carries the key too,
/// and the writer appends nothing if the previous owner applied it. The
/// commands whose writer checks keys (`set`, `delete`, `configure`)
/// record it.
pub(crate) async fn on_owner<T, F, Fut>(
    context: &ServiceContext,
    request: &Incoming,
    endpoint: &'static str,
    partition: usize,
    how: Via,
    mut local: F,
) -> Result<Ran<T>, ServiceError>
where
    F: FnMut(Option<RequestKey>) -> Fut,
    Fut: std::future::Future<Output = Result<T, ServiceError>>,
{
    use super::cluster::{self, Forwarded, Route};
    let Some(routing) = context.config.cluster.as_ref() else {
        return local(None).await.map(Ran::Here);
    };
    let stream = crate::kv::partition_stream(partition);
    let forwarded = forwarded(request);
    let deadline = tokio::time::Instant::now() + cluster::REROUTE_WINDOW;
    let mut made: Option<RequestKey> = None;
    loop {
        let result = match cluster::route(routing, &stream, forwarded).await {
            Ok(Route::Local) => local(made.clone()).await.map(Ran::Here),
            Ok(Route::Forward(node)) => {
                let (payload, headers) = match how {
                    Via::Whole => {
                        let sent = request.headers.as_ref();
                        let headers = if sent.is_some_and(|h| h.get(REQUEST_ID_HEADER).is_some()) {
                            sent.cloned().unwrap_or_default()
                        } else {
                            let key = made.get_or_insert_with(|| {
                                idempotency::made_key(endpoint, &request.body)
                            });
                            idempotency::with_id(sent, &key.id)
                        };
                        (request.payload.clone(), Some(headers))
                    }
                    Via::Part(p) => {
                        let mut headers = request.headers.clone().unwrap_or_default();
                        // The part is JSON whatever the client sent.
                        headers.insert("Content-Type", "application/json");
                        headers.insert(PARTITION_HEADER, p.to_string().as_str());
                        (bytes::Bytes::from(request.body.clone()), Some(headers))
                    }
                };
                match cluster::forward(
                    context,
                    routing,
                    payload,
                    headers.as_ref(),
                    endpoint,
                    &stream,
                    node,
                )
                .await
                {
                    Ok(Forwarded::Reply(headers, body)) => {
                        let seq = cluster::reply_seq(&headers);
                        cluster::wait_applied(context, seq, context.config.read_wait).await;
                        return Ok(Ran::There(headers, body));
                    }
                    Ok(Forwarded::RunHere) => continue,
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match result {
            Err(e)
                if cluster::is_moving(&e)
                    && !forwarded
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(cluster::REROUTE_PAUSE).await;
            }
            other => return other,
        }
    }
}

/// `meta` with `key` recorded (see [`on_owner`]), when there is one.
fn with_key(
    meta: &cairn_events::envelope::Metadata,
    key: Option<RequestKey>,
) -> cairn_events::envelope::Metadata {
    let mut meta = meta.clone();
    if let Some(key) = key {
        meta.request_id = key.id;
        meta.request_digest = key.digest;
    }
    meta
}

/// The idempotency key a write that checks keys (`kv.set`, `kv.delete`,
/// `kv.configure`) records: its `Cairn-Request-Id` (a client's, or the one
/// the node that forwarded it made); a malformed header is a 400.
fn keyed(mut request: Incoming, endpoint: &str) -> Result<Incoming, ServiceError> {
    request.request = idempotency::request_key(endpoint, request.headers.as_ref(), &request.body)?;
    Ok(request)
}

/// The owner's reply to a command sent [`Via::Whole`], as this node's:
/// the same body (in the client's format), or the same error.
fn relayed(
    format: Format,
    headers: &async_nats::HeaderMap,
    body: bytes::Bytes,
) -> Result<Body, ServiceError> {
    if let Some(code) = headers.get("Nats-Service-Error-Code") {
        let code = code.as_str().parse::<u16>().unwrap_or(500);
        // The body names the error exactly (the header is capped).
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
            .or_else(|| {
                cairn_events::v1::ErrorReply::decode(&body[..])
                    .ok()
                    .map(|e| e.message)
                    .filter(|m| !m.is_empty())
            })
            .or_else(|| {
                headers
                    .get("Nats-Service-Error")
                    .map(|m| m.as_str().to_owned())
            })
            .unwrap_or_default();
        return Err(ServiceError { code, message });
    }
    Ok(match format {
        Format::Json => Body::JsonBytes(body),
        Format::Protobuf => Body::Protobuf(body.to_vec()),
    })
}

/// Runs a command that touches every partition (a pattern, tags, `clear`
/// of everything, `cleanup` of every namespace) as one part per partition,
/// each where its partition is written (`part(p)` here, else sent to the
/// owner as [`Via::Part`]), all at once; answers the sum of their counts.
/// Each part is atomic (one append of its partition's events); the whole
/// is not: when parts fail, the others' deletions stand and the error
/// names the failed partitions and what the others removed (retrying is
/// safe: a part removes what still matches). A request that is itself a
/// part runs only its partition. A single node runs such commands whole
/// (one scan, [`crate::kv::KvNode::delete_matching`] cuts them per
/// partition), not through this.
pub(crate) async fn by_partition<F, Fut>(
    context: &ServiceContext,
    request: &Incoming,
    endpoint: &'static str,
    field: &'static str,
    part: F,
) -> Result<u64, ServiceError>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<u64, ServiceError>>,
{
    if let Some(p) = part_of(request)? {
        return match on_owner(context, request, endpoint, p, Via::Part(p), |_| part(p)).await? {
            Ran::Here(n) => Ok(n),
            Ran::There(headers, body) => part_count(&headers, body, field),
        };
    }
    let parts = (0..KV_PARTITIONS).map(|p| {
        let part = &part;
        async move {
            match on_owner(context, request, endpoint, p, Via::Part(p), |_| part(p)).await? {
                Ran::Here(n) => Ok(n),
                Ran::There(headers, body) => part_count(&headers, body, field),
            }
        }
    });
    let outcomes = futures::future::join_all(parts).await;
    let mut total = 0;
    let mut failed: Vec<(usize, ServiceError)> = Vec::new();
    for (p, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(n) => total += n,
            Err(e) => failed.push((p, e)),
        }
    }
    let Some((_, first)) = failed.first() else {
        return Ok(total);
    };
    let names: Vec<String> = failed
        .iter()
        .map(|(p, _)| crate::kv::partition_stream(*p).to_string())
        .collect();
    Err(ServiceError {
        code: first.code,
        message: format!(
            "the parts of {} failed ({}); the other partitions' parts removed {total} entries (each partition's part is all or nothing); retry to finish",
            names.join(", "),
            first.message
        ),
    })
}

/// The count (`field`) of an owner's reply to a part.
fn part_count(
    headers: &async_nats::HeaderMap,
    body: bytes::Bytes,
    field: &str,
) -> Result<u64, ServiceError> {
    let value = match relayed(Format::Json, headers, body)? {
        Body::JsonBytes(b) => serde_json::from_slice::<Value>(&b).ok(),
        _ => None,
    };
    value
        .and_then(|v| v.get(field)?.as_u64())
        .ok_or_else(|| ServiceError::internal(format!("a part's reply has no {field} count")))
}

/// `kv.set`.
pub async fn handle_set(context: ServiceContext, request: Incoming) -> Result<Body, ServiceError> {
    let request = keyed(request, "kv.set")?;
    let f = Fields::parse(
        &request.body,
        &[
            "namespace",
            "key",
            "value",
            "value_b64",
            "ttl",
            "tags",
            "principal",
        ],
    )?;
    let namespace = namespace(&f)?;
    let key = key(&f)?;
    let (value, json) = match (f.value("value"), f.string("value_b64")?) {
        (Some(_), Some(_)) => {
            return Err(bad("value_b64", "give value or value_b64, not both"));
        }
        (None, None) => return Err(bad("value", "required (or value_b64)")),
        (Some(v), None) => (
            serde_json::to_vec(v).map_err(|e| bad("value", e.to_string()))?,
            true,
        ),
        (None, Some(b)) => (
            base64::engine::general_purpose::STANDARD
                .decode(b.as_bytes())
                .map_err(|e| bad("value_b64", format!("invalid base64: {e}")))?,
            false,
        ),
    };
    let kv = kv(&context)?;
    let limit = value_limit(&context, kv);
    if value.len() > limit.bytes() {
        return Err(bad(
            if json { "value" } else { "value_b64" },
            limit.refusal(value.len()),
        ));
    }
    let ttl_ms = ttl(&f, "ttl")?;
    let tags = tags(&f, "tags")?;
    let meta = metadata(&request, f.string("principal")?);
    let partition = partition_of(&namespace);
    let set = SetEntry {
        namespace,
        key,
        value,
        json,
        tags,
        ttl_ms,
    };
    // At the partition's owner: the write-through origin is called there,
    // once, before the set is queued.
    let ran = on_owner(
        &context,
        &request,
        "cairn.v1.kv.set",
        partition,
        Via::Whole,
        |key| {
            let (set, meta, context) = (set.clone(), with_key(&meta, key), &context);
            async move {
                write_through(context, kv, &set, &meta).await?;
                Ok(kv.execute(partition, KvCommand::Set(set), meta).await?)
            }
        },
    )
    .await?;
    let reply = match ran {
        Ran::Here(reply) => reply,
        Ran::There(headers, body) => return relayed(request.format, &headers, body),
    };
    let KvReply::Set {
        version,
        created_at_ms,
        expires_at_ms,
    } = reply
    else {
        return Err(ServiceError::internal("kv.set answered another reply"));
    };
    Ok(Body::of(
        request.format,
        || {
            json!({
                "version": version,
                "created_at": timestamp_ms(created_at_ms),
                "expires_at": timestamp_ms(expires_at_ms),
            })
        },
        || {
            KvSetReply {
                version,
                created_at: pb_timestamp(created_at_ms),
                expires_at: pb_timestamp(expires_at_ms),
            }
            .encode_to_vec()
        },
    ))
}

/// The largest value an entry may hold on this node: `kv.value-max-bytes`,
/// or less when one event could not hold it (an entry is one
/// `KvEntrySet` event of at most the store's `store.event-max-bytes`, with
/// [`ENTRY_ROOM_BYTES`] for its names and tags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueLimit {
    /// `kv.value-max-bytes` bounds it.
    Configured(usize),
    /// One event bounds it: `store.event-max-bytes` less
    /// [`ENTRY_ROOM_BYTES`].
    Event {
        /// The largest value.
        bytes: usize,
        /// `store.event-max-bytes`.
        event_max_bytes: usize,
        /// `kv.value-max-bytes`.
        configured: usize,
    },
}

impl ValueLimit {
    /// The limit for a store whose events hold at most `event_max_bytes`.
    pub fn of(configured: usize, event_max_bytes: usize) -> Self {
        let fits = event_max_bytes.saturating_sub(ENTRY_ROOM_BYTES);
        if configured <= fits {
            Self::Configured(configured)
        } else {
            Self::Event {
                bytes: fits,
                event_max_bytes,
                configured,
            }
        }
    }

    /// The largest value, in bytes.
    pub fn bytes(self) -> usize {
        match self {
            Self::Configured(bytes) | Self::Event { bytes, .. } => bytes,
        }
    }

    /// Why a value of `len` bytes is refused.
    pub fn refusal(self, len: usize) -> String {
        match self {
            Self::Configured(max) => format!("{len} bytes, more than kv.value-max-bytes ({max})"),
            Self::Event {
                bytes,
                event_max_bytes,
                configured,
            } => format!(
                "{len} bytes, more than one entry holds on this node ({bytes}: an entry is one event of at most store.event-max-bytes ({event_max_bytes}), less {ENTRY_ROOM_BYTES} for its key, namespace and tags; kv.value-max-bytes is {configured})"
            ),
        }
    }
}

/// This node's [`ValueLimit`].
fn value_limit(context: &ServiceContext, kv: &crate::kv::KvNode) -> ValueLimit {
    use cairn_storage::ReplicatedLog as _;
    ValueLimit::of(
        context.config.kv.value_max_bytes,
        kv.env().store.event_max_bytes(),
    )
}

/// A write-through namespace's origin is told of `set` first; its failure
/// stores nothing. A set sent again with the idempotency key of one
/// already applied does not tell it again (the first was told, and the
/// writer answers the retry from the key); a key of another request is
/// answered 409 before the origin is told.
async fn write_through(
    context: &ServiceContext,
    kv: &crate::kv::KvNode,
    set: &SetEntry,
    meta: &cairn_events::envelope::Metadata,
) -> Result<(), ServiceError> {
    let settings = kv.settings(&set.namespace);
    if !settings.write_through || settings.origin_subject.is_empty() {
        return Ok(());
    }
    if !meta.request_id.is_empty() {
        // A key used for another request is answered 409 here, as the
        // writer would answer it.
        let key = idempotency::RequestKey {
            id: meta.request_id.clone(),
            digest: meta.request_digest.clone(),
        };
        if let idempotency::Prior::Applied(_) = idempotency::prior(context, &key).await? {
            return Ok(());
        }
    }
    let mut body =
        json!({"op": "set", "namespace": set.namespace, "key": set.key, "tags": set.tags});
    if set.json {
        body["value"] = serde_json::from_slice(&set.value).unwrap_or(Value::Null);
    } else {
        body["value_b64"] = json!(base64::engine::general_purpose::STANDARD.encode(&set.value));
    }
    if let Some(ttl_ms) = set.ttl_ms {
        body["ttl_ms"] = json!(ttl_ms);
    }
    let body = serde_json::to_vec(&body).map_err(|e| ServiceError::internal(e.to_string()))?;
    flight::call(
        &context.client,
        "origin",
        &settings.origin_subject,
        body,
        context.config.kv.origin_timeout,
    )
    .await?;
    Ok(())
}

/// The entry's JSON reply, written straight to bytes: the stored JSON
/// value (valid JSON text: a `kv.set`'s serialised value, or an origin's or
/// compute's reply that parsed as JSON) is copied verbatim, not parsed and
/// re-encoded, and no `Value` tree is built — the hot path of `kv.get`.
fn entry_json_bytes(row: &KvEntryRow, info: &EntryInfo) -> bytes::Bytes {
    #[derive(serde::Serialize)]
    struct Head<'a> {
        namespace: &'a str,
        key: &'a str,
        tags: &'a [String],
        created_at: Value,
        expires_at: Value,
        hit_count: u64,
        last_accessed: Value,
        version: u64,
    }
    let head = Head {
        namespace: &row.namespace,
        key: &row.key,
        tags: &row.tags,
        created_at: timestamp_ms(row.created_at_ms),
        expires_at: timestamp_ms(row.expires_at_ms),
        hit_count: info.hits,
        last_accessed: timestamp_ms(info.last_accessed_ms),
        version: row.seq,
    };
    let b64 = (!row.json).then(|| base64::engine::general_purpose::STANDARD.encode(&row.value));
    let value_len = b64.as_ref().map_or(row.value.len(), String::len);
    let mut out = Vec::with_capacity(row.namespace.len() + row.key.len() + value_len + 256);
    // A struct of strings, numbers and nulls always serialises.
    let _ = serde_json::to_writer(&mut out, &head);
    out.pop(); // its closing brace: the value follows
    match b64 {
        None => {
            out.extend_from_slice(b",\"value\":");
            out.extend_from_slice(&row.value);
        }
        Some(b64) => {
            out.extend_from_slice(b",\"value_b64\":\"");
            out.extend_from_slice(b64.as_bytes());
            out.push(b'"');
        }
    }
    out.push(b'}');
    out.into()
}

fn entry_pb(row: &KvEntryRow, info: &EntryInfo) -> Vec<u8> {
    let value = row
        .json
        .then(|| serde_json::from_slice::<pbjson_types::Value>(&row.value).ok())
        .flatten();
    cairn_events::v1::KvEntry {
        namespace: row.namespace.clone(),
        key: row.key.clone(),
        tags: row.tags.clone(),
        value,
        value_b64: if row.json {
            Vec::new()
        } else {
            row.value.clone()
        },
        created_at: pb_timestamp(row.created_at_ms),
        expires_at: pb_timestamp(row.expires_at_ms),
        hit_count: info.hits,
        last_accessed: pb_timestamp(info.last_accessed_ms),
        version: row.seq,
    }
    .encode_to_vec()
}

fn key_request(request: &Incoming) -> Result<(String, String, Option<String>), ServiceError> {
    /// The usual body of a `kv.get` / `kv.exists` / `kv.delete`, read
    /// straight into its fields (no JSON tree: this is every GET). A body
    /// it does not take as it is — an unknown or repeated field, a wrong
    /// type, no key, not JSON — goes the general way, which names what is
    /// wrong exactly as for every other request. Only an object is tried
    /// (serde would read an array as the fields in order, which the
    /// general way refuses).
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Plain {
        #[serde(default)]
        namespace: Option<String>,
        key: Option<String>,
        #[serde(default)]
        principal: Option<String>,
    }
    let object = request.body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if let Some(Ok(Plain {
        namespace,
        key: Some(key),
        principal,
    })) = object.then(|| serde_json::from_slice::<Plain>(&request.body))
    {
        return Ok((
            checked_namespace(namespace.unwrap_or_default())?,
            checked_key(key)?,
            principal,
        ));
    }
    key_fields(&request.body)
}

/// [`key_request`] the general way.
fn key_fields(body: &[u8]) -> Result<(String, String, Option<String>), ServiceError> {
    let f = Fields::parse(body, &["namespace", "key", "principal"])?;
    Ok((namespace(&f)?, key(&f)?, f.string("principal")?))
}

/// `kv.get`: the entry, or 404 (absent or expired); counts a hit or miss.
pub async fn handle_get(context: ServiceContext, request: Incoming) -> Result<Body, ServiceError> {
    let (namespace, key, principal) = key_request(&request)?;
    let kv = kv(&context)?;
    let mut found = kv.get(&namespace, &key, true).await?;
    // A hit needs no settings (an origin is asked on a miss only).
    let settings = if found.is_none() {
        kv.settings(&namespace)
    } else {
        KvNamespaceSettings::default()
    };
    if found.is_none() && !settings.origin_subject.is_empty() {
        // Read-through: one origin call for all concurrent misses — at the
        // partition's owner, so across the cluster.
        let body = serde_json::to_vec(&json!({"op": "get", "namespace": namespace, "key": key}))
            .map_err(|e| ServiceError::internal(e.to_string()))?;
        let fill = Fill {
            namespace: namespace.clone(),
            key: key.clone(),
            ttl_ms: None,
            tags: Vec::new(),
            meta: metadata(&request, principal),
        };
        let partition = partition_of(&namespace);
        let ran = on_owner(
            &context,
            &request,
            "cairn.v1.kv.get",
            partition,
            Via::Whole,
            |_| {
                let (fill, body, context) = (fill.clone(), body.clone(), &context);
                let subject = settings.origin_subject.clone();
                async move { fill.run(context, "origin", &subject, body).await }
            },
        )
        .await?;
        found = match ran {
            Ran::Here(found) => found,
            Ran::There(headers, body) => return relayed(request.format, &headers, body),
        };
    }
    let Some(found) = found else {
        return Err(KvError::NotFound {
            full_key: full_key(&namespace, &key),
        }
        .into());
    };
    Ok(match request.format {
        Format::Json => Body::JsonBytes(entry_json_bytes(&found.row, &found.info)),
        Format::Protobuf => Body::Protobuf(entry_pb(&found.row, &found.info)),
    })
}

/// `kv.exists`: whether a live entry exists; counts nothing.
pub async fn handle_exists(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    let (namespace, key, _) = key_request(&request)?;
    let exists = kv(&context)?.get(&namespace, &key, false).await?.is_some();
    Ok(Body::of(
        request.format,
        || json!({ "exists": exists }),
        || KvExistsReply { exists }.encode_to_vec(),
    ))
}

/// `kv.delete`.
pub async fn handle_delete(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    let request = keyed(request, "kv.delete")?;
    let (namespace, key, principal) = key_request(&request)?;
    let meta = metadata(&request, principal);
    let partition = partition_of(&namespace);
    let command = || KvCommand::Delete {
        namespace: namespace.clone(),
        key: key.clone(),
    };
    let reply = match execute_on_owner(
        &context,
        &request,
        "cairn.v1.kv.delete",
        partition,
        command,
        meta,
    )
    .await?
    {
        Ok(reply) => reply,
        Err(relayed) => return Ok(relayed),
    };
    let deleted = reply == KvReply::Deleted(true);
    Ok(Body::of(
        request.format,
        || json!({ "deleted": deleted }),
        || KvDeleteReply { deleted }.encode_to_vec(),
    ))
}

fn count_body(format: Format, deleted: u64) -> Body {
    Body::of(
        format,
        || json!({ "deleted": deleted }),
        || KvCountReply { deleted }.encode_to_vec(),
    )
}

/// Every entry under row prefix `prefix` that `matcher` selects (of
/// partition `only`, or of all), in rounds of [`BULK_ROUND_ENTRIES`],
/// deleted; answers how many.
async fn delete_scanned(
    context: &ServiceContext,
    by: &'static str,
    selector: String,
    prefix: Vec<u8>,
    matcher: Matcher,
    meta: cairn_events::envelope::Metadata,
    only: Option<usize>,
) -> Result<u64, ServiceError> {
    let kv = kv(context)?;
    let mut deleted = 0;
    let mut after: Option<Vec<u8>> = None;
    for _ in 0..BULK_ROUNDS_MAX {
        let m = matcher.clone();
        let rows = kv
            .scan(
                prefix.clone(),
                after.clone(),
                BULK_ROUND_ENTRIES,
                move |r| only.is_none_or(|p| partition_of(&r.namespace) == p) && m.matches(r),
            )
            .await?;
        let Some((last, _)) = rows.last() else {
            break;
        };
        after = Some(last.clone());
        let done = rows.len() < BULK_ROUND_ENTRIES;
        let candidates = rows
            .into_iter()
            .map(|(_, r)| (r.namespace, r.key))
            .collect();
        deleted += kv
            .delete_matching(
                by,
                selector.clone(),
                matcher.clone(),
                candidates,
                meta.clone(),
            )
            .await?;
        if done {
            break;
        }
    }
    Ok(deleted)
}

/// `kv.delete_by_pattern`.
pub async fn handle_delete_by_pattern(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    let f = Fields::parse(&request.body, &["pattern", "principal"])?;
    let pattern = pattern(&f, true)?.unwrap_or_default();
    let meta = metadata(&request, f.string("principal")?);
    let glob = Glob::new(&pattern);
    // Full keys starting with a namespace's `ns:` can be in any namespace
    // whose name is a prefix of it: scan every entry (documented cost).
    let deleted = if context.config.cluster.is_none() {
        delete_scanned(
            &context,
            "pattern",
            pattern,
            KvView::ENTRY_PREFIX.to_vec(),
            Matcher::Pattern(glob),
            meta,
            None,
        )
        .await?
    } else {
        by_partition(
            &context,
            &request,
            "cairn.v1.kv.delete_by_pattern",
            "deleted",
            |p| {
                let (context, pattern, glob, meta) =
                    (&context, pattern.clone(), glob.clone(), meta.clone());
                async move {
                    delete_scanned(
                        context,
                        "pattern",
                        pattern,
                        KvView::ENTRY_PREFIX.to_vec(),
                        Matcher::Pattern(glob),
                        meta,
                        Some(p),
                    )
                    .await
                }
            },
        )
        .await?
    };
    Ok(count_body(request.format, deleted))
}

/// `kv.delete_by_namespace`.
pub async fn handle_delete_by_namespace(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    let f = Fields::parse(&request.body, &["namespace", "principal"])?;
    if f.value("namespace").is_none() {
        return Err(bad("namespace", "required"));
    }
    let namespace = namespace(&f)?;
    let meta = metadata(&request, f.string("principal")?);
    let partition = partition_of(&namespace);
    let endpoint = "cairn.v1.kv.delete_by_namespace";
    let ran = on_owner(&context, &request, endpoint, partition, Via::Whole, |_| {
        let (context, namespace, meta) = (&context, namespace.clone(), meta.clone());
        async move {
            delete_scanned(
                context,
                "namespace",
                namespace.clone(),
                KvView::namespace_entries(&namespace),
                Matcher::Namespace(namespace),
                meta,
                None,
            )
            .await
        }
    })
    .await?;
    match ran {
        Ran::Here(deleted) => Ok(count_body(request.format, deleted)),
        Ran::There(headers, body) => relayed(request.format, &headers, body),
    }
}

/// `kv.delete_by_tags`.
pub async fn handle_delete_by_tags(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    let f = Fields::parse(&request.body, &["tags", "match", "principal"])?;
    let tags = tags(&f, "tags")?;
    if tags.is_empty() {
        return Err(bad("tags", "required: at least one tag"));
    }
    let all = match f.string("match")?.as_deref() {
        None | Some("") | Some("any") => false,
        Some("all") => true,
        Some(other) => {
            return Err(bad(
                "match",
                format!("must be \"any\" or \"all\", got {other:?}"),
            ))
        }
    };
    let meta = metadata(&request, f.string("principal")?);
    let kv = kv(&context)?;
    let selector = format!("{}:{}", if all { "all" } else { "any" }, tags.join(","));
    // Candidates from the tag index: every tag's for `any`, the first's
    // for `all` (the matcher checks the rest on the current rows).
    let by_tags = |only: Option<usize>| {
        let (tags, selector, meta) = (tags.clone(), selector.clone(), meta.clone());
        async move {
            let mut candidates = Vec::new();
            let scanned: &[String] = if all { &tags[..1] } else { &tags };
            for tag in scanned {
                candidates.extend(kv.tagged(tag, BULK_ROUND_ENTRIES * BULK_ROUNDS_MAX).await?);
            }
            candidates.retain(|(ns, _)| only.is_none_or(|p| partition_of(ns) == p));
            candidates.sort();
            candidates.dedup();
            Ok::<_, ServiceError>(
                kv.delete_matching(
                    "tags",
                    selector,
                    Matcher::Tags { tags, all },
                    candidates,
                    meta,
                )
                .await?,
            )
        }
    };
    let deleted = if context.config.cluster.is_none() {
        by_tags(None).await?
    } else {
        by_partition(
            &context,
            &request,
            "cairn.v1.kv.delete_by_tags",
            "deleted",
            |p| by_tags(Some(p)),
        )
        .await?
    };
    Ok(count_body(request.format, deleted))
}

/// `kv.clear`: one namespace, or everything with `"all": true`.
pub async fn handle_clear(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    let f = Fields::parse(&request.body, &["namespace", "all", "principal"])?;
    let all = f.bool("all")?.unwrap_or(false);
    let has_namespace = f.value("namespace").is_some();
    if !has_namespace && !all {
        return Err(bad(
            "all",
            "clearing every namespace needs \"all\": true (or name a namespace)",
        ));
    }
    if has_namespace && all {
        return Err(bad("all", "give a namespace or \"all\": true, not both"));
    }
    let namespace = namespace(&f)?;
    let meta = metadata(&request, f.string("principal")?);
    let clear = |only: Option<usize>| {
        let (context, namespace, meta) = (&context, namespace.clone(), meta.clone());
        async move {
            let (prefix, matcher, selector) = if all {
                (KvView::ENTRY_PREFIX.to_vec(), Matcher::All, String::new())
            } else {
                (
                    KvView::namespace_entries(&namespace),
                    Matcher::Namespace(namespace.clone()),
                    namespace,
                )
            };
            delete_scanned(context, "clear", selector, prefix, matcher, meta, only).await
        }
    };
    let endpoint = "cairn.v1.kv.clear";
    if context.config.cluster.is_none() {
        return Ok(count_body(request.format, clear(None).await?));
    }
    if all {
        let deleted =
            by_partition(&context, &request, endpoint, "deleted", |p| clear(Some(p))).await?;
        return Ok(count_body(request.format, deleted));
    }
    let partition = partition_of(&namespace);
    match on_owner(&context, &request, endpoint, partition, Via::Whole, |_| {
        clear(None)
    })
    .await?
    {
        Ran::Here(deleted) => Ok(count_body(request.format, deleted)),
        Ran::There(headers, body) => relayed(request.format, &headers, body),
    }
}

/// `kv.keys`: `{items: [{namespace, key}], continue}`, live entries in
/// key order; `continue` (hex of the last row key) resumes.
pub async fn handle_keys(context: ServiceContext, request: Incoming) -> Result<Body, ServiceError> {
    let f = Fields::parse(
        &request.body,
        &["namespace", "pattern", "tag", "limit", "continue"],
    )?;
    let ns = optional_namespace(&f)?;
    let glob = pattern(&f, false)?.map(|p| Glob::new(&p));
    let tag = f.string("tag")?;
    if let Some(t) = &tag {
        check_name("tag", t, TAG_MAX_BYTES)?;
    }
    let limit = f
        .u64_in("limit", 1, KEYS_MAX_LIMIT)?
        .unwrap_or(KEYS_DEFAULT_LIMIT) as usize;
    let after = match f.string("continue")?.filter(|c| !c.is_empty()) {
        Some(c) => Some(hex::decode(&c).map_err(|_| bad("continue", "not a token kv.keys gave"))?),
        None => None,
    };
    let prefix = match &ns {
        Some(ns) => KvView::namespace_entries(ns),
        None => KvView::ENTRY_PREFIX.to_vec(),
    };
    let kv = kv(&context)?;
    let now_ms = kv.now_ms();
    let rows = kv
        .scan(prefix, after, limit + 1, move |r| {
            !crate::kv::expired(r.expires_at_ms, now_ms)
                && glob
                    .as_ref()
                    .is_none_or(|g| g.matches(&full_key(&r.namespace, &r.key)))
                && tag.as_ref().is_none_or(|t| r.tags.contains(t))
        })
        .await?;
    let more = rows.len() > limit;
    let rows = &rows[..rows.len().min(limit)];
    let next = if more {
        rows.last().map(|(k, _)| hex::encode(k)).unwrap_or_default()
    } else {
        String::new()
    };
    let items: Vec<KvEntryRef> = rows
        .iter()
        .map(|(_, r)| KvEntryRef {
            namespace: r.namespace.clone(),
            key: r.key.clone(),
        })
        .collect();
    Ok(Body::of(
        request.format,
        || {
            json!({
                "items": items.iter().map(|i| json!({"namespace": i.namespace, "key": i.key, "full_key": full_key(&i.namespace, &i.key)})).collect::<Vec<_>>(),
                "continue": next,
            })
        },
        || {
            KvKeysReply {
                items: items.clone(),
                r#continue: next.clone(),
            }
            .encode_to_vec()
        },
    ))
}

/// `kv.stats`: of one namespace, or of all.
pub async fn handle_stats(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    let f = Fields::parse(&request.body, &["namespace", "principal"])?;
    let ns = optional_namespace(&f)?;
    let kv = kv(&context)?;
    let now_ms = kv.now_ms();
    let prefix = match &ns {
        Some(ns) => KvView::namespace_entries(ns),
        None => KvView::ENTRY_PREFIX.to_vec(),
    };
    let rows = kv
        .scan(prefix, None, usize::MAX, move |r| {
            !crate::kv::expired(r.expires_at_ms, now_ms)
        })
        .await?;
    let memory = &kv.env().memory;
    let (mut oldest, mut newest, mut disk, mut in_memory) = (u64::MAX, 0u64, 0u64, 0u64);
    for (k, r) in &rows {
        oldest = oldest.min(r.created_at_ms);
        newest = newest.max(r.created_at_ms);
        disk += (k.len() + r.encoded_len()) as u64;
        if ns.is_some() && memory.in_memory(&r.namespace, &r.key) {
            in_memory +=
                crate::kv::memory::entry_bytes(r) + crate::kv::memory::MEMORY_ENTRY_OVERHEAD_BYTES;
        }
    }
    if ns.is_none() {
        in_memory = memory.memory_bytes();
    }
    let c = memory.counters(ns.as_deref());
    let reads = c.hits + c.misses;
    let hit_rate = if reads == 0 {
        0.0
    } else {
        c.hits as f64 / reads as f64
    };
    let total = rows.len() as u64;
    let (oldest, newest) = if total == 0 { (0, 0) } else { (oldest, newest) };
    Ok(Body::of(
        request.format,
        || {
            json!({
                "total_entries": total,
                "total_hits": c.hits,
                "total_misses": c.misses,
                "hit_rate": hit_rate,
                "evictions": c.evictions,
                "memory_usage_bytes": in_memory,
                "disk_usage_bytes": disk,
                "oldest_entry": timestamp_ms(oldest),
                "newest_entry": timestamp_ms(newest),
            })
        },
        || {
            KvStatsReply {
                total_entries: total,
                total_hits: c.hits,
                total_misses: c.misses,
                hit_rate,
                evictions: c.evictions,
                memory_usage_bytes: in_memory,
                disk_usage_bytes: disk,
                oldest_entry: pb_timestamp(oldest),
                newest_entry: pb_timestamp(newest),
            }
            .encode_to_vec()
        },
    ))
}

/// `kv.cleanup`: removes expired entries now.
pub async fn handle_cleanup(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    let f = Fields::parse(&request.body, &["namespace", "principal"])?;
    let ns = optional_namespace(&f)?;
    let meta = metadata(&request, f.string("principal")?);
    let kv = kv(&context)?;
    let cleanup = |only: Option<usize>| {
        let (ns, meta) = (ns.clone(), meta.clone());
        async move {
            Ok::<_, ServiceError>(
                kv.cleanup(
                    ns.as_deref(),
                    &meta,
                    BULK_ROUND_ENTRIES,
                    BULK_ROUNDS_MAX,
                    only,
                )
                .await?,
            )
        }
    };
    let removed = match (&context.config.cluster, &ns) {
        (None, _) => cleanup(None).await?,
        (Some(_), None) => {
            by_partition(&context, &request, "cairn.v1.kv.cleanup", "removed", |p| {
                cleanup(Some(p))
            })
            .await?
        }
        (Some(_), Some(ns)) => {
            let partition = partition_of(ns);
            let endpoint = "cairn.v1.kv.cleanup";
            match on_owner(&context, &request, endpoint, partition, Via::Whole, |_| {
                cleanup(None)
            })
            .await?
            {
                Ran::Here(removed) => removed,
                Ran::There(headers, body) => return relayed(request.format, &headers, body),
            }
        }
    };
    Ok(Body::of(
        request.format,
        || json!({ "removed": removed }),
        || KvCleanupReply { removed }.encode_to_vec(),
    ))
}

/// `kv.configure`: a namespace's limits and default TTL.
pub async fn handle_configure(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    let request = keyed(request, "kv.configure")?;
    let f = Fields::parse(
        &request.body,
        &[
            "namespace",
            "max_entries",
            "max_bytes",
            "default_ttl",
            "origin",
            "principal",
        ],
    )?;
    let namespace = namespace(&f)?;
    let mut settings = KvNamespaceSettings {
        max_entries: f.u64("max_entries")?.unwrap_or(0),
        max_bytes: f.u64("max_bytes")?.unwrap_or(0),
        default_ttl_ms: ttl(&f, "default_ttl")?.unwrap_or(0),
        ..Default::default()
    };
    if let Some(origin) = f.object("origin", &["subject", "write_through"])? {
        let subject = origin.required("subject")?;
        check_subject("origin.subject", &subject)?;
        settings.origin_subject = subject;
        settings.write_through = origin.bool("write_through")?.unwrap_or(false);
    }
    let meta = metadata(&request, f.string("principal")?);
    let partition = partition_of(&namespace);
    let command = || KvCommand::Configure {
        namespace: namespace.clone(),
        settings: settings.clone(),
    };
    let endpoint = "cairn.v1.kv.configure";
    let reply =
        match execute_on_owner(&context, &request, endpoint, partition, command, meta).await? {
            Ok(reply) => reply,
            Err(relayed) => return Ok(relayed),
        };
    let KvReply::Configured(s) = reply else {
        return Err(ServiceError::internal(
            "kv.configure answered another reply",
        ));
    };
    let origin = (!s.origin_subject.is_empty())
        .then(|| json!({"subject": s.origin_subject, "write_through": s.write_through}));
    Ok(Body::of(
        request.format,
        || {
            json!({
                "namespace": namespace,
                "max_entries": s.max_entries,
                "max_bytes": s.max_bytes,
                "default_ttl_ms": s.default_ttl_ms,
                "origin": origin,
            })
        },
        || s.encode_to_vec(),
    ))
}

/// `kv.key_for`: the canonical key of a function call.
pub async fn handle_key_for(
    _context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    let f = Fields::parse(&request.body, &["function", "args", "kwargs"])?;
    let function = f.required("function")?;
    if function.is_empty() {
        return Err(bad("function", "must not be empty"));
    }
    check_name("function", &function, KEY_MAX_BYTES / 4)?;
    let args = match f.value("args") {
        None => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(other) => return Err(bad("args", format!("must be an array, got {other}"))),
    };
    let kwargs = match f.value("kwargs") {
        None => serde_json::Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => return Err(bad("kwargs", format!("must be an object, got {other}"))),
    };
    let key = key_for(&function, &args, &kwargs);
    Ok(Body::of(
        request.format,
        || json!({ "key": key }),
        || KvKeyForReply { key: key.clone() }.encode_to_vec(),
    ))
}

/// With `batched` durability: fsyncs the store's WAL every `interval`, so
/// an acknowledged set is on disk at most `interval` later (like Redis's
/// `appendfsync everysec`). Stops when the returned handle is aborted.
pub fn start_flusher(
    store: cairn_storage::Store,
    durability: cairn_storage::Durability,
    interval: Duration,
) -> Option<tokio::task::JoinHandle<()>> {
    if durability == cairn_storage::Durability::Sync || interval.is_zero() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let store = store.clone();
            match tokio::task::spawn_blocking(move || store.sync_wal()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "kv flush of the WAL failed"),
                Err(e) => tracing::warn!(error = %e, "kv flush task failed"),
            }
        }
    }))
}

/// The compactor: every `interval`, compacts the `kv/` class (latest event
/// per entry; deletes kept for `retention`), on the store's writer thread
/// (appends wait meanwhile). Stops when the returned handle is aborted.
pub fn start_compactor(
    store: cairn_storage::Store,
    clock: Arc<dyn crate::timing::Clock>,
    interval: Duration,
    retention: Duration,
) -> Option<tokio::task::JoinHandle<()>> {
    if interval.is_zero() {
        return None;
    }
    let policy: Arc<dyn cairn_storage::CompactionPolicy> =
        Arc::new(cairn_storage::views::kv::KvCompactionPolicy {
            tombstone_retention: retention,
        });
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let (store, policy, now) = (store.clone(), policy.clone(), clock.now());
            match tokio::task::spawn_blocking(move || store.compact(policy, now)).await {
                Ok(Ok(stats)) => tracing::debug!(
                    scanned = stats.scanned,
                    superseded = stats.superseded,
                    expired_tombstones = stats.expired_tombstones,
                    "kv class compacted"
                ),
                Ok(Err(e)) => tracing::warn!(error = %e, "kv compaction failed"),
                Err(e) => tracing::warn!(error = %e, "kv compaction task failed"),
            }
        }
    }))
}

/// The sweeper: every `interval`, removes expired entries (bounded
/// rounds). Stops when the returned handle is aborted.
pub fn start_sweeper(
    kv: crate::kv::KvNode,
    interval: Duration,
) -> Option<tokio::task::JoinHandle<()>> {
    if interval.is_zero() {
        return None;
    }
    let kv = Arc::new(kv);
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let meta = cairn_events::envelope::Metadata::command("cairn-sweeper").normalized();
            // A single node sweeps everything; a cluster node the
            // partitions it writes (each partition's owner sweeps it,
            // through the replicated log).
            let parts: Vec<Option<usize>> = if kv.clustered() {
                (0..crate::kv::KV_PARTITIONS)
                    .filter(|p| kv.writes(*p))
                    .map(Some)
                    .collect()
            } else {
                vec![None]
            };
            for only in parts {
                match kv
                    .cleanup(None, &meta, BULK_ROUND_ENTRIES, BULK_ROUNDS_MAX, only)
                    .await
                {
                    Ok(0) => {}
                    Ok(removed) => tracing::info!(removed, "kv sweeper removed expired entries"),
                    // The partition moved meanwhile: its new owner sweeps it.
                    Err(KvError::NotOwner { .. }) => {}
                    Err(e) => tracing::warn!(error = %e, "kv sweeper failed"),
                }
            }
        }
    }))
}

/// Filling one missing entry from a compute or an origin, in a single
/// flight.
#[derive(Debug, Clone)]
struct Fill {
    namespace: String,
    key: String,
    ttl_ms: Option<u64>,
    tags: Vec<String>,
    meta: cairn_events::envelope::Metadata,
}

impl Fill {
    /// The entry: found again (a flight that just finished), or fetched
    /// from `subject` and set; `None` when the callee said 404 (origins).
    async fn run(
        self,
        context: &ServiceContext,
        what: &'static str,
        subject: &str,
        body: Vec<u8>,
    ) -> Result<Option<Found>, ServiceError> {
        let kv = kv(context)?;
        let outcome = kv
            .flights()
            .run(what, &self.namespace, &self.key, || async {
                if let Some(found) = kv.get(&self.namespace, &self.key, false).await? {
                    return Ok(found);
                }
                let answer = flight::call(
                    &context.client,
                    what,
                    subject,
                    body,
                    context.config.kv.origin_timeout,
                )
                .await?;
                let (value, json) = match answer {
                    flight::Answer::Value(value, json) => (value, json),
                    flight::Answer::NotFound => {
                        return Err(ServiceError::not_found(format!(
                            "{what} {subject}: {} not found",
                            full_key(&self.namespace, &self.key)
                        )))
                    }
                };
                // Set meanwhile (by the other kind of flight, or a
                // client): that entry stands.
                if let Some(found) = kv.get(&self.namespace, &self.key, false).await? {
                    return Ok(found);
                }
                let limit = value_limit(context, kv);
                if value.len() > limit.bytes() {
                    return Err(ServiceError {
                        code: 502,
                        message: format!(
                            "{what} {subject}: answered {}",
                            limit.refusal(value.len())
                        ),
                    });
                }
                let partition = partition_of(&self.namespace);
                kv.execute(
                    partition,
                    KvCommand::Set(SetEntry {
                        namespace: self.namespace.clone(),
                        key: self.key.clone(),
                        value,
                        json,
                        tags: self.tags.clone(),
                        ttl_ms: self.ttl_ms,
                    }),
                    self.meta.clone(),
                )
                .await?;
                kv.get(&self.namespace, &self.key, false)
                    .await?
                    .ok_or_else(|| {
                        ServiceError::internal("an entry just set is gone (expired at once?)")
                    })
            })
            .await;
        match outcome {
            Ok(found) => Ok(Some(found)),
            Err(e) if e.code == 404 && what == "origin" => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// `kv.get_or_compute`: the entry, or on a miss the reply of `compute`
/// (one call for all concurrent misses of the entry), cached.
pub async fn handle_get_or_compute(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    let f = Fields::parse(
        &request.body,
        &["namespace", "key", "ttl", "tags", "compute", "principal"],
    )?;
    let namespace = namespace(&f)?;
    let key = key(&f)?;
    let ttl_ms = ttl(&f, "ttl")?;
    let tags = tags(&f, "tags")?;
    let Some(compute) = f.object("compute", &["subject", "body"])? else {
        return Err(bad("compute", "required: {subject, body}"));
    };
    let subject = compute.required("subject")?;
    check_subject("compute.subject", &subject)?;
    let body = serde_json::to_vec(compute.value("body").unwrap_or(&Value::Null))
        .map_err(|e| ServiceError::internal(e.to_string()))?;
    let meta = metadata(&request, f.string("principal")?);
    let kv = kv(&context)?;
    let found = match kv.get(&namespace, &key, true).await? {
        Some(found) => found,
        None => {
            let fill = Fill {
                namespace: namespace.clone(),
                key: key.clone(),
                ttl_ms,
                tags,
                meta,
            };
            // At the partition's owner: one compute for the concurrent
            // misses of every node.
            let partition = partition_of(&namespace);
            let endpoint = "cairn.v1.kv.get_or_compute";
            let ran = on_owner(&context, &request, endpoint, partition, Via::Whole, |_| {
                let (fill, body, subject, context) =
                    (fill.clone(), body.clone(), subject.clone(), &context);
                async move {
                    fill.run(context, "compute", &subject, body)
                        .await?
                        .ok_or_else(|| ServiceError::internal("a compute answered no entry"))
                }
            })
            .await?;
            match ran {
                Ran::Here(found) => found,
                Ran::There(headers, body) => return relayed(request.format, &headers, body),
            }
        }
    };
    Ok(match request.format {
        Format::Json => Body::JsonBytes(entry_json_bytes(&found.row, &found.info)),
        Format::Protobuf => Body::Protobuf(entry_pb(&found.row, &found.info)),
    })
}

/// A subject a request names for cairn to send to: no wildcards, no
/// spaces, no empty token.
fn check_subject(field: &'static str, subject: &str) -> Result<(), ServiceError> {
    if subject.is_empty()
        || subject
            .split('.')
            .any(|t| t.is_empty() || t == "*" || t == ">")
        || subject.contains(['*', '>'])
        || subject.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad(
            field,
            format!("must be a subject without wildcards or spaces, got {subject:?}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(body: &str) -> Incoming {
        Incoming {
            format: Format::Json,
            body: body.as_bytes().to_vec(),
            payload: bytes::Bytes::new(),
            headers: None,
            request: None,
        }
    }

    #[test]
    fn a_key_request_read_directly_answers_as_the_general_way() {
        let long_key = format!(r#"{{"key":"{}"}}"#, "k".repeat(KEY_MAX_BYTES + 1));
        let bodies = [
            r#"{"namespace":"user:1","key":"profile"}"#,
            r#"{"key":"k"}"#,
            r#"{"namespace":null,"key":"k","principal":"alice"}"#,
            r#"{"namespace":"ns","key":"k\u0041","principal":null}"#,
            r#"{"key":"k","key":"j"}"#,
            r#"{"key":"k","colour":"red"}"#,
            r#"{"key":5}"#,
            r#"{"key":null}"#,
            r#"{"namespace":"ns"}"#,
            r#"{"key":""}"#,
            r#"{"namespace":"a\u0007b","key":"k"}"#,
            r#"{"key":"k"} trailing"#,
            r#"["k"]"#,
            r#"["ns","k"]"#,
            r#"[null,"k","p"]"#,
            r#"  {"key":"k"}  "#,
            "",
            "{}",
            &long_key,
        ];
        let shown = |r: Result<(String, String, Option<String>), ServiceError>| {
            r.map_err(|e| (e.code, e.message))
        };
        for body in bodies {
            assert_eq!(
                shown(key_request(&incoming(body))),
                shown(key_fields(body.as_bytes())),
                "{body}"
            );
        }
        assert_eq!(
            shown(key_request(&incoming(r#"{"namespace":"ns","key":"kA"}"#))),
            Ok(("ns".to_owned(), "kA".to_owned(), None))
        );
        assert_eq!(
            shown(key_request(&incoming(r#"{"key":"k","key":"j"}"#))),
            Err((400, "key: duplicate key".to_owned()))
        );
        assert_eq!(
            shown(key_request(&incoming(r#"["ns","k"]"#))),
            Err((400, "request body: must be a JSON object".to_owned()))
        );
    }
}
