//! Request formats, the size limit, replies and error replies.

use async_nats::{service::Request, HeaderMap};
use bytes::Bytes;
use cairn_events::v1::ErrorReply;
use prost::Message as _;
use tracing::warn;

use crate::ServiceError;

/// Content type of protobuf requests and replies.
pub const PROTOBUF: &str = "application/protobuf";

/// How a request is encoded, and so how its reply is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON (the default).
    Json,
    /// Protobuf, when the request says `Content-Type: application/protobuf`.
    Protobuf,
}

impl Format {
    /// The format `request` asks for.
    pub fn of(request: &Request) -> Format {
        let content_type = request
            .message
            .headers
            .as_ref()
            .and_then(|h| h.get("Content-Type"))
            .map(|v| v.as_str().to_ascii_lowercase());
        match content_type.as_deref() {
            Some(ct) if ct.starts_with(PROTOBUF) || ct.starts_with("application/x-protobuf") => {
                Format::Protobuf
            }
            _ => Format::Json,
        }
    }
}

/// Refuses bodies over `max` bytes, naming the limit.
pub fn check_size(payload: &[u8], max: usize) -> Result<(), ServiceError> {
    if payload.len() > max {
        return Err(ServiceError::bad_field(
            "payload",
            format!("{} bytes, at most {max} allowed", payload.len()),
        ));
    }
    Ok(())
}

/// `text` made fit for a NATS header value: control characters (a client
/// can put CR/LF into a field name it sends) become `?`, and it is capped at
/// 1024 bytes. The body keeps the exact message.
pub fn header_safe(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if out.len() > 1024 {
        let cut = (0..=1024)
            .rev()
            .find(|i| out.is_char_boundary(*i))
            .unwrap_or(0);
        out.truncate(cut);
    }
    out
}

/// The request body as JSON, whatever it was sent as: JSON passes through;
/// a protobuf `M` is decoded and rendered in its proto3 JSON mapping, so a
/// single validation path (with its field-naming errors) serves both.
pub fn request_json<M>(
    request: &Request,
    max_bytes: usize,
) -> Result<(Format, Vec<u8>), ServiceError>
where
    M: prost::Message + Default + serde::Serialize,
{
    let payload = &request.message.payload;
    check_size(payload, max_bytes)?;
    match Format::of(request) {
        Format::Json => Ok((Format::Json, payload.to_vec())),
        Format::Protobuf => Ok((Format::Protobuf, protobuf_as_json::<M>(payload)?)),
    }
}

/// Decodes a protobuf `M` and renders it in its proto3 JSON mapping.
pub fn protobuf_as_json<M>(payload: &[u8]) -> Result<Vec<u8>, ServiceError>
where
    M: prost::Message + Default + serde::Serialize,
{
    let message = M::decode(payload).map_err(|e| {
        let name = std::any::type_name::<M>()
            .rsplit("::")
            .next()
            .unwrap_or("message");
        ServiceError::bad_field("request body", format!("invalid protobuf {name}: {e}"))
    })?;
    serde_json::to_vec(&message).map_err(|e| ServiceError::internal(e.to_string()))
}

/// A reply built in the format the request asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A JSON reply.
    Json(serde_json::Value),
    /// An encoded protobuf reply.
    Protobuf(Vec<u8>),
    /// A JSON reply already serialised (large pages are assembled as bytes,
    /// and may be shared with the page cache).
    JsonBytes(Bytes),
}

impl Body {
    /// Builds only the form `format` needs.
    pub fn of(
        format: Format,
        json: impl FnOnce() -> serde_json::Value,
        protobuf: impl FnOnce() -> Vec<u8>,
    ) -> Self {
        match format {
            Format::Json => Body::Json(json()),
            Format::Protobuf => Body::Protobuf(protobuf()),
        }
    }
}

