//! `cairn.v1.pkgrev.*` reads: list, get (`resources` is
//! [`super::resources`]). Served from the views; they never touch Git.
//!
//! A package revision in replies: `{"name","namespace","repository","path",
//! "package","workspace","revision","lifecycle","latest","commit",
//! "resource_version","published_by","published_at","tasks":[…],"labels":{…},
//! "annotations":{…}}` (`annotations` only when there are some);
//! `pkgrev.get` adds `"lock":{"type":"git","git":{"repo","directory","ref",
//! "commit"}}`, where the revision is in Git (Porch's self lock; see
//! [`crate::origin::kptfile`]), computed at reply time from the
//! repository's spec (protobuf: `PackageRevisionRow.lock`).

use std::ops::ControlFlow;

use cairn_events::{
    revision::{revision_json, Lifecycle},
    v1::{self as pb, PackageRevisionRow},
};
use cairn_storage::{
    blob::Digest,
    views::{
        package_revision_list::ListedRevision, PackageRevisionListView, PackageRevisionsView,
        RepositoriesView,
    },
    BlobStore, EventLog, ViewRead,
};
use prost::Message as _;

use super::{
    codec::{Body, Format},
    context::{blocking, Incoming, ServiceContext},
    fields::Fields,
    validate,
};
use crate::{origin::kptfile::lock_of, revision_filter::Filter, ServiceError};

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
    "annotations",
    "latest",
    "limit",
    "continue",
];

