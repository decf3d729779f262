//! Strict JSON request parsing whose errors name the field.
//!
//! serde's own messages say "invalid type: integer `-1`, expected u64 at
//! line 1 column 14"; a client needs to know *which* field. Requests are
//! parsed into a JSON object first, unknown fields are refused, and each
//! field is read with a typed accessor that names it in its error.

use serde_json::{Map, Value};

use crate::ServiceError;

/// A request body (or a nested object of one): a JSON object with only
/// known fields. Errors name nested fields by path (`git.url`).
#[derive(Debug)]
pub struct Fields {
    map: Map<String, Value>,
    prefix: String,
}

impl Fields {
    /// Parses `payload` (empty means `{}`), refusing fields not in `allowed`.
    pub fn parse(payload: &[u8], allowed: &[&str]) -> Result<Self, ServiceError> {
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self {
                map: Map::new(),
                prefix: String::new(),
            });
        }
        let value: Value = serde_json::from_slice(payload)
            .map_err(|e| ServiceError::bad_field("request body", format!("invalid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(ServiceError::bad_field(
                "request body",
                "must be a JSON object",
            ));
        };
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ServiceError::bad_field(
                unknown,
                format!("unknown field, expected one of: {}", allowed.join(", ")),
            ));
        }
        Ok(Self {
            map,
            prefix: String::new(),
        })
    }

    /// The path of field `name` in error messages.
    pub fn path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// An optional nested object with only the `allowed` fields.
    pub fn object(&self, name: &str, allowed: &[&str]) -> Result<Option<Fields>, ServiceError> {
        let path = self.path(name);
        match self.present(name) {
            None => Ok(None),
            Some(Value::Object(map)) => {
                if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
                    return Err(ServiceError::bad_field(
                        &format!("{path}.{unknown}"),
                        format!("unknown field, expected one of: {}", allowed.join(", ")),
                    ));
                }
                Ok(Some(Fields {
                    map: map.clone(),
                    prefix: format!("{path}."),
                }))
            }
            Some(v) => Err(ServiceError::bad_field(
                &path,
                format!("must be an object, got {}", shown(v)),
            )),
        }
    }

    /// An optional boolean.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, ServiceError> {
        match self.present(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ServiceError::bad_field(
                &self.path(name),
                format!("must be true or false, got {}", shown(v)),
            )),
        }
    }

    /// An optional array of strings.
    pub fn strings(&self, name: &str) -> Result<Option<Vec<String>>, ServiceError> {
        match self.present(name) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| {
                    ServiceError::bad_field(&self.path(name), "must be an array of strings")
                }),
            Some(v) => Err(ServiceError::bad_field(
                &self.path(name),
                format!("must be an array of strings, got {}", shown(v)),
            )),
        }
    }

    /// An optional object of string values.
    pub fn string_map(
        &self,
        name: &str,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, ServiceError> {
        match self.present(name) {
            None => Ok(None),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect::<Option<_>>()
                .map(Some)
                .ok_or_else(|| {
                    ServiceError::bad_field(&self.path(name), "must be an object of strings")
                }),
            Some(v) => Err(ServiceError::bad_field(
                &self.path(name),
                format!("must be an object of strings, got {}", shown(v)),
            )),
        }
    }

    /// A required string.
    pub fn required(&self, name: &str) -> Result<String, ServiceError> {
        self.string(name)?
            .ok_or_else(|| ServiceError::bad_field(&self.path(name), "required"))
    }

    fn present(&self, name: &str) -> Option<&Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    /// The raw value of field `name`, when present and not null.
    pub fn value(&self, name: &str) -> Option<&Value> {
        self.present(name)
    }

    /// An optional non-negative integer.
    pub fn u64(&self, name: &str) -> Result<Option<u64>, ServiceError> {
        match self.present(name) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .or_else(|| proto_json_u64(v))
                .map(Some)
                .ok_or_else(|| {
                    ServiceError::bad_field(
                        &self.path(name),
                        format!("must be a non-negative integer, got {}", shown(v)),
                    )
                }),
        }
    }

    /// An optional integer in `min..=max`; any other value (negative, too
    /// large, fractional, not a number) gets the same message.
    pub fn u64_in(&self, name: &str, min: u64, max: u64) -> Result<Option<u64>, ServiceError> {
        match self.present(name) {
            None => Ok(None),
            Some(v) => match v.as_u64().or_else(|| proto_json_u64(v)) {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(ServiceError::bad_field(
                    &self.path(name),
                    format!(
                        "must be an integer between {min} and {max}, got {}",
                        shown(v)
                    ),
                )),
            },
        }
    }

    /// An optional string.
    pub fn string(&self, name: &str) -> Result<Option<String>, ServiceError> {
        match self.present(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(ServiceError::bad_field(
                &self.path(name),
                format!("must be a string, got {}", shown(v)),
            )),
        }
    }
}

/// proto3 JSON writes 64-bit integers as decimal strings (and protobuf
/// requests are validated in that form), so `"42"` counts as 42.
fn proto_json_u64(v: &Value) -> Option<u64> {
    let s = v.as_str()?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn shown(v: &Value) -> String {
    let text = v.to_string();
    if text.len() > 40 {
        format!(
            "{}…",
            &text[..text.char_indices().nth(40).map_or(text.len(), |(i, _)| i)]
        )
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let msg = |payload: &str| {
            Fields::parse(payload.as_bytes(), &["from_seq", "limit"])
                .unwrap_err()
                .message
        };
        assert_eq!(msg("[1]"), "request body: must be a JSON object");
        assert!(msg("{\"from_seq\":").starts_with("request body: invalid JSON: EOF while parsing"));
        assert_eq!(
            msg("{\"nope\":1}"),
            "nope: unknown field, expected one of: from_seq, limit"
        );

        let f = Fields::parse(br#"{"from_seq":-1,"limit":"x"}"#, &["from_seq", "limit"]).unwrap();
        assert_eq!(
            f.u64("from_seq").unwrap_err().message,
            "from_seq: must be a non-negative integer, got -1"
        );
        assert_eq!(f.string("limit").unwrap(), Some("x".into()));
        assert_eq!(
            f.u64("limit").unwrap_err().message,
            "limit: must be a non-negative integer, got \"x\""
        );

        let f = Fields::parse(br#"{"limit":1e30}"#, &["limit"]).unwrap();
        assert_eq!(
            f.u64_in("limit", 1, 1000).unwrap_err().message,
            "limit: must be an integer between 1 and 1000, got 1e+30"
        );
        let f = Fields::parse(br#"{"limit":5000}"#, &["limit"]).unwrap();
        assert_eq!(
            f.u64_in("limit", 1, 1000).unwrap_err().message,
            "limit: must be an integer between 1 and 1000, got 5000"
        );
        let f = Fields::parse(b"  ", &["limit"]).unwrap();
        assert_eq!(f.u64("limit").unwrap(), None);
        let f = Fields::parse(br#"{"limit":null}"#, &["limit"]).unwrap();
        assert_eq!(f.u64_in("limit", 1, 10).unwrap(), None);
    }
}
