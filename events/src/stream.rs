//! Stream ids: the ordered events of one aggregate.
//!
//! One stream per repository, `repo/<namespace>/<name>`, holding its package
//! revisions' events too. Ids are opaque to the log; this module only checks
//! the few rules the storage layout relies on.

use std::fmt;

use crate::EventsError;

/// Longest stream id accepted, in bytes.
pub const STREAM_ID_MAX_BYTES: usize = 512;

/// A validated stream id: non-empty, at most [`STREAM_ID_MAX_BYTES`], no NUL
/// byte (the storage key separator) and no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(String);

impl StreamId {
    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<Self, EventsError> {
        let id = id.into();
        let reason = if id.is_empty() {
            Some("must not be empty")
        } else if id.len() > STREAM_ID_MAX_BYTES {
            Some("longer than 512 bytes")
        } else if id.chars().any(char::is_control) {
            Some("must not contain control characters")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(EventsError::InvalidStream { stream: id, reason }),
            None => Ok(Self(id)),
        }
    }

    /// The stream of repository `namespace/name`.
    pub fn repository(namespace: &str, name: &str) -> Result<Self, EventsError> {
        Self::new(format!("repo/{namespace}/{name}"))
    }

    /// `(namespace, name)` when this is a repository stream.
    pub fn as_repository(&self) -> Option<(&str, &str)> {
        let rest = self.0.strip_prefix("repo/")?;
        let (namespace, name) = rest.split_once('/')?;
        (!namespace.is_empty() && !name.is_empty() && !name.contains('/'))
            .then_some((namespace, name))
    }

    /// Artifact stream `partition` of the HTTP artifact cache:
    /// `artifact/<partition>` (two decimal digits at least).
    pub fn artifact(partition: u32) -> Self {
        Self(format!("artifact/{partition:02}"))
    }

    /// The partition number when this is an artifact stream.
    pub fn as_artifact(&self) -> Option<u32> {
        self.0.strip_prefix("artifact/")?.parse().ok()
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_streams_round_trip() {
        let s = StreamId::repository("team-a", "blueprints").unwrap();
        assert_eq!(s.as_str(), "repo/team-a/blueprints");
        assert_eq!(s.as_repository(), Some(("team-a", "blueprints")));
        assert_eq!(StreamId::new("other/x").unwrap().as_repository(), None);
    }

    #[test]
    fn rejects_what_the_key_layout_cannot_hold() {
        let err = StreamId::new("a\0b").unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid stream id \"a\\0b\": must not contain control characters"
        );
        assert!(matches!(
            StreamId::new(""),
            Err(EventsError::InvalidStream {
                reason: "must not be empty",
                ..
            })
        ));
        assert!(StreamId::new("x".repeat(513)).is_err());
        assert!(StreamId::new("x".repeat(512)).is_ok());
    }
}
