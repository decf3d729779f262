//! `cairn.v1.artifact.*`: the artifact cache over NATS.
//!
//! - `artifact.get {url, max_age?, no_cache?, path?}` → `{meta, body?}`:
//!   the artifact through the cache (stored first, then answered from the
//!   store); `meta` is `{url, digest, size, content_type, etag,
//!   last_modified, stored_at, fresh_until, status, http_status, path?}`
//!   with `status` `hit|miss|revalidated|stale`; the body is inline
//!   (`body_base64` in JSON) when it fits in one reply (at most 1 MiB),
//!   else read with `artifact.read`. A request for a URL another request
//!   is downloading (single flight) waits for that download to be stored
//!   — the reply names the stored digest, known only then, whatever the
//!   body's size — and fails with its error (502) when it fails; HTTP
//!   clients are fed such a download as it arrives. `path: true` adds the
//!   body's file on the node's host (bodies stored as files). A `file://`
//!   URL or a local path resolves in place: digest, size and modification
//!   time of the file, `status: "local"`, nothing fetched or stored.
//! - `artifact.read {digest, offset?, length?}` → `{data, offset, size,
//!   eof}` (`data_base64` in JSON): a stored body in pieces that fit the
//!   server's max payload. Only bodies the artifact index refers to.
//! - `artifact.evict {url | digest}` → `{evicted}`: decided by the
//!   writer of the URL's stream (for a digest, of each stream that has
//!   entries of it) — on a cluster, by their owners.
//! - `artifact.list {prefix?, limit?, continue?}` → `{items: [meta],
//!   continue}` in URL order.
//! - `artifact.stats {}` → the counters (JSON in either format), also in
//!   `$SRV.STATS` under the `artifact-stats` endpoint.
//! - `artifact.record` (cluster nodes, between nodes): a write or a
//!   single-flight claim of an artifact stream, sent by the node that
//!   decided it to the stream's owner (see [`crate::artifact::cluster`]).

use std::{io::Read, time::SystemTime};

use base64::Engine as _;
use cairn_events::v1::{self as pb, ArtifactRow};
use cairn_storage::{views::ArtifactsView, BlobStore, Digest};
use http::{HeaderMap, HeaderValue, Method};
use prost::Message as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::{
    codec::{Body, Format},
    context::{blocking, Incoming, ServiceContext},
    fields::Fields,
};
use crate::{
    artifact::{
        cache::{CacheRequest, ServedBody},
        key::{self, Target},
        rules, ArtifactError,
    },
    ServiceError,
};

/// Largest body answered inline by `artifact.get`.
pub const INLINE_MAX_BYTES: u64 = 1 << 20;
/// Default and largest `artifact.list` page.
pub const LIST_DEFAULT: u64 = 100;
/// Largest `artifact.list` page.
pub const LIST_MAX: u64 = 1000;
/// Most entries one `artifact.evict {digest}` evicts per stream.
pub const EVICT_MAX_ENTRIES: usize = crate::artifact::domain::EVICT_DIGEST_MAX_ENTRIES;

fn ts_json(t: Option<&pbjson_types::Timestamp>) -> Value {
    super::timestamp_json(t)
}

fn field(row: &ArtifactRow, name: &str) -> String {
    row.headers
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.value.clone())
        .unwrap_or_default()
}

fn meta_of(row: &ArtifactRow, status: &str, fresh_until: Option<SystemTime>) -> pb::ArtifactMeta {
    pb::ArtifactMeta {
        url: row.key.as_ref().map(|k| k.url.clone()).unwrap_or_default(),
        digest: row.digest.clone(),
        size: row.size,
        content_type: field(row, "content-type"),
        etag: field(row, "etag"),
        last_modified: field(row, "last-modified"),
        stored_at: row.stored_at,
        fresh_until: fresh_until.map(crate::repository::timestamp),
        status: status.to_owned(),
        path: String::new(),
        http_status: row.status,
    }
}

