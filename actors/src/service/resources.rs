//! `cairn.v1.pkgrev.resources`: a package revision's files, in pages.
//!
//! # One rule for writes and reads
//! No request and no reply is larger than the NATS server's `max_payload`
//! (1 MiB unless the server says otherwise).
//! - Writes: `pkgrev.create|update` carry a draft's files in one request,
//!   so a draft as sent is at most `max_payload` (each file also at most
//!   `service.resource-max-bytes`).
//! - Reads page, so every revision is readable whatever its size: one
//!   written in JSON or in protobuf (whose raw bytes grow in a JSON reply:
//!   escapes, base64), one cloned, one synced from Git with files larger
//!   than a reply.
//!
//! # Pages
//! Request `{"namespace","name","continue"?}`; reply
//! `{"resources":{path: UTF-8 text},"binary"?:{path: base64},"continue":<token or null>}`
//! (protobuf: `PkgRevResourcesRequest` → `PkgRevResources`, raw bytes).
//! - Files come in path order. A page takes each next file whole while it
//!   fits the reply budget ([`ContextParts::reply_max_bytes`](super::ContextParts::reply_max_bytes): the
//!   server's max payload less room for headers), measured as it is
//!   encoded — JSON escapes, base64, protobuf framing — and the finished
//!   page is checked against the budget before it is sent.
//! - A file that does not fit the rest of a page starts the next page when
//!   it would fit a page of its own; one that would not fills the rest of
//!   this page and goes on in the next. Such a file's path appears in
//!   consecutive pages and its content is the concatenation of its pieces
//!   in page order. In JSON each piece is under `resources` when it is
//!   UTF-8 (cut at a character boundary) and under `binary` otherwise (cut
//!   at a multiple of 3 bytes, so no padding inside a file): a client
//!   decodes each piece from the map it is in and appends it.
//! - `continue` says where the next page starts: a fingerprint of the files
//!   the page was cut from (their paths and digests), the next file's index
//!   in path order and the byte offset in it. It is opaque, hex like
//!   `pkgrev.list`'s, and of a fixed size (an index rather than a path, so
//!   a long path cannot crowd a page out). When the files changed since, the
//!   next page is a 409 (read again from the first page): pages never mix
//!   two versions of a revision.
//!
//! A page reads from the blob store only the byte ranges it may take (at
//! most one reply budget beyond what it sends), never a large file whole.

use std::io::Read as _;

use cairn_events::v1 as pb;
use cairn_storage::{blob::Digest, BlobReader, BlobStore, StorageError};
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tracing::debug;

use super::{
    codec::{Body, Format},
    context::{blocking, Incoming, ServiceContext},
    fields::Fields,
    pkgrev::{get_row, revision_name},
    validate,
};
use crate::{error::expected_found, ServiceError};

/// The fields a `pkgrev.resources` request may carry.
pub const FIELDS: &[&str] = &["namespace", "name", "continue"];

/// `cairn.v1.pkgrev.resources`: one page of a revision's files (see the
/// module docs).
pub async fn handle_resources(
    context: ServiceContext,
    request: Incoming,
) -> Result<Body, ServiceError> {
    let f = Fields::parse(&request.body, FIELDS)?;
    let namespace = f.required("namespace")?;
    validate::dns_label("namespace", &namespace)?;
    let name = revision_name(&f, "name")?;
    let start = f
        .string("continue")?
        .filter(|t| !t.is_empty())
        .map(|t| Cursor::decode(&t))
        .transpose()?;
    let format = request.format;
    let store = context.store.clone();
    let budget_bytes = context.reply_max_bytes();
    blocking(move || {
        let row = get_row(&store, &namespace, &name)?;
        let files = file_refs(row.revision.iter().flat_map(|r| &r.resources))?;
        let key = format!("{namespace}/{name}");
        let page = page(&store, &key, &files, start, budget_bytes, format)?;
        debug!(
            revision = %key,
            files = files.len(),
            pieces = page.pieces,
            bytes = page.bytes,
            budget_bytes,
            last = page.next.is_none(),
            "resources page"
        );
        Ok(page.body)
    })
    .await
}

