//! [`ExpectedVersion`]: what an appender believes a stream's version is.
//! A leaf module: the event log and the errors both name it.

use std::fmt;

/// What the caller believes the stream's current version is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the version is.
    Any,
    /// The stream must have no events yet.
    NoStream,
    /// The stream's last event must have this version (`0` = no events).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `actual` satisfies the expectation.
    pub fn matches(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(v) => v == actual,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}