/// A filter is domain data ([`crate::revision_filter`]); reading one from a
/// request is the NATS edge's, so it is defined here.
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
        let lifecycle = f
            .strings("lifecycle")?
            .map(|ls| {
                ls.iter()
                    .map(|l| {
                        Lifecycle::parse(l).ok_or_else(|| {
                            ServiceError::bad_field(
                                &f.path("lifecycle"),
                                format!(
                                    "unknown lifecycle {l:?}, expected one of: {}",
                                    Lifecycle::ALL.map(Lifecycle::as_str).join(", ")
                                ),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        Ok(Self {
            namespace,
            repository,
            path: f.string("path")?.map(|p| p.trim_matches('/').to_owned()),
            package: f.string("package")?,
            workspace: f.string("workspace")?,
            revision,
            lifecycle,
            labels: f.string_map("labels")?.unwrap_or_default(),
            annotations: f.string_map("annotations")?.unwrap_or_default(),
            latest: f.bool("latest")?,
        })
    }
}

/// Reads one page of `filter`'s listing, after key `after` (exclusive):
/// offers each matching revision to `take`, at most `limit` of them, until
/// `take` says it does not fit (the page ends before it; `take` must accept
/// the first). Returns the key to continue after (none at the end of the
/// listing) and the log position the page reflects (for list-then-watch).
pub fn list_page(
    store: &(impl ViewRead + ?Sized),
    filter: &Filter,
    after: Option<&[u8]>,
    limit: usize,
    mut take: impl FnMut(&ListedRevision<'_>) -> Result<bool, ServiceError>,
) -> Result<(Option<Vec<u8>>, u64), ServiceError> {
    // The position first: every row read after it reflects at least it.
    let seq = store.read_seq()?;
    let mut taken = 0;
    let mut last_taken = Vec::new();
    let mut next = None;
    PackageRevisionListView::scan::<ServiceError>(store, &filter.scope(), after, |row| {
        if filter.needs_head() && !filter.matches_head(&row.listing()?) {
            return Ok(ControlFlow::Continue(()));
        }
        if !take(&row)? {
            next = Some(std::mem::take(&mut last_taken));
            return Ok(ControlFlow::Break(()));
        }
        taken += 1;
        if taken >= limit {
            next = Some(row.key.to_vec());
            return Ok(ControlFlow::Break(()));
        }
        last_taken.clear();
        last_taken.extend_from_slice(row.key);
        Ok(ControlFlow::Continue(()))
    })?;
    Ok((next, seq))
}

fn encode_continue(key: &[u8]) -> String {
    hex::encode(key)
}

fn decode_continue(token: &str) -> Result<Vec<u8>, ServiceError> {
    hex::decode(token)
        .map_err(|_| ServiceError::bad_field("continue", "not a token from a previous reply"))
}

/// Bytes a page needs after its items when it continues after `key`:
/// `],"continue":"<hex key>","seq":<u64>}` and some slack.
fn page_tail(key: &[u8]) -> usize {
    64 + 2 * key.len()
}

/// `cairn.v1.pkgrev.list`.
///
/// A JSON page is the listing view's pre-rendered items joined together,
/// cut where the next item would make the reply larger than the server's
/// max payload (then `continue` points after the last item sent). Protobuf
/// pages carry each item's full row.
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
    let pages = context.pages.clone();
    let request_key = (format == Format::Json).then(|| request.body.clone());
    if let Some(key) = &request_key {
        if let Some(page) = pages.get(key, store.last_seq()?) {
            return Ok(Body::JsonBytes(page));
        }
    }
    // Read, filter and join the page off the async threads.
    blocking(move || match format {
        Format::Json => {
            let mut page = Vec::with_capacity(max.min(256 * 1024));
            page.extend_from_slice(b"{\"items\":[");
            let (next, seq) = list_page(&store, &filter, after.as_deref(), limit, |row| {
                let first = page.last() == Some(&b'[');
                if !first && page.len() + 1 + row.json.len() + page_tail(row.key) > max {
                    return Ok(false);
                }
                if !first {
                    page.push(b',');
                }
                page.extend_from_slice(row.json);
                Ok(true)
            })?;
            page.extend_from_slice(b"],\"continue\":");
            match next {
                Some(key) => {
                    page.push(b'"');
                    page.extend_from_slice(encode_continue(&key).as_bytes());
                    page.push(b'"');
                }
                None => page.extend_from_slice(b"null"),
            }
            page.extend_from_slice(format!(",\"seq\":{seq}}}").as_bytes());
            let page = bytes::Bytes::from(page);
            if let Some(key) = request_key {
                pages.put(key, seq, page.clone());
            }
            Ok(Body::JsonBytes(page))
        }
        Format::Protobuf => {
            let mut items = Vec::new();
            let mut size = 0;
            let (next, seq) = list_page(&store, &filter, after.as_deref(), limit, |row| {
                let item = get_row(&store, row.namespace, row.name)?;
                let len = item.encoded_len() + 8;
                if !items.is_empty() && size + len + page_tail(row.key) > max {
                    return Ok(false);
                }
                size += len;
                items.push(item);
                Ok(true)
            })?;
            Ok(Body::Protobuf(
                pb::PkgRevList {
                    items,
                    r#continue: next.map(|k| encode_continue(&k)).unwrap_or_default(),
                    seq,
                }
                .encode_to_vec(),
            ))
        }
    })
    .await
}

fn parse_name(payload: &[u8]) -> Result<(String, String), ServiceError> {
    let f = Fields::parse(payload, &["namespace", "name"])?;
    let namespace = f.required("namespace")?;
    validate::dns_label("namespace", &namespace)?;
    let name = revision_name(&f, "name")?;
    Ok((namespace, name))
}

/// The package revision name in field `field` of `f` (required).
pub(super) fn revision_name(f: &Fields, field: &str) -> Result<String, ServiceError> {
    let name = f.required(field)?;
    if name.is_empty()
        || name.len() > crate::repository::naming::OBJECT_NAME_MAX_BYTES
        || name.chars().any(|c| c.is_control() || c == '/')
    {
        return Err(ServiceError::bad_field(
            field,
            format!("{name:?} is not a package revision name"),
        ));
    }
    Ok(name)
}

/// The row of revision `namespace/name`; 404 when there is none.
pub(super) fn get_row(
    store: &(impl ViewRead + ?Sized),
    namespace: &str,
    name: &str,
) -> Result<PackageRevisionRow, ServiceError> {
    PackageRevisionsView::get(store, namespace, name)?.ok_or_else(|| {
        ServiceError::not_found(format!("package revision {namespace}/{name} not found"))
    })
}

/// `cairn.v1.pkgrev.get`: the row, with its `lock` (Porch's self lock,
/// [`crate::origin::kptfile::lock_of`]) computed from its repository's
/// spec as it is now.
pub async fn handle_get(context: ServiceContext, request: Incoming) -> Result<Body, ServiceError> {
    let (format, body) = (request.format, &request.body);
    let (namespace, name) = parse_name(body)?;
    let store = context.store.clone();
    let row = blocking(move || {
        let mut row = get_row(&store, &namespace, &name)?;
        let spec = RepositoriesView::get(&store, &namespace, &row.repository)?.and_then(|r| r.spec);
        if let (Some(spec), Some(revision)) = (spec, &row.revision) {
            row.lock = Some(lock_of(&spec.git.unwrap_or_default(), revision));
        }
        Ok::<_, ServiceError>(row)
    })
    .await?;
    Ok(Body::of(
        format,
        || {
            let mut json = revision_json(&row);
            if let (Some(object), Some(lock)) = (json.as_object_mut(), &row.lock) {
                object.insert(
                    "lock".to_owned(),
                    serde_json::to_value(lock).unwrap_or_default(),
                );
            }
            json
        },
        || row.encode_to_vec(),
    ))
}

/// The content of resource `path` of a revision, stored as `digest`.
pub fn resource(store: &dyn BlobStore, path: &str, digest: &str) -> Result<Vec<u8>, ServiceError> {
    let d = Digest::parse(digest)
        .ok_or_else(|| ServiceError::internal(format!("{path}: bad digest")))?;
    store
        .get(&d)?
        .ok_or_else(|| ServiceError::internal(format!("{path}: blob {d} missing")))
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
                annotations: [("test-annotation".to_string(), "true".to_string())].into(),
                latest: true,
                ..Default::default()
            }),
            updated_seq: 3,
            lock: None,
        };
        let parse =
            |body: &str| Filter::parse(&Fields::parse(body.as_bytes(), LIST_FIELDS).unwrap());
        assert!(parse(r#"{"package":"a","revision":1,"lifecycle":["Published"],"labels":{"tier":"base"},"latest":true}"#).unwrap().matches(&row));
        assert!(!parse(r#"{"lifecycle":["Draft"]}"#).unwrap().matches(&row));
        assert!(!parse(r#"{"labels":{"tier":"app"}}"#).unwrap().matches(&row));
        assert!(!parse(r#"{"revision":-1}"#).unwrap().matches(&row));
        assert!(
            parse(r#"{"annotations":{"test-annotation":"true"},"labels":{"tier":"base"}}"#)
                .unwrap()
                .matches(&row)
        );
        assert!(!parse(r#"{"annotations":{"test-annotation":"false"}}"#)
            .unwrap()
            .matches(&row));
        assert!(!parse(r#"{"annotations":{"tier":"base"}}"#)
            .unwrap()
            .matches(&row));
        assert_eq!(
            parse(r#"{"annotations":{"test-annotation":true}}"#)
                .unwrap_err()
                .message,
            "annotations: must be an object of strings"
        );
        assert_eq!(
            parse(r#"{"annotations":["test-annotation"]}"#)
                .unwrap_err()
                .message,
            "annotations: must be an object of strings, got [\"test-annotation\"]"
        );
        assert_eq!(parse(r#"{"lifecycle":["Done"]}"#).unwrap_err().message, "lifecycle: unknown lifecycle \"Done\", expected one of: Draft, Proposed, Published, DeletionProposed");
        assert_eq!(
            parse(r#"{"revision":-2}"#).unwrap_err().message,
            "revision: must be an integer of at least -1, got -2"
        );
    }
}