/// Why a page of resources could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ResourcesError {
    /// `continue` is not a token this endpoint issued (400); the client
    /// passes back the previous page's token, or none for the first page.
    #[error("continue: not a token from a previous reply")]
    BadContinue,
    /// The revision's files changed since the page that issued `continue`
    /// (409); the client reads them again from the first page.
    #[error("{}", expected_found(
        format_args!("continue: resources of {name}"),
        format_args!("fingerprint {}", hex::encode(expected)),
        format_args!("found {} (they changed since the previous page; read them again from the first page)", hex::encode(found)),
    ))]
    Changed {
        /// The revision, `namespace/name`.
        name: String,
        /// The fingerprint the token carries.
        expected: [u8; FINGERPRINT_LEN],
        /// The fingerprint of the files now.
        found: [u8; FINGERPRINT_LEN],
    },
    /// A file's path alone does not fit a reply (413); the server's
    /// `max_payload` is too small for this revision.
    #[error(
        "resources of {name}: the path {path:?} does not fit one reply ({budget_bytes} bytes)"
    )]
    PathTooLong {
        /// The revision, `namespace/name`.
        name: String,
        /// The file.
        path: String,
        /// The reply budget.
        budget_bytes: usize,
    },
    /// A file's digest in the view is malformed (500): the views are
    /// damaged; rebuild them.
    #[error("{path}: bad digest")]
    BadDigest {
        /// The file.
        path: String,
    },
    /// A file's blob is not in the store (500): the store is damaged.
    #[error("{path}: blob {digest} missing")]
    BlobMissing {
        /// The file.
        path: String,
        /// Its content's digest.
        digest: Digest,
    },
    /// Reading the store failed (its code, usually 500).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A finished page is larger than its budget (500): a bug in the
    /// measuring; the page is not sent.
    #[error("a page of {bytes} bytes exceeds the reply budget of {budget_bytes} bytes")]
    Oversized {
        /// The page's size.
        bytes: usize,
        /// The budget.
        budget_bytes: usize,
    },
}

impl From<ResourcesError> for ServiceError {
    fn from(e: ResourcesError) -> Self {
        match e {
            ResourcesError::BadContinue => ServiceError::bad_request(e.to_string()),
            ResourcesError::Changed { .. } => ServiceError::conflict(e.to_string()),
            ResourcesError::PathTooLong { .. } => ServiceError {
                code: 413,
                message: e.to_string(),
            },
            ResourcesError::Storage(e) => e.into(),
            ResourcesError::BadDigest { .. }
            | ResourcesError::BlobMissing { .. }
            | ResourcesError::Oversized { .. } => ServiceError::internal(e.to_string()),
        }
    }
}

/// Bytes of a files fingerprint in a token.
pub const FINGERPRINT_LEN: usize = 8;
/// Bytes of a token before hex: fingerprint, file index, offset (both
/// big-endian u64).
const TOKEN_LEN: usize = FINGERPRINT_LEN + 8 + 8;
/// Characters of a token.
const TOKEN_HEX_LEN: usize = 2 * TOKEN_LEN;

/// A file of a revision, as pages read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// Path relative to the package.
    pub path: String,
    /// Its content's digest.
    pub digest: Digest,
}

/// The files of a revision's `resources` map (path → digest), in path
/// order.
pub fn file_refs<'a>(
    resources: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<Vec<FileRef>, ResourcesError> {
    let mut files = resources
        .into_iter()
        .map(|(path, digest)| {
            Ok(FileRef {
                path: path.clone(),
                digest: Digest::parse(digest)
                    .ok_or_else(|| ResourcesError::BadDigest { path: path.clone() })?,
            })
        })
        .collect::<Result<Vec<_>, ResourcesError>>()?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// What a token pins: the paths and digests of `files`.
pub fn fingerprint(files: &[FileRef]) -> [u8; FINGERPRINT_LEN] {
    let mut hash = Sha256::new();
    for file in files {
        hash.update(file.path.as_bytes());
        hash.update([0]);
        hash.update(file.digest.to_string().as_bytes());
        hash.update([b'\n']);
    }
    let mut out = [0; FINGERPRINT_LEN];
    out.copy_from_slice(&hash.finalize()[..FINGERPRINT_LEN]);
    out
}

/// Where a page starts (the decoded `continue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The files the token was cut from ([`fingerprint`]).
    pub fingerprint: [u8; FINGERPRINT_LEN],
    /// The next file's index, in path order.
    pub index: u64,
    /// The byte offset in it.
    pub offset: u64,
}

