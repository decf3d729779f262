//! `cairn.v1.pkgrev.*` reads: list, get, resources. Served from the views
//! (and the blob store); they never touch Git.
//!
//! A package revision in replies: `{"name","namespace","repository","path",
//! "package","workspace","revision","lifecycle","latest","commit",
//! "resource_version","published_by","published_at","tasks":[…],"labels":{…}}`.

use std::collections::BTreeMap;

use cairn_events::v1::{self as pb, PackageRevisionRow};
use cairn_storage::{blob::Digest, views::PackageRevisionsView, BlobStore, EventLog};
use prost::Message as _;
use serde_json::{json, Map, Value};

use super::{
    blocking,
    codec::{Body, Format},
    fields::Fields,
    timestamp_json, validate, Incoming, ServiceContext,
};
use crate::ServiceError;

/// Default page size of `pkgrev.list`.
pub const DEFAULT_LIST_LIMIT: u64 = 500;
/// Largest page of `pkgrev.list`.
pub const MAX_LIST_LIMIT: u64 = 5000;
/// Fields a `pkgrev.list` request may carry.
pub const LIST_FIELDS: &[&str] = &[
    "namespace",
    "repository",
    "path",
    "package",
    "workspace",
    "revision",
    "lifecycle",
    "labels",
    "latest",
    "limit",
    "continue",
];

/// Rows read from the view per scan step while filtering.
const SCAN_PAGE: usize = 1024;

/// The JSON form of a package revision, serialised straight from the row
/// (no intermediate `Value`: list pages render thousands of these).
#[derive(serde::Serialize)]
struct RevisionJson<'a> {
    name: &'a str,
    namespace: &'a str,
    repository: &'a str,
    path: &'a str,
    package: &'a str,
    workspace: &'a str,
    revision: i64,
    lifecycle: &'a str,
    latest: bool,
    commit: &'a str,
    resource_version: String,
    published_by: Option<&'a str>,
    published_at: Value,
    tasks: Vec<TaskJson<'a>>,
    labels: &'a BTreeMap<String, String>,
}

/// A task: its annotation JSON as recorded, or `{"type": …}` when that is
/// not valid JSON.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum TaskJson<'a> {
    Raw(&'a serde_json::value::RawValue),
    Type { r#type: &'a str },
}

fn revision_view<'a>(
    row: &'a PackageRevisionRow,
    empty: &'a pb::PackageRevision,
) -> RevisionJson<'a> {
    let r = row.revision.as_ref().unwrap_or(empty);
    RevisionJson {
        name: &r.name,
        namespace: &row.namespace,
        repository: &row.repository,
        path: &r.path,
        package: &r.package,
        workspace: &r.workspace,
        revision: r.revision,
        lifecycle: &r.lifecycle,
        latest: r.latest,
        commit: &r.commit,
        resource_version: row.updated_seq.to_string(),
        published_by: (!r.published_by.is_empty()).then_some(r.published_by.as_str()),
        published_at: timestamp_json(r.published_at.as_ref()),
        tasks: r
            .tasks
            .iter()
            .map(
                |t| match serde_json::from_str::<&serde_json::value::RawValue>(&t.raw) {
                    Ok(raw) => TaskJson::Raw(raw),
                    Err(_) => TaskJson::Type { r#type: &t.r#type },
                },
            )
            .collect(),
        labels: &r.labels,
    }
}

/// The JSON form of a package revision row, serialised.
pub fn revision_json_bytes(row: &PackageRevisionRow) -> Vec<u8> {
    let empty = pb::PackageRevision::default();
    serde_json::to_vec(&revision_view(row, &empty)).unwrap_or_default()
}

/// The JSON form of a package revision row.
pub fn revision_json(row: &PackageRevisionRow) -> Value {
    let empty = pb::PackageRevision::default();
    serde_json::to_value(revision_view(row, &empty)).unwrap_or(Value::Null)
}