fn meta_json(m: &pb::ArtifactMeta) -> Value {
    let mut v = json!({
        "url": m.url,
        "digest": m.digest,
        "size": m.size,
        "content_type": m.content_type,
        "etag": m.etag,
        "last_modified": m.last_modified,
        "stored_at": ts_json(m.stored_at.as_ref()),
        "fresh_until": ts_json(m.fresh_until.as_ref()),
        "status": m.status,
        "http_status": m.http_status,
    });
    if !m.path.is_empty() {
        v["path"] = json!(m.path);
    }
    v
}

/// How many body bytes fit in one reply of `format`.
fn reply_data_max(context: &ServiceContext, format: Format) -> u64 {
    let room = context.reply_max_bytes().saturating_sub(2048) as u64;
    match format {
        Format::Json => room / 4 * 3,
        Format::Protobuf => room,
    }
}

/// `cairn.v1.artifact.get`.
pub async fn handle_get(context: ServiceContext, request: Incoming) -> Result<Body, ServiceError> {
    let format = request.format;
    let f = Fields::parse(&request.body, &["url", "max_age", "no_cache", "path"])?;
    let url = f.required("url")?;
    let max_age = f.u64("max_age")?;
    let no_cache = f.bool("no_cache")?.unwrap_or(false);
    let want_path = f.bool("path")?.unwrap_or(false);
    let cache = context.artifacts.clone();
    let target = key::parse_target("url", &url, &cache.config().allow)?;
    let url = match target {
        Target::Local(path) => return local(format, path, url).await,
        Target::Remote(url) => url,
    };
    let mut headers = HeaderMap::new();
    let mut directives = Vec::new();
    if let Some(age) = max_age {
        directives.push(format!("max-age={age}"));
    }
    if no_cache {
        directives.push("no-cache".to_owned());
    }
    if !directives.is_empty() {
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_str(&directives.join(", ")).expect("ascii"),
        );
    }
    let served = cache
        .serve(CacheRequest {
            method: Method::GET,
            url: url.clone(),
            headers: headers.clone(),
            body: None,
            proxy: false,
            stream: false,
            upstream: String::new(),
        })
        .await?;
    let Some(row) = served.row else {
        // Not storable: an error status, or a response the cache may not keep.
        if let ServedBody::Stream(_) = served.body {
            let code = if served.status == http::StatusCode::NOT_FOUND {
                404
            } else {
                502
            };
            return Err(ServiceError {
                code,
                message: format!(
                    "origin answered {} for {url} and the response is not storable",
                    served.status.as_u16()
                ),
            });
        }
        return Err(ServiceError::internal(format!("no stored entry for {url}")));
    };
    let now = context.config.clock.now();
    let uri: http::Uri = url
        .as_str()
        .parse()
        .map_err(|e: http::uri::InvalidUri| ServiceError::bad_field("url", e))?;
    let policy = rules::policy_of(&row, &rules::own_request(Method::GET, uri, &headers));
    let fresh_until = now + policy.time_to_live(now);
    let mut meta = meta_of(&row, served.how.as_str(), Some(fresh_until));
    let digest = Digest::parse(&row.digest)
        .ok_or_else(|| ServiceError::internal(format!("stored digest {:?}", row.digest)))?;
    if want_path {
        if let Some(path) = context.store.blob_file(&digest) {
            meta.path = path.display().to_string();
        }
    }
    let inline = row.size <= INLINE_MAX_BYTES.min(reply_data_max(&context, format));
    let body = if inline {
        let store = context.store.clone();
        blocking(move || {
            store
                .get(&digest)?
                .ok_or_else(|| ServiceError::not_found(format!("body {digest} is gone")))
        })
        .await?
    } else {
        Vec::new()
    };
    Ok(Body::of(
        format,
        || {
            let mut v = json!({"meta": meta_json(&meta), "body_inline": inline});
            if inline {
                v["body_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(&body));
            }
            v
        },
        || {
            pb::ArtifactGetReply {
                meta: Some(meta.clone()),
                body: body.clone(),
                body_inline: inline,
            }
            .encode_to_vec()
        },
    ))
}