impl Cursor {
    /// The token (hex).
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(TOKEN_LEN);
        bytes.extend_from_slice(&self.fingerprint);
        bytes.extend_from_slice(&self.index.to_be_bytes());
        bytes.extend_from_slice(&self.offset.to_be_bytes());
        hex::encode(bytes)
    }

    /// Reads a token; [`ResourcesError::BadContinue`] unless it is one.
    pub fn decode(token: &str) -> Result<Self, ResourcesError> {
        let bytes = hex::decode(token).map_err(|_| ResourcesError::BadContinue)?;
        if bytes.len() != TOKEN_LEN {
            return Err(ResourcesError::BadContinue);
        }
        let mut fingerprint = [0; FINGERPRINT_LEN];
        fingerprint.copy_from_slice(&bytes[..FINGERPRINT_LEN]);
        let mut index = [0; 8];
        index.copy_from_slice(&bytes[FINGERPRINT_LEN..FINGERPRINT_LEN + 8]);
        let mut offset = [0; 8];
        offset.copy_from_slice(&bytes[FINGERPRINT_LEN + 8..]);
        Ok(Self {
            fingerprint,
            index: u64::from_be_bytes(index),
            offset: u64::from_be_bytes(offset),
        })
    }
}

/// One page, ready to send.
#[derive(Debug)]
pub struct Page {
    /// The reply body.
    pub body: Body,
    /// Where the next page starts (none: this is the last).
    pub next: Option<Cursor>,
    /// Files or pieces of files in the page.
    pub pieces: usize,
    /// The reply's size in bytes.
    pub bytes: usize,
}

/// The page of `files` (of revision `name`, for messages) that starts at
/// `start` (none: the first), at most `budget_bytes` as encoded in
/// `format`.
pub fn page(
    blobs: &dyn BlobStore,
    name: &str,
    files: &[FileRef],
    start: Option<Cursor>,
    budget_bytes: usize,
    format: Format,
) -> Result<Page, ResourcesError> {
    let fingerprint = fingerprint(files);
    let (first, mut offset) = match start {
        None => (0, 0),
        Some(cursor) if cursor.fingerprint != fingerprint => {
            return Err(ResourcesError::Changed {
                name: name.to_owned(),
                expected: cursor.fingerprint,
                found: fingerprint,
            })
        }
        Some(cursor) if cursor.index < files.len() as u64 => (cursor.index as usize, cursor.offset),
        Some(_) => return Err(ResourcesError::BadContinue),
    };
    let mut builder = Builder::new(format);
    // What an empty page leaves for one file.
    let page_room = budget_bytes.saturating_sub(builder.used);
    let mut next = None;
    for (index, file) in files.iter().enumerate().skip(first) {
        let blob = open(blobs, file)?;
        let size = blob.size();
        if index > first {
            offset = 0;
        } else if offset > 0 && offset >= size {
            // Tokens point inside a file, never at or past its end.
            return Err(ResourcesError::BadContinue);
        }
        let rest = size - offset;
        let room = budget_bytes.saturating_sub(builder.used);
        // A piece never takes fewer encoded bytes than raw ones: read the
        // rest when it may fit a page, else what this page can take.
        let want = if rest <= page_room as u64 {
            rest
        } else {
            rest.min(room as u64)
        };
        let window = read(blob, file, offset, want)?;
        let window_is_rest = want == rest;
        let here = window.len().min(room);
        let at_end = window_is_rest && here == window.len();
        let fit = builder.fit(&file.path, &window[..here], at_end, room);
        if fit.whole {
            builder.push(&file.path, &window[..fit.bytes], fit.binary);
            continue;
        }
        if builder.is_empty() {
            if fit.bytes == 0 {
                return Err(ResourcesError::PathTooLong {
                    name: name.to_owned(),
                    path: file.path.clone(),
                    budget_bytes,
                });
            }
        } else {
            // It does not fit the rest of this page: it starts the next
            // page when it would fit one of its own, else fills this one.
            let fits_a_page =
                window_is_rest && builder.fit(&file.path, &window, true, page_room).whole;
            if fits_a_page || fit.bytes == 0 {
                next = Some((index, offset));
                break;
            }
        }
        builder.push(&file.path, &window[..fit.bytes], fit.binary);
        next = Some((index, offset + fit.bytes as u64));
        break;
    }
    let next = next.map(|(index, offset)| Cursor {
        fingerprint,
        index: index as u64,
        offset,
    });
    let pieces = builder.pieces;
    let body = builder.finish(next);
    let bytes = match &body {
        Body::JsonBytes(b) => b.len(),
        Body::Protobuf(b) => b.len(),
        Body::Json(v) => v.to_string().len(),
    };
    if bytes > budget_bytes {
        return Err(ResourcesError::Oversized {
            bytes,
            budget_bytes,
        });
    }
    Ok(Page {
        body,
        next,
        pieces,
        bytes,
    })
}