/// A validated `pkgrev.list` filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only this repository (needs no namespace).
    pub repository: Option<String>,
    /// Only this package path.
    pub path: Option<String>,
    /// Only this package.
    pub package: Option<String>,
    /// Only this workspace.
    pub workspace: Option<String>,
    /// Only this revision number.
    pub revision: Option<i64>,
    /// Only these lifecycles.
    pub lifecycle: Option<Vec<String>>,
    /// Only revisions carrying all these labels.
    pub labels: BTreeMap<String, String>,
    /// Only latest (true) or only not latest (false).
    pub latest: Option<bool>,
}

const LIFECYCLES: [&str; 4] = ["Draft", "Proposed", "Published", "DeletionProposed"];

impl Filter {
    /// Parses the filter fields of `f`.
    pub fn parse(f: &Fields) -> Result<Self, ServiceError> {
        let namespace = f.string("namespace")?;
        if let Some(ns) = &namespace {
            validate::dns_label(&f.path("namespace"), ns)?;
        }
        let repository = f.string("repository")?;
        if let Some(r) = &repository {
            validate::dns_label(&f.path("repository"), r)?;
        }
        let revision = match f.value("revision") {
            None => None,
            // (proto3 JSON, used for protobuf requests, renders int64 as a string)
            Some(v) => Some(
                v.as_i64()
                    .or_else(|| v.as_str()?.parse().ok())
                    .filter(|n| *n >= -1)
                    .ok_or_else(|| {
                        ServiceError::bad_field(
                            &f.path("revision"),
                            format!("must be an integer of at least -1, got {v}"),
                        )
                    })?,
            ),
        };
        let lifecycle = f.strings("lifecycle")?;
        if let Some(ls) = &lifecycle {
            if let Some(bad) = ls.iter().find(|l| !LIFECYCLES.contains(&l.as_str())) {
                return Err(ServiceError::bad_field(
                    &f.path("lifecycle"),
                    format!(
                        "unknown lifecycle {bad:?}, expected one of: {}",
                        LIFECYCLES.join(", ")
                    ),
                ));
            }
        }
        Ok(Self {
            namespace,
            repository,
            path: f.string("path")?.map(|p| p.trim_matches('/').to_owned()),
            package: f.string("package")?,
            workspace: f.string("workspace")?,
            revision,
            lifecycle,
            labels: f.string_map("labels")?.unwrap_or_default(),
            latest: f.bool("latest")?,
        })
    }

    /// Whether `row` passes.
    pub fn matches(&self, row: &PackageRevisionRow) -> bool {
        let Some(r) = row.revision.as_ref() else {
            return false;
        };
        self.namespace.as_ref().is_none_or(|v| *v == row.namespace)
            && self
                .repository
                .as_ref()
                .is_none_or(|v| *v == row.repository)
            && self.path.as_ref().is_none_or(|v| *v == r.path)
            && self.package.as_ref().is_none_or(|v| *v == r.package)
            && self.workspace.as_ref().is_none_or(|v| *v == r.workspace)
            && self.revision.is_none_or(|v| v == r.revision)
            && self
                .lifecycle
                .as_ref()
                .is_none_or(|ls| ls.contains(&r.lifecycle))
            && self.labels.iter().all(|(k, v)| r.labels.get(k) == Some(v))
            && self.latest.is_none_or(|v| v == r.latest)
    }
}

/// A page: `(key, row)` items, the key to continue after (none at the end),
/// and the log position the page reflects (for list-then-watch).
pub type Page = (Vec<(Vec<u8>, PackageRevisionRow)>, Option<Vec<u8>>, u64);

