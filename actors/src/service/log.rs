//! `cairn.v1.log.read`: the log, for audit, recovery and replicas.
//!
//! Request `{"from_seq": N, "limit": M, "stream": "…"}` (all optional;
//! `limit` 1..=1000, default 100). Reply `{"events": [ … ], "next_seq": K}`
//! with the events in log order, each in the JSON rendering of
//! [`cairn_events::json`]; a reply also stops before it would exceed the
//! server's max payload. `next_seq` is where the next read continues.

use cairn_events::{
    json,
    v1::{Envelope, LogReadReply},
    StreamId,
};
use cairn_storage::EventLog;
use prost::Message as _;

use super::{
    codec::{Body, Format, Reply},
    context::{blocking, Incoming, ServiceContext},
    fields::Fields,
};
use crate::ServiceError;

/// Default number of events in one reply.
pub const DEFAULT_LIMIT: u64 = 100;
/// Most events in one reply.
pub const MAX_LIMIT: u64 = 1000;

/// A validated `log.read` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRead {
    /// First sequence wanted (0 and 1 both mean the start).
    pub from_seq: u64,
    /// Most events in the reply.
    pub limit: u64,
    /// Only this stream's events.
    pub stream: Option<StreamId>,
}

impl LogRead {
    /// Parses a JSON request.
    pub fn from_json(payload: &[u8]) -> Result<Self, ServiceError> {
        let fields = Fields::parse(payload, &["from_seq", "limit", "stream"])?;
        Self::validated(
            fields.u64("from_seq")?.unwrap_or(0),
            fields.u64_in("limit", 1, MAX_LIMIT)?,
            fields.string("stream")?,
        )
    }

    fn validated(
        from_seq: u64,
        limit: Option<u64>,
        stream: Option<String>,
    ) -> Result<Self, ServiceError> {
        let stream = stream
            .map(StreamId::new)
            .transpose()
            .map_err(|e| ServiceError::bad_field("stream", e))?;
        Ok(Self {
            from_seq,
            limit: limit.unwrap_or(DEFAULT_LIMIT),
            stream,
        })
    }

    /// Reads the events, stopping before the reply would exceed
    /// `reply_max_bytes` (at least one event is always returned).
    pub fn run(
        &self,
        store: &dyn EventLog,
        reply_max_bytes: usize,
        format: Format,
    ) -> Result<LogPage, ServiceError> {
        let limit = self.limit as usize;
        let events = match &self.stream {
            None => store.read_all(self.from_seq, limit)?,
            Some(stream) => store.read_stream_from_seq(stream, self.from_seq, limit)?,
        };
        let mut size = 64;
        let mut page = Vec::with_capacity(events.len());
        for env in events {
            size += match format {
                Format::Protobuf => env.encoded_len() + 8,
                Format::Json => {
                    json::to_json(&env)
                        .map_err(|e| ServiceError::internal(e.to_string()))?
                        .to_string()
                        .len()
                        + 1
                }
            };
            if size > reply_max_bytes {
                if page.is_empty() {
                    // Even alone this event does not fit: say so, so the
                    // client does not wait for a reply that cannot be sent.
                    return Err(ServiceError {
                        code: 413,
                        message: format!(
                            "event {} does not fit in one reply ({size} bytes, at most {reply_max_bytes}); read it with Content-Type: application/protobuf",
                            env.seq
                        ),
                    });
                }
                break;
            }
            page.push(env);
        }
        let next_seq = page.last().map_or(self.from_seq.max(1), |e| e.seq + 1);
        Ok(LogPage {
            events: page,
            next_seq,
        })
    }
}

/// A `log.read` reply.
#[derive(Debug, Clone, PartialEq)]
pub struct LogPage {
    /// The events, in log order.
    pub events: Vec<Envelope>,
    /// Where the next read continues.
    pub next_seq: u64,
}

impl Reply for LogPage {
    fn to_json(&self) -> Result<serde_json::Value, ServiceError> {
        let events = self
            .events
            .iter()
            .map(json::to_json)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ServiceError::internal(e.to_string()))?;
        Ok(serde_json::json!({ "events": events, "next_seq": self.next_seq }))
    }

    fn to_protobuf(&self) -> Vec<u8> {
        LogReadReply {
            events: self.events.clone(),
            next_seq: self.next_seq,
        }
        .encode_to_vec()
    }
}

/// The endpoint handler.
pub async fn handle_read(context: ServiceContext, request: Incoming) -> Result<Body, ServiceError> {
    let read = LogRead::from_json(&request.body)?;
    let format = request.format;
    let store = context.store.clone();
    let max = context.reply_max_bytes();
    let page = blocking(move || read.run(&store, max, format)).await?;
    Ok(match format {
        Format::Json => Body::Json(page.to_json()?),
        Format::Protobuf => Body::Protobuf(page.to_protobuf()),
    })
}

#[cfg(test)]
mod tests {
    use cairn_events::v1::LogReadRequest;
    use prost::Message as _;

    use super::*;
    use crate::service::codec::protobuf_as_json;

    #[test]
    fn requests_are_validated_by_field() {
        assert_eq!(
            LogRead::from_json(br#"{"from_seq": 5, "stream": "repo/a/b"}"#).unwrap(),
            LogRead {
                from_seq: 5,
                limit: DEFAULT_LIMIT,
                stream: Some(StreamId::new("repo/a/b").unwrap())
            }
        );
        assert_eq!(LogRead::from_json(b"").unwrap().limit, DEFAULT_LIMIT);
        let err = |p: &[u8]| LogRead::from_json(p).unwrap_err();
        assert_eq!(
            err(br#"{"from_seq":-1}"#).message,
            "from_seq: must be a non-negative integer, got -1"
        );
        assert_eq!(
            err(br#"{"limit":0}"#).message,
            "limit: must be an integer between 1 and 1000, got 0"
        );
        assert_eq!(
            err(br#"{"limit":-3}"#).message,
            "limit: must be an integer between 1 and 1000, got -3"
        );
        assert_eq!(err(br#"{"limit":99999999999999999999999}"#).code, 400);
        assert_eq!(
            err(br#"{"stream":""}"#).message,
            "stream: invalid stream id \"\": must not be empty"
        );
        assert_eq!(
            err(br#"{"stream":7}"#).message,
            "stream: must be a string, got 7"
        );
        assert_eq!(
            err(br#"{"from":1}"#).message,
            "from: unknown field, expected one of: from_seq, limit, stream"
        );
    }

    #[test]
    fn protobuf_requests_are_validated_too() {
        let ok = LogReadRequest {
            from_seq: 3,
            limit: 0,
            stream: String::new(),
        }
        .encode_to_vec();
        assert_eq!(
            LogRead::from_json(&protobuf_as_json::<LogReadRequest>(&ok).unwrap()).unwrap(),
            LogRead {
                from_seq: 3,
                limit: DEFAULT_LIMIT,
                stream: None
            }
        );
        let big = LogReadRequest {
            from_seq: 0,
            limit: 5000,
            stream: String::new(),
        }
        .encode_to_vec();
        assert_eq!(
            LogRead::from_json(&protobuf_as_json::<LogReadRequest>(&big).unwrap())
                .unwrap_err()
                .message,
            "limit: must be an integer between 1 and 1000, got 5000"
        );
        assert!(protobuf_as_json::<LogReadRequest>(b"\xff\xff")
            .unwrap_err()
            .message
            .starts_with("request body: invalid protobuf"));
    }
}