/// A local file: its digest and metadata, read in place.
async fn local(
    format: Format,
    path: std::path::PathBuf,
    url: String,
) -> Result<Body, ServiceError> {
    let (digest, size, modified) = blocking(move || {
        let meta = std::fs::metadata(&path)
            .map_err(|e| ServiceError::not_found(format!("url: {}: {e}", path.display())))?;
        if !meta.is_file() {
            return Err(ServiceError::bad_field(
                "url",
                format!("{} is not a file", path.display()),
            ));
        }
        let mut file = std::fs::File::open(&path)
            .map_err(|e| ServiceError::not_found(format!("url: {}: {e}", path.display())))?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| ServiceError::internal(format!("reading {}: {e}", path.display())))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hash.update(&buf[..n]);
        }
        Ok((Digest(hash.finalize().into()), size, meta.modified().ok()))
    })
    .await?;
    let meta = pb::ArtifactMeta {
        url,
        digest: digest.to_string(),
        size,
        last_modified: modified.map(httpdate::fmt_http_date).unwrap_or_default(),
        status: "local".to_owned(),
        ..Default::default()
    };
    Ok(Body::of(
        format,
        || json!({"meta": meta_json(&meta), "body_inline": false}),
        || {
            pb::ArtifactGetReply {
                meta: Some(meta.clone()),
                body: Vec::new(),
                body_inline: false,
            }
            .encode_to_vec()
        },
    ))
}

/// `cairn.v1.artifact.read`.
pub async fn handle_read(context: ServiceContext, request: Incoming) -> Result<Body, ServiceError> {
    let format = request.format;
    let f = Fields::parse(&request.body, &["digest", "offset", "length"])?;
    let text = f.required("digest")?;
    let digest = Digest::parse(&text)
        .ok_or_else(|| ServiceError::bad_field("digest", "not sha256:<64 hex>"))?;
    let offset = f.u64("offset")?.unwrap_or(0);
    let max = reply_data_max(&context, format);
    let length = f.u64("length")?.unwrap_or(max).min(max);
    let store = context.store.clone();
    let (data, size) = blocking(move || {
        let name = digest.to_string();
        let Some(uses) = ArtifactsView::blob_use(&store, &name)? else {
            return Err(ServiceError::not_found(format!(
                "no stored artifact has body {name}"
            )));
        };
        if offset > uses.size {
            return Err(ServiceError::bad_field(
                "offset",
                format!("{offset} is past the end ({} bytes)", uses.size),
            ));
        }
        let end = offset.saturating_add(length).min(uses.size);
        let mut reader = store
            .read_range(&digest, offset..end)?
            .ok_or_else(|| ServiceError::not_found(format!("body {name} is gone")))?;
        let mut data = Vec::with_capacity((end - offset) as usize);
        reader
            .read_to_end(&mut data)
            .map_err(|e| ServiceError::internal(format!("reading body {name}: {e}")))?;
        Ok((data, uses.size))
    })
    .await?;
    let eof = offset + data.len() as u64 >= size;
    Ok(Body::of(
        format,
        || {
            json!({
                "data_base64": base64::engine::general_purpose::STANDARD.encode(&data),
                "offset": offset,
                "size": size,
                "eof": eof,
            })
        },
        || {
            pb::ArtifactReadReply {
                data: data.clone(),
                offset,
                size,
                eof,
            }
            .encode_to_vec()
        },
    ))
}

/// `cairn.v1.artifact.stats`.
pub async fn handle_stats(
    context: ServiceContext,
    _request: Incoming,
) -> Result<Body, ServiceError> {
    let store = context.store.clone();
    let totals = blocking(move || Ok(ArtifactsView::totals(&store)?)).await?;
    let mut v = context.artifacts.stats().to_json();
    v["entries"] = json!(totals.entries);
    v["bytes"] = json!(totals.bytes);
    Ok(Body::Json(v))
}