/// `file`'s blob, opened (its size known, nothing read yet).
fn open(blobs: &dyn BlobStore, file: &FileRef) -> Result<BlobReader, ResourcesError> {
    blobs
        .open_blob(&file.digest)?
        .ok_or_else(|| ResourcesError::BlobMissing {
            path: file.path.clone(),
            digest: file.digest,
        })
}

/// `len` bytes of `file` (opened as `blob`) from `offset`.
fn read(
    blob: BlobReader,
    file: &FileRef,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, ResourcesError> {
    let mut reader = blob.range(&file.digest, offset..offset + len)?;
    let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    reader.read_to_end(&mut out).map_err(|source| {
        StorageError::io(
            format!("reading blob {} ({})", file.digest, file.path),
            source,
        )
    })?;
    Ok(out)
}

/// Bytes `s` takes as a JSON string's content, as serde_json writes it:
/// `"` and `\` and the short control escapes (`\b \t \n \f \r`) take 2,
/// the other control characters 6 (`\u00XX`), anything else itself.
pub fn json_escaped_len(s: &[u8]) -> usize {
    s.iter().map(|&b| json_byte_len(b)).sum()
}

fn json_byte_len(b: u8) -> usize {
    match b {
        b'"' | b'\\' | 0x08 | 0x09 | 0x0a | 0x0c | 0x0d => 2,
        0x00..=0x1f => 6,
        _ => 1,
    }
}

/// How much of a window fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fit {
    /// Leading bytes of the window that fit (at a place a piece may end).
    bytes: usize,
    /// All of the window fits, and it is the rest of the file.
    whole: bool,
    /// JSON: the piece goes under `binary` (base64).
    binary: bool,
}

impl Fit {
    /// Nothing fits, not even the path.
    const NONE: Fit = Fit {
        bytes: 0,
        whole: false,
        binary: false,
    };
}

/// The UTF-8 text `window` holds, if it is text: all of it, or — when the
/// file goes on after it (`at_end` false) — all but a character cut at its
/// end. `None` for anything else (sent as base64).
fn utf8_prefix(window: &[u8], at_end: bool) -> Option<&[u8]> {
    match std::str::from_utf8(window) {
        Ok(_) => Some(window),
        Err(e) if e.error_len().is_none() && !at_end && e.valid_up_to() > 0 => {
            Some(&window[..e.valid_up_to()])
        }
        Err(_) => None,
    }
}

/// Whether `b` continues a UTF-8 character (a piece cannot start there).
fn is_continuation(b: u8) -> bool {
    b & 0b1100_0000 == 0b1000_0000
}

