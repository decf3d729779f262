//! Messages the Publisher actor handles.

use std::time::Duration;

use actix::Message;

use super::error::PublishError;

/// Resolves once every event committed before the message was sent has been
/// acknowledged by JetStream, or fails after `timeout`. Returns the cursor.
#[derive(Debug, Message)]
#[rtype(result = "Result<u64, PublishError>")]
pub struct Flush {
    /// How long to wait at most.
    pub timeout: Duration,
}

/// Where the publisher is: its cursor and the log's end.
#[derive(Debug, Message)]
#[rtype(result = "PublisherStatus")]
pub struct GetStatus;

/// Publishing progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublisherStatus {
    /// Every event up to this sequence is stored in JetStream.
    pub cursor: u64,
    /// The log's last committed sequence.
    pub last_seq: u64,
}

/// Stops publishing gracefully: waits for in-flight acks (at most the ack
/// timeout), persists the cursor, then stops the actor.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Stop;