/// `cairn.v1.artifact.evict`.
pub async fn handle_evict(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    let format = request.format;
    let f = Fields::parse(&request.body, &["url", "digest"])?;
    let url = f.string("url")?.filter(|u| !u.is_empty());
    let digest = f.string("digest")?.filter(|d| !d.is_empty());
    let evicted = match (url, digest) {
        (Some(url), None) => {
            let target = key::parse_target("url", &url, &["*".to_owned()])?;
            let Target::Remote(url) = target else {
                return Err(ArtifactError::bad_url("url", "a local file is not stored").into());
            };
            context.artifacts.evict_url(url.as_str(), "request").await?
        }
        (None, Some(digest)) => {
            let digest = Digest::parse(&digest)
                .ok_or_else(|| ServiceError::bad_field("digest", "not sha256:<64 hex>"))?
                .to_string();
            context.artifacts.evict_digest(&digest, "request").await?
        }
        _ => {
            return Err(ServiceError::bad_request(
                "give exactly one of url and digest",
            ))
        }
    };
    Ok(Body::of(
        format,
        || json!({"evicted": evicted}),
        || pb::ArtifactEvictReply { evicted }.encode_to_vec(),
    ))
}

/// `cairn.v1.artifact.record` (between cluster nodes): a record or a
/// claim for the stream's owner, run here when this node writes the
/// stream.
pub async fn handle_record(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    let format = request.format;
    let record: pb::ArtifactRecordRequest = serde_json::from_slice(&request.body)
        .map_err(|e| ServiceError::bad_field("request body", e))?;
    let forwarded = request
        .headers
        .as_ref()
        .is_some_and(|h| h.get(super::cluster::FORWARDED_HEADER).is_some());
    // Every record a node sends carries its idempotency key. Its digest
    // is taken over the record as this build serialises it — what a node
    // sends, and what this node sends on if it forwards it — so every
    // attempt has the same, whoever serialised the body first.
    let key = super::idempotency::request_key(
        crate::artifact::cluster::RECORD_ENDPOINT_NAME,
        request.headers.as_ref(),
        &request.body,
    )?
    .map(|key| crate::artifact::cluster::record_key_with(&record, key.id))
    .transpose()?;
    let reply = context
        .artifacts
        .apply_record(record, forwarded, key.as_ref())
        .await?;
    Ok(Body::of(
        format,
        || serde_json::to_value(&reply).unwrap_or_default(),
        || reply.encode_to_vec(),
    ))
}

/// `cairn.v1.artifact.list`.
pub async fn handle_list(context: ServiceContext, request: Incoming) -> Result<Body, ServiceError> {
    let format = request.format;
    let f = Fields::parse(&request.body, &["prefix", "limit", "continue"])?;
    let prefix = f.string("prefix")?.unwrap_or_default();
    if prefix.len() > key::URL_MAX_BYTES {
        return Err(ServiceError::bad_field("prefix", "longer than 8192 bytes"));
    }
    let limit = f.u64_in("limit", 1, LIST_MAX)?.unwrap_or(LIST_DEFAULT) as usize;
    let after =
        match f.string("continue")?.filter(|c| !c.is_empty()) {
            Some(c) => Some(hex::decode(&c).map_err(|_| {
                ServiceError::bad_field("continue", "not a token this endpoint gave")
            })?),
            None => None,
        };
    let store = context.store.clone();
    let rows = blocking(move || {
        Ok(ArtifactsView::list(
            &store,
            "GET",
            &prefix,
            after.as_deref(),
            limit,
        )?)
    })
    .await?;
    let next = if rows.len() == limit {
        rows.last().map(|(k, _)| hex::encode(k)).unwrap_or_default()
    } else {
        String::new()
    };
    let items: Vec<pb::ArtifactMeta> = rows
        .iter()
        .map(|(_, r)| meta_of(r, "stored", None))
        .collect();
    Ok(Body::of(
        format,
        || json!({"items": items.iter().map(meta_json).collect::<Vec<_>>(), "continue": next}),
        || {
            pb::ArtifactListReply {
                items: items.clone(),
                r#continue: next.clone(),
            }
            .encode_to_vec()
        },
    ))
}