/// Writes `text` as a JSON string, as serde_json does.
fn write_json_string(out: &mut Vec<u8>, text: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// A page being filled: its entries so far and the bytes it uses, counting
/// its frame and the longest `continue` it may end with.
#[derive(Debug)]
struct Builder {
    format: Format,
    used: usize,
    pieces: usize,
    /// JSON: the `resources` entries; protobuf: unused.
    text: Vec<u8>,
    /// JSON: the `binary` entries.
    binary: Vec<u8>,
    /// Protobuf: the files.
    files: std::collections::BTreeMap<String, Vec<u8>>,
}

/// The JSON page around its entries, with both maps and the longest
/// `continue` (a token in quotes).
const JSON_FRAME: &str = r#"{"resources":{},"binary":{},"continue":""}"#;

impl Builder {
    fn new(format: Format) -> Self {
        let used = match format {
            Format::Json => JSON_FRAME.len() + TOKEN_HEX_LEN,
            // Field 2, its length, the token.
            Format::Protobuf => {
                1 + prost::encoding::encoded_len_varint(TOKEN_HEX_LEN as u64) + TOKEN_HEX_LEN
            }
        };
        Self {
            format,
            used,
            pieces: 0,
            text: Vec::new(),
            binary: Vec::new(),
            files: Default::default(),
        }
    }

    fn is_empty(&self) -> bool {
        self.pieces == 0
    }

    /// How much of `window` (a piece starting where the file goes on; the
    /// rest of the file when `at_end`) fits in `room` bytes of page.
    fn fit(&self, path: &str, window: &[u8], at_end: bool, room: usize) -> Fit {
        match self.format {
            Format::Protobuf => {
                // Field 1 (a map entry: key field 1, value field 2), framed
                // with the largest varints `room` could need.
                let varint = prost::encoding::encoded_len_varint(room as u64);
                let fixed = 1
                    + varint
                    + 1
                    + prost::encoding::encoded_len_varint(path.len() as u64)
                    + path.len()
                    + 1
                    + varint;
                if room < fixed {
                    return Fit::NONE;
                }
                let bytes = window.len().min(room - fixed);
                Fit {
                    bytes,
                    whole: at_end && bytes == window.len(),
                    binary: true,
                }
            }
            Format::Json => {
                // `,"path":"…"` (a comma counted for every entry).
                let fixed = 1 + json_escaped_len(path.as_bytes()) + 2 + 1 + 2;
                if room < fixed {
                    return Fit::NONE;
                }
                let room = room - fixed;
                match utf8_prefix(window, at_end) {
                    Some(text) => {
                        let mut cost = 0;
                        let mut bytes = 0;
                        for (i, &b) in text.iter().enumerate() {
                            cost += json_byte_len(b);
                            if cost > room {
                                break;
                            }
                            // A piece ends only before a character's first byte.
                            if i + 1 == text.len() || !is_continuation(text[i + 1]) {
                                bytes = i + 1;
                            }
                        }
                        Fit {
                            bytes,
                            whole: at_end && bytes == window.len(),
                            binary: false,
                        }
                    }
                    None => {
                        let all = base64::encoded_len(window.len(), true).unwrap_or(usize::MAX);
                        if at_end && all <= room {
                            Fit {
                                bytes: window.len(),
                                whole: true,
                                binary: true,
                            }
                        } else {
                            // Whole groups of 3 bytes: no padding inside a file.
                            Fit {
                                bytes: (room / 4 * 3).min(window.len() / 3 * 3),
                                whole: false,
                                binary: true,
                            }
                        }
                    }
                }
            }
        }
    }

    /// Adds `piece` of the file at `path`.
    fn push(&mut self, path: &str, piece: &[u8], binary: bool) {
        self.pieces += 1;
        match self.format {
            Format::Protobuf => {
                // A page holds each path once: its entry adds exactly its
                // own length (no pass over the page's other files).
                self.used += map_entry_len(path, piece);
                self.files.insert(path.to_owned(), piece.to_vec());
            }
            Format::Json => {
                let out = if binary {
                    &mut self.binary
                } else {
                    &mut self.text
                };
                let before = out.len();
                if !out.is_empty() {
                    out.push(b',');
                }
                write_json_string(out, path);
                out.push(b':');
                if binary {
                    use base64::Engine as _;
                    out.push(b'"');
                    out.extend_from_slice(
                        base64::engine::general_purpose::STANDARD
                            .encode(piece)
                            .as_bytes(),
                    );
                    out.push(b'"');
                } else {
                    // `fit` chose text only for UTF-8, so nothing is replaced.
                    write_json_string(out, &String::from_utf8_lossy(piece));
                }
                // The comma is counted for every entry (see `fit`).
                self.used += out.len() - before + usize::from(before == 0);
            }
        }
    }

    fn finish(self, next: Option<Cursor>) -> Body {
        let token = next.map(|c| c.encode());
        match self.format {
            Format::Protobuf => Body::Protobuf(
                pb::PkgRevResources {
                    resources: self.files,
                    r#continue: token.unwrap_or_default(),
                }
                .encode_to_vec(),
            ),
            Format::Json => {
                let mut out = Vec::with_capacity(self.used);
                out.extend_from_slice(br#"{"resources":{"#);
                out.extend_from_slice(&self.text);
                out.push(b'}');
                if !self.binary.is_empty() {
                    out.extend_from_slice(br#","binary":{"#);
                    out.extend_from_slice(&self.binary);
                    out.push(b'}');
                }
                out.extend_from_slice(br#","continue":"#);
                match token {
                    Some(token) => {
                        out.push(b'"');
                        out.extend_from_slice(token.as_bytes());
                        out.push(b'"');
                    }
                    None => out.extend_from_slice(b"null"),
                }
                out.push(b'}');
                Body::JsonBytes(out.into())
            }
        }
    }
}

/// The encoded length of one entry `path → piece` of the `resources` map
/// (field 1) of `PkgRevResources`, as prost encodes a map entry: a
/// length-delimited message of the key (field 1) and the value (field 2),
/// each left out when empty.
fn map_entry_len(path: &str, piece: &[u8]) -> usize {
    use prost::encoding::{encoded_len_varint, key_len};
    let field = |tag: u32, len: usize| {
        if len == 0 {
            0
        } else {
            key_len(tag) + encoded_len_varint(len as u64) + len
        }
    };
    let entry = field(1, path.len()) + field(2, piece.len());
    key_len(1) + encoded_len_varint(entry as u64) + entry
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use cairn_storage::{views::default_views, Store, StoreConfig};
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    #[test]
    fn a_map_entry_adds_its_own_encoded_length() {
        let mut files = std::collections::BTreeMap::new();
        let mut sum = 0;
        for (path, piece) in [
            ("Kptfile", vec![b'k'; 10]),
            ("empty", Vec::new()),
            (&*"p".repeat(300), vec![0u8; 70_000]),
            ("a/b.yaml", vec![1u8; 127]),
            ("a/c.yaml", vec![1u8; 128]),
        ] {
            sum += map_entry_len(path, &piece);
            files.insert(path.to_owned(), piece);
            let whole = prost::encoding::btree_map::encoded_len(
                prost::encoding::string::encoded_len,
                prost::encoding::bytes::encoded_len,
                1,
                &files,
            );
            assert_eq!(sum, whole, "after {path}");
        }
    }

    /// Most pages a test reads before it calls the paging stuck.
    const PAGES_MAX: usize = 10_000;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(dir.path().join("db")), default_views()).unwrap();
        (dir, store)
    }

    /// Stores `files`; their refs in path order.
    fn put(store: &Store, files: &BTreeMap<String, Vec<u8>>) -> Vec<FileRef> {
        files
            .iter()
            .map(|(path, content)| FileRef {
                path: path.clone(),
                digest: store.put(content).unwrap().digest(),
            })
            .collect()
    }

    /// One page decoded: (path, piece) in the order the page holds them,
    /// and its `continue`.
    fn decode(body: &Body) -> (Vec<(String, Vec<u8>)>, Option<String>) {
        use base64::Engine as _;
        match body {
            Body::JsonBytes(bytes) => {
                let page: Value = serde_json::from_slice(bytes).unwrap();
                let mut pieces = Vec::new();
                for (path, text) in page["resources"].as_object().unwrap() {
                    pieces.push((path.clone(), text.as_str().unwrap().as_bytes().to_vec()));
                }
                for (path, encoded) in page["binary"].as_object().into_iter().flatten() {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(encoded.as_str().unwrap())
                        .unwrap();
                    pieces.push((path.clone(), bytes));
                }
                (pieces, page["continue"].as_str().map(str::to_owned))
            }
            Body::Protobuf(bytes) => {
                let page = pb::PkgRevResources::decode(bytes.as_slice()).unwrap();
                let token = Some(page.r#continue).filter(|t| !t.is_empty());
                (page.resources.into_iter().collect(), token)
            }
            Body::Json(_) => panic!("pages are sent as bytes"),
        }
    }

    /// Every page from the first: the files put together from their
    /// pieces, and each page's pieces as (path, length).
    #[allow(clippy::type_complexity)]
    fn read_all(
        store: &Store,
        files: &[FileRef],
        budget_bytes: usize,
        format: Format,
    ) -> Result<(BTreeMap<String, Vec<u8>>, Vec<Vec<(String, usize)>>), ResourcesError> {
        let mut out = BTreeMap::<String, Vec<u8>>::new();
        let mut pages = Vec::new();
        let mut start = None;
        for _ in 0..PAGES_MAX {
            let page = page(store, "ns/rev", files, start, budget_bytes, format)?;
            assert!(
                page.bytes <= budget_bytes,
                "{} > {budget_bytes}",
                page.bytes
            );
            let (pieces, token) = decode(&page.body);
            assert_eq!(token, page.next.map(|c| c.encode()));
            pages.push(pieces.iter().map(|(p, c)| (p.clone(), c.len())).collect());
            for (path, piece) in pieces {
                out.entry(path).or_default().extend(piece);
            }
            match token {
                Some(token) => start = Some(Cursor::decode(&token).unwrap()),
                None => return Ok((out, pages)),
            }
        }
        panic!("more than {PAGES_MAX} pages");
    }

    fn files(entries: &[(&str, &[u8])]) -> BTreeMap<String, Vec<u8>> {
        entries
            .iter()
            .map(|(p, c)| ((*p).to_owned(), c.to_vec()))
            .collect()
    }

    #[test]
    fn a_revision_that_fits_is_one_page_without_continue() {
        let (_dir, store) = store();
        let given = files(&[
            ("Kptfile", b"kind: Kptfile\n"),
            ("a.yaml", b"x: \"1\"\n"),
            ("logo.bin", &[0xff, 0, 1]),
        ]);
        let refs = put(&store, &given);
        let page = page(&store, "ns/rev", &refs, None, 1024, Format::Json).unwrap();
        assert_eq!(
            page.body,
            Body::JsonBytes(
                r#"{"resources":{"Kptfile":"kind: Kptfile\n","a.yaml":"x: \"1\"\n"},"binary":{"logo.bin":"/wAB"},"continue":null}"#
                    .into()
            )
        );
        assert_eq!((page.next, page.pieces), (None, 3));
        let (back, pages) = read_all(&store, &refs, 1024, Format::Protobuf).unwrap();
        assert_eq!((back, pages.len()), (given, 1));
    }

    #[test]
    fn a_file_larger_than_a_page_comes_in_pieces_that_fill_the_pages() {
        let (_dir, store) = store();
        let given = files(&[("a", b"small"), ("big", &[b'x'; 500]), ("c", b"tail")]);
        let refs = put(&store, &given);
        // Protobuf, 200 bytes: 50 for `continue`, 12 for "a", so the first
        // page holds 127 bytes of "big" (138 less 11 of framing, counted
        // with the widest varints), the next ones 139, the last the rest
        // and "c".
        let (back, pages) = read_all(&store, &refs, 200, Format::Protobuf).unwrap();
        assert_eq!(back, given);
        let piece = |p: &str, n: usize| (p.to_owned(), n);
        assert_eq!(
            pages,
            [
                vec![piece("a", 5), piece("big", 127)],
                vec![piece("big", 139)],
                vec![piece("big", 139)],
                vec![piece("big", 95), piece("c", 4)],
            ]
        );
        // JSON text: 200 bytes less the frame (42) and token (48) leave
        // 110; `,"a":"small"` takes 12, `,"big":""` 9, so 89 bytes of "big"
        // fit the first page, 101 the next.
        let (back, pages) = read_all(&store, &refs, 200, Format::Json).unwrap();
        assert_eq!(back, given);
        assert_eq!(pages[0], [piece("a", 5), piece("big", 89)]);
        assert_eq!(pages[1], [piece("big", 101)]);
    }

    #[test]
    fn a_file_that_fits_a_page_of_its_own_starts_the_next_page() {
        let (_dir, store) = store();
        let given = files(&[("a", &[b'a'; 60]), ("b", &[b'b'; 80])]);
        let refs = put(&store, &given);
        let (back, pages) = read_all(&store, &refs, 200, Format::Json).unwrap();
        assert_eq!(back, given);
        assert_eq!(
            pages,
            [vec![("a".to_owned(), 60)], vec![("b".to_owned(), 80)]]
        );
    }

    #[test]
    fn text_is_cut_between_characters_and_binary_at_multiples_of_3() {
        let (_dir, store) = store();
        let text = "é😀\"\u{1}".repeat(40);
        let mut binary = vec![0xffu8; 301];
        binary[0] = 0;
        let given = files(&[("t", text.as_bytes()), ("x", &binary)]);
        let refs = put(&store, &given);
        let mut start = None;
        let mut back = BTreeMap::<String, Vec<u8>>::new();
        for _ in 0..PAGES_MAX {
            let page = page(&store, "ns/rev", &refs, start, 200, Format::Json).unwrap();
            let Body::JsonBytes(bytes) = &page.body else {
                panic!("JSON pages are bytes")
            };
            let json: Value = serde_json::from_slice(bytes).unwrap();
            for (path, piece) in json["resources"].as_object().unwrap() {
                assert_eq!(path, "t", "only the text file is text");
                back.entry(path.clone())
                    .or_default()
                    .extend(piece.as_str().unwrap().as_bytes());
            }
            for (path, piece) in json["binary"].as_object().into_iter().flatten() {
                use base64::Engine as _;
                let piece = base64::engine::general_purpose::STANDARD
                    .decode(piece.as_str().unwrap())
                    .unwrap();
                let done = back.get(path).map_or(0, Vec::len) + piece.len();
                assert!(
                    piece.len() % 3 == 0 || done == binary.len(),
                    "a base64 piece inside a file is whole groups of 3 bytes"
                );
                back.entry(path.clone()).or_default().extend(piece);
            }
            start = page.next;
            if start.is_none() {
                break;
            }
        }
        assert_eq!(back, given);
    }

    #[test]
    fn continue_tokens_are_checked() {
        let (_dir, store) = store();
        let given = files(&[("a", &[b'a'; 300]), ("b", b"b")]);
        let refs = put(&store, &given);
        let first = page(&store, "ns/rev", &refs, None, 200, Format::Json).unwrap();
        let next = first.next.unwrap();
        assert_eq!(Cursor::decode(&next.encode()).unwrap(), next);
        assert_eq!(
            (next.index, next.fingerprint),
            (0, super::fingerprint(&refs))
        );
        for bad in ["zz", "00", &next.encode()[2..]] {
            assert!(matches!(
                Cursor::decode(bad),
                Err(ResourcesError::BadContinue)
            ));
        }
        let fingerprint = next.fingerprint;
        let at = |index: u64, offset: u64| {
            let cursor = Cursor {
                fingerprint,
                index,
                offset,
            };
            page(&store, "ns/rev", &refs, Some(cursor), 200, Format::Json)
        };
        // Past the last file, at or past a file's end: not ours.
        for (index, offset) in [(2, 0), (0, 300), (1, 1), (u64::MAX, 0)] {
            let error = at(index, offset).unwrap_err();
            assert_eq!(
                ServiceError::from(error),
                ServiceError::bad_request("continue: not a token from a previous reply"),
                "{index} {offset}"
            );
        }
        // The files changed since: 409, naming both fingerprints.
        let changed = put(&store, &files(&[("a", &[b'A'; 300]), ("b", b"b")]));
        let error = page(&store, "ns/rev", &changed, Some(next), 200, Format::Json).unwrap_err();
        assert_eq!(
            ServiceError::from(error),
            ServiceError::conflict(format!(
                "continue: resources of ns/rev: expected fingerprint {}, found {} (they changed since the previous page; read them again from the first page)",
                hex::encode(next.fingerprint),
                hex::encode(super::fingerprint(&changed))
            ))
        );
    }

    #[test]
    fn a_path_that_does_not_fit_a_page_is_413() {
        let (_dir, store) = store();
        let path = "p".repeat(150);
        let refs = put(&store, &files(&[(&path, b"x")]));
        let error = page(&store, "ns/rev", &refs, None, 200, Format::Json).unwrap_err();
        assert_eq!(
            ServiceError::from(error),
            ServiceError {
                code: 413,
                message: format!(
                    "resources of ns/rev: the path {path:?} does not fit one reply (200 bytes)"
                ),
            }
        );
    }

    #[test]
    fn a_missing_blob_is_internal() {
        let (_dir, store) = store();
        let refs = vec![FileRef {
            path: "a".into(),
            digest: Digest::of(b"never stored"),
        }];
        let error = page(&store, "ns/rev", &refs, None, 200, Format::Json).unwrap_err();
        assert_eq!(
            ServiceError::from(error),
            ServiceError::internal(format!("a: blob {} missing", Digest::of(b"never stored")))
        );
    }

    /// File contents of every kind the pages handle differently.
    fn content() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..1500),
            "[a-z \n]{0,1500}".prop_map(String::into_bytes),
            "[a\"\\\\\\x01\\x1f\\x7fé😀\t\n]{0,800}".prop_map(String::into_bytes),
            (
                "[aé😀]{0,400}",
                proptest::collection::vec(any::<u8>(), 1..50)
            )
                .prop_map(|(text, bytes)| {
                    let mut out = text.into_bytes();
                    out.extend(bytes);
                    out
                }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn json_escaped_len_is_what_serde_json_writes(text in any::<String>()) {
            prop_assert_eq!(
                json_escaped_len(text.as_bytes()) + 2,
                serde_json::to_string(&text).unwrap().len()
            );
        }

        #[test]
        fn pages_fit_their_budget_and_add_up_to_the_files(
            given in proptest::collection::btree_map("[a-zé/]{1,12}", content(), 0..6),
            budget in 150usize..3000,
        ) {
            let (_dir, store) = store();
            let refs = put(&store, &given);
            for format in [Format::Json, Format::Protobuf] {
                let (back, _) = read_all(&store, &refs, budget, format).unwrap();
                prop_assert_eq!(&back, &given);
            }
        }
    }
}
