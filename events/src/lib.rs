//! cairn's language: the events every other crate speaks.
//!
//! # Layout
//! - [`v1`] — types generated from `proto/cairn/v1/*.proto` (prost), with
//!   serde impls for the proto3 JSON mapping (pbjson, proto field names);
//!   its own file (`v1.rs`) so that no module imports another that imports it
//!   back (`envelope` uses `crate::v1`, and the crate root re-exports
//!   `envelope`).
//! - [`envelope`] — building, encoding and decoding envelopes; schema version
//!   checks; event ids (UUID v7); event type names.
//! - [`json`] — the JSON rendering of an envelope used by `cairn log` and the
//!   NATS JSON payloads.
//! - [`revision`] — the JSON form of a package revision in replies and in
//!   the list view; [`revision::Lifecycle`], the lifecycle as an enum.
//! - [`subject`] — NATS subject names (`cairn.events.<ns>.<repo>.<type>`) and
//!   the reversible encoding of names that are not valid subject tokens.
//! - [`stream`] — stream ids (`repo/<namespace>/<name>`).
//! - [`error`] — the crate's error type.

pub mod envelope;
pub mod error;
pub mod json;
pub mod revision;
pub mod stream;
pub mod subject;

/// Generated protobuf types of schema version 1.
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod v1;

pub use envelope::{EventKind, SCHEMA_VERSION};
pub use error::EventsError;
pub use stream::StreamId;
