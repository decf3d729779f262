//! Strict JSON request parsing whose errors name the field.
//!
//! serde's own messages say "invalid type: integer `-1`, expected u64 at
//! line 1 column 14"; a client needs to know *which* field. Requests are
//! parsed into a JSON object first, unknown fields are refused, and each
//! field is read with a typed accessor that names it in its error.
//!
//! A key given twice in one object, at any depth, is refused naming it
//! (`sync.schedule: duplicate key`): serde_json's `Value` keeps the last
//! silently, so a request could mean two things. The body is read
//! through [`Strict`], which builds the same `Value` and stops at the
//! first repeated key. A body of whitespace only (or empty) reads as `{}`.

use std::{cell::RefCell, fmt};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
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
        let duplicate = RefCell::new(None);
        let path = RefCell::new(Vec::new());
        let mut deserializer = serde_json::Deserializer::from_slice(payload);
        let value = Strict {
            path: &path,
            duplicate: &duplicate,
        }
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value))
        .map_err(|e| match duplicate.take() {
            Some(path) => ServiceError::bad_field(&path, "duplicate key"),
            None => ServiceError::bad_field("request body", format!("invalid JSON: {e}")),
        })?;
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

/// Reads one JSON value as serde_json's `Value` would, refusing a key
/// repeated in an object; the path of the first repeated one (`git.url`,
/// `resources["Kptfile"]`, `items[2].name`) goes to `duplicate`. The path
/// is kept as a stack of segments shared by the whole read and rendered
/// only for a duplicate, so reading costs no more than the body's size.
struct Strict<'a> {
    path: &'a RefCell<Vec<Segment>>,
    duplicate: &'a RefCell<Option<String>>,
}

/// One step of the path to a value.
enum Segment {
    /// A key of an object.
    Key(String),
    /// An index of an array.
    Index(usize),
}

/// `path` as errors name it: `.key` for a name like the requests' fields
/// (lowercase snake_case), else `["key"]` (a file path, a label); `[i]`
/// for an index.
fn render(path: &[Segment]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(key) => {
                let plain = key.starts_with(|c: char| c.is_ascii_lowercase())
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                match (out.is_empty(), plain) {
                    (true, true) => out.push_str(key),
                    (false, true) => {
                        let _ = write!(out, ".{key}");
                    }
                    (_, false) => {
                        let _ = write!(out, "[{key:?}]");
                    }
                }
            }
            Segment::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
    }
    out
}

impl Strict<'_> {
    fn child(&self) -> Self {
        Strict {
            path: self.path,
            duplicate: self.duplicate,
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            self.path.borrow_mut().push(Segment::Index(items.len()));
            let item = seq.next_element_seed(self.child())?;
            self.path.borrow_mut().pop();
            match item {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                let mut path = self.path.borrow_mut();
                path.push(Segment::Key(key));
                *self.duplicate.borrow_mut() = Some(render(&path));
                return Err(de::Error::custom("duplicate key"));
            }
            self.path.borrow_mut().push(Segment::Key(key.clone()));
            let value = map.next_value_seed(self.child())?;
            self.path.borrow_mut().pop();
            object.insert(key, value);
        }
        Ok(Value::Object(object))
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

    /// The path to a value is built only for a duplicate: a long key over
    /// a long array reads in time linear in the body (the path used to be
    /// formatted anew for each element — 20 GB of copies for this body).
    #[test]
    fn a_long_key_over_a_long_array_reads_in_linear_time() {
        let key = "k".repeat(100_000);
        let body = format!("{{\"{key}\":[{}0]}}", "0,".repeat(200_000));
        let started = std::time::Instant::now();
        let f = Fields::parse(body.as_bytes(), &[key.as_str()]).unwrap();
        assert_eq!(f.map[&key].as_array().unwrap().len(), 200_001);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        let dup = format!("{{\"a\":[{{\"{key}\":1}},{{\"x\":1,\"x\":2}}]}}");
        assert_eq!(
            Fields::parse(dup.as_bytes(), &["a"]).unwrap_err().message,
            "a[1].x: duplicate key"
        );
    }

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
        assert!(Fields::parse(b" \r\n\t", &[]).unwrap().map.is_empty());
        let f = Fields::parse(br#"{"limit":null}"#, &["limit"]).unwrap();
        assert_eq!(f.u64_in("limit", 1, 10).unwrap(), None);
    }

    #[test]
    fn a_key_given_twice_is_refused_naming_it() {
        let msg = |payload: &str| {
            Fields::parse(
                payload.as_bytes(),
                &["namespace", "git", "sync", "items", "resources"],
            )
            .unwrap_err()
            .message
        };
        assert_eq!(
            msg(r#"{"namespace":"a","namespace":"b"}"#),
            "namespace: duplicate key"
        );
        assert_eq!(
            msg(r#"{"git":{"url":"x","branch":"m","url":"y"}}"#),
            "git.url: duplicate key"
        );
        assert_eq!(
            msg(r#"{"sync":{"schedule":"* * * * *","schedule":"L * * * *"}}"#),
            "sync.schedule: duplicate key"
        );
        assert_eq!(
            msg(r#"{"resources":{"a b.yaml":"1","a b.yaml":"2"}}"#),
            "resources[\"a b.yaml\"]: duplicate key"
        );
        assert_eq!(
            msg(r#"{"resources":{"Kptfile":"1","x.yaml":"","Kptfile":"1"}}"#),
            "resources[\"Kptfile\"]: duplicate key"
        );
        assert_eq!(
            msg(r#"{"items":[{"name":1},{"name":1,"name":2}]}"#),
            "items[1].name: duplicate key"
        );
        // Even when the same value is repeated, and before unknown fields.
        assert_eq!(msg(r#"{"nope":1,"nope":1}"#), "nope: duplicate key");
        // The same key in different objects is no repetition; the value
        // is serde_json's own.
        let body = r#"{"git":{"url":"x"},"sync":{"url":"x"},"items":[{"a":1.5,"b":-2,"c":null,"d":[true]},{"a":1}]}"#;
        let f = Fields::parse(body.as_bytes(), &["git", "sync", "items"]).unwrap();
        assert_eq!(
            Value::Object(f.map),
            serde_json::from_str::<Value>(body).unwrap()
        );
        // Still invalid JSON when it is.
        assert!(msg(r#"{"namespace":"a"} x"#)
            .starts_with("request body: invalid JSON: trailing characters"));
    }
}