/// One page of a filtered list: items, the continue token, and the log
/// position the page reflects (for list-then-watch).
pub fn list(
    store: &cairn_storage::Store,
    filter: &Filter,
    after: Option<Vec<u8>>,
    limit: usize,
) -> Result<Page, ServiceError> {
    // The position first: every row read after it reflects at least it.
    let seq = store.last_seq()?;
    // Scan in steps of the page size (bounded): an unfiltered page reads
    // exactly the rows it returns.
    let step = limit.clamp(64, SCAN_PAGE);
    let mut items = Vec::new();
    let mut cursor = after;
    loop {
        let page = PackageRevisionsView::list(
            store,
            filter.namespace.as_deref(),
            filter.repository.as_deref(),
            cursor.as_deref(),
            step,
        )?;
        let exhausted = page.len() < step;
        for (key, row) in page {
            cursor = Some(key.clone());
            if filter.matches(&row) {
                items.push((key, row));
                if items.len() == limit {
                    return Ok((items, cursor, seq));
                }
            }
        }
        if exhausted {
            return Ok((items, None, seq));
        }
    }
}

fn encode_continue(key: &[u8]) -> String {
    hex::encode(key)
}

fn decode_continue(token: &str) -> Result<Vec<u8>, ServiceError> {
    hex::decode(token)
        .map_err(|_| ServiceError::bad_field("continue", "not a token from a previous reply"))
}

/// `cairn.v1.pkgrev.list`.
pub async fn handle_list(context: ServiceContext, request: Incoming) -> Result<Body, ServiceError> {
    let (format, body) = (request.format, &request.body);
    let f = Fields::parse(body, LIST_FIELDS)?;
    let filter = Filter::parse(&f)?;
    let limit = f
        .u64_in("limit", 1, MAX_LIST_LIMIT)?
        .unwrap_or(DEFAULT_LIST_LIMIT) as usize;
    let after = f
        .string("continue")?
        .filter(|t| !t.is_empty())
        .map(|t| decode_continue(&t))
        .transpose()?;
    let store = context.store.clone();
    let max = context.reply_max_bytes();
    // Read, filter, render and cut the page off the async threads.
    blocking(move || {
        let (items, next, seq) = list(&store, &filter, after, limit)?;
        let mut token = next.map(|k| encode_continue(&k));
        let mut size = 64;
        let mut sent = 0;
        let mut rendered: Vec<Vec<u8>> = Vec::new();
        for (i, (_, row)) in items.iter().enumerate() {
            let item = (format == Format::Json).then(|| revision_json_bytes(row));
            size += item.as_ref().map_or(row.encoded_len() + 4, |b| b.len() + 1);
            if size > max && i > 0 {
                // Cut where the page still fits the server's max payload;
                // continue after the last item sent.
                token = Some(encode_continue(&items[i - 1].0));
                break;
            }
            rendered.extend(item);
            sent = i + 1;
        }
        Ok(match format {
            Format::Json => {
                let mut page = Vec::with_capacity(size + 64);
                page.extend_from_slice(b"{\"items\":[");
                for (i, item) in rendered.iter().enumerate() {
                    if i > 0 {
                        page.push(b',');
                    }
                    page.extend_from_slice(item);
                }
                page.extend_from_slice(b"],\"continue\":");
                page.extend_from_slice(&serde_json::to_vec(&token).unwrap_or_default());
                page.extend_from_slice(format!(",\"seq\":{seq}}}").as_bytes());
                Body::JsonBytes(page)
            }
            Format::Protobuf => Body::Protobuf(
                pb::PkgRevList {
                    items: items.into_iter().take(sent).map(|(_, row)| row).collect(),
                    r#continue: token.unwrap_or_default(),
                    seq,
                }
                .encode_to_vec(),
            ),
        })
    })
    .await
}

fn parse_name(payload: &[u8]) -> Result<(String, String), ServiceError> {
    let f = Fields::parse(payload, &["namespace", "name"])?;
    let namespace = f.required("namespace")?;
    validate::dns_label("namespace", &namespace)?;
    let name = f.required("name")?;
    if name.is_empty() || name.len() > 253 || name.chars().any(|c| c.is_control() || c == '/') {
        return Err(ServiceError::bad_field(
            "name",
            format!("{name:?} is not a package revision name"),
        ));
    }
    Ok((namespace, name))
}

fn get_row(
    store: &cairn_storage::Store,
    namespace: &str,
    name: &str,
) -> Result<PackageRevisionRow, ServiceError> {
    PackageRevisionsView::get(store, namespace, name)?.ok_or_else(|| {
        ServiceError::not_found(format!("package revision {namespace}/{name} not found"))
    })
}