impl Reply for Body {
    fn to_json(&self) -> Result<serde_json::Value, ServiceError> {
        match self {
            Body::Json(v) => Ok(v.clone()),
            Body::JsonBytes(b) => {
                serde_json::from_slice(b).map_err(|e| ServiceError::internal(e.to_string()))
            }
            Body::Protobuf(_) => Err(ServiceError::internal("protobuf reply asked for as JSON")),
        }
    }

    fn to_protobuf(&self) -> Vec<u8> {
        match self {
            Body::Protobuf(b) => b.clone(),
            Body::JsonBytes(b) => b.to_vec(),
            Body::Json(v) => v.to_string().into_bytes(),
        }
    }

    fn into_json_bytes(self) -> Result<Bytes, ServiceError> {
        match self {
            Body::JsonBytes(b) => Ok(b),
            // Serialised in place, not cloned first.
            Body::Json(v) => serde_json::to_vec(&v)
                .map(Bytes::from)
                .map_err(|e| ServiceError::internal(e.to_string())),
            other => serde_json::to_vec(&other.to_json()?)
                .map(Bytes::from)
                .map_err(|e| ServiceError::internal(e.to_string())),
        }
    }

    fn into_protobuf(self) -> Bytes {
        match self {
            Body::Protobuf(b) => Bytes::from(b),
            other => Bytes::from(other.to_protobuf()),
        }
    }
}

/// A reply body in both formats.
pub trait Reply: Sized {
    /// The JSON body.
    fn to_json(&self) -> Result<serde_json::Value, ServiceError>;
    /// The protobuf body.
    fn to_protobuf(&self) -> Vec<u8>;
    /// The JSON body, serialised (without a copy when it already is).
    fn into_json_bytes(self) -> Result<Bytes, ServiceError> {
        serde_json::to_vec(&self.to_json()?)
            .map(Bytes::from)
            .map_err(|e| ServiceError::internal(e.to_string()))
    }
    /// The protobuf body (without a copy when it already is encoded).
    fn into_protobuf(self) -> Bytes {
        Bytes::from(self.to_protobuf())
    }
}

/// Sends `result` to the requester in `format`, with `extra` headers on a
/// success.
pub async fn respond<R: Reply>(
    request: &Request,
    format: Format,
    result: Result<R, ServiceError>,
    extra: &[(&'static str, String)],
) {
    let outcome = result.and_then(|reply| match format {
        Format::Json => reply.into_json_bytes(),
        Format::Protobuf => Ok(reply.into_protobuf()),
    });
    let sent = match outcome {
        Ok(body) => {
            let mut headers = HeaderMap::new();
            if format == Format::Protobuf {
                headers.insert("Content-Type", PROTOBUF);
            }
            for (name, value) in extra {
                headers.insert(*name, value.as_str());
            }
            request.respond_with_headers(Ok(body), headers).await
        }
        Err(error) => {
            // The micro protocol's error headers, plus a body naming the
            // problem (the stock error reply has an empty body).
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Service-Error", header_safe(&error.message).as_str());
            headers.insert("Nats-Service-Error-Code", error.code.to_string().as_str());
            let body = match format {
                Format::Json => serde_json::json!({"code": error.code, "message": error.message})
                    .to_string()
                    .into_bytes(),
                Format::Protobuf => {
                    headers.insert("Content-Type", PROTOBUF);
                    ErrorReply {
                        code: u32::from(error.code),
                        message: error.message.clone(),
                    }
                    .encode_to_vec()
                }
            };
            request
                .respond_with_headers(Ok(Bytes::from(body)), headers)
                .await
        }
    };
    if let Err(e) = sent {
        // The reply could not be sent (e.g. over the server's max payload);
        // endpoints size their replies so this is a bug, not bad input.
        warn!(error = %e, subject = %request.message.subject, "cannot send reply");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_never_carry_control_characters() {
        assert_eq!(header_safe("a\r\nb: unknown field"), "a??b: unknown field");
        assert_eq!(header_safe(&"é".repeat(600)).len(), 1024);
    }
}
