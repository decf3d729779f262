//! The JSON rendering of envelopes, used by `cairn log -o json` and by NATS
//! JSON payloads.
//!
//! It is the proto3 JSON mapping of [`Envelope`] with proto field names
//! (pbjson), plus a `"type"` field with the event's name, and with the
//! envelope's `seq` and `stream_version` as JSON numbers rather than the
//! strings proto3 JSON uses for 64-bit integers (both forms parse back).

use serde_json::{Map, Value};

use crate::{envelope::kind, v1::Envelope, EventsError};

/// Renders `envelope` as a JSON object.
pub fn to_json(envelope: &Envelope) -> Result<Value, EventsError> {
    let kind = kind(envelope)?;
    let mut value = serde_json::to_value(envelope)?;
    if let Value::Object(map) = &mut value {
        numbers_for(map, &["seq", "stream_version"]);
        map.insert("type".to_owned(), Value::String(kind.name().to_owned()));
    }
    Ok(value)
}

/// Parses the JSON rendering back into an envelope (the `"type"` field is
/// informational and ignored).
pub fn from_json(value: &Value) -> Result<Envelope, EventsError> {
    let mut value = value.clone();
    if let Value::Object(map) = &mut value {
        map.remove("type");
    }
    Ok(serde_json::from_value(value)?)
}

fn numbers_for(map: &mut Map<String, Value>, fields: &[&str]) {
    for field in fields {
        if let Some(Value::String(s)) = map.get(*field) {
            if let Ok(n) = s.parse::<u64>() {
                map.insert((*field).to_owned(), Value::from(n));
            }
        }
    }
}