/// `cairn.v1.pkgrev.get`.
pub async fn handle_get(context: ServiceContext, request: Incoming) -> Result<Body, ServiceError> {
    let (format, body) = (request.format, &request.body);
    let (namespace, name) = parse_name(body)?;
    let store = context.store.clone();
    let row = blocking(move || get_row(&store, &namespace, &name)).await?;
    Ok(Body::of(
        format,
        || revision_json(&row),
        || row.encode_to_vec(),
    ))
}

/// `cairn.v1.pkgrev.resources` → `{"resources":{"path":"content",…}}`;
/// files that are not UTF-8 come base64-encoded under `"binary"`.
pub async fn handle_resources(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    let (format, body) = (request.format, &request.body);
    let (namespace, name) = parse_name(body)?;
    let store = context.store.clone();
    let max = context.reply_max_bytes();
    let files = blocking(move || {
        let row = get_row(&store, &namespace, &name)?;
        let mut files = BTreeMap::new();
        let mut size = 64;
        for (path, digest) in row.revision.unwrap_or_default().resources {
            let d = Digest::parse(&digest)
                .ok_or_else(|| ServiceError::internal(format!("{path}: bad digest")))?;
            let content = store
                .get(&d)?
                .ok_or_else(|| ServiceError::internal(format!("{path}: blob {d} missing")))?;
            size += path.len() + content.len() * 2;
            if size > max {
                return Err(ServiceError {
                    code: 413,
                    message: format!("resources of {name} exceed one reply ({max} bytes)"),
                });
            }
            files.insert(path, content);
        }
        Ok(files)
    })
    .await?;
    Ok(Body::of(
        format,
        || {
            let mut text = Map::new();
            let mut binary = Map::new();
            for (path, content) in &files {
                match std::str::from_utf8(content) {
                    Ok(s) => text.insert(path.clone(), Value::String(s.to_owned())),
                    Err(_) => binary.insert(path.clone(), Value::String(base64_encode(content))),
                };
            }
            let mut reply = json!({ "resources": text });
            if !binary.is_empty() {
                reply["binary"] = Value::Object(binary);
            }
            reply
        },
        || {
            pb::PkgRevResources {
                resources: files.clone(),
            }
            .encode_to_vec()
        },
    ))
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use cairn_events::v1::PackageRevision;

    use super::*;

    #[test]
    fn filters_match_every_field() {
        let row = PackageRevisionRow {
            namespace: "ns".into(),
            repository: "r".into(),
            revision: Some(PackageRevision {
                name: "r.a.v1".into(),
                package: "a".into(),
                workspace: "v1".into(),
                revision: 1,
                lifecycle: "Published".into(),
                labels: [("tier".to_string(), "base".to_string())]
                    .into_iter()
                    .collect(),
                latest: true,
                ..Default::default()
            }),
            updated_seq: 3,
        };
        let parse =
            |body: &str| Filter::parse(&Fields::parse(body.as_bytes(), LIST_FIELDS).unwrap());
        assert!(parse(r#"{"package":"a","revision":1,"lifecycle":["Published"],"labels":{"tier":"base"},"latest":true}"#).unwrap().matches(&row));
        assert!(!parse(r#"{"lifecycle":["Draft"]}"#).unwrap().matches(&row));
        assert!(!parse(r#"{"labels":{"tier":"app"}}"#).unwrap().matches(&row));
        assert!(!parse(r#"{"revision":-1}"#).unwrap().matches(&row));
        assert_eq!(parse(r#"{"lifecycle":["Done"]}"#).unwrap_err().message, "lifecycle: unknown lifecycle \"Done\", expected one of: Draft, Proposed, Published, DeletionProposed");
        assert_eq!(
            parse(r#"{"revision":-2}"#).unwrap_err().message,
            "revision: must be an integer of at least -1, got -2"
        );
    }
}
