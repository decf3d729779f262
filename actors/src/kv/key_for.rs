//! Function-result keys (seed 004's `from_function_call`): one canonical
//! key per call, `fn:<function>:<sha256 hex of canonical JSON of
//! {"args": args, "kwargs": kwargs}>`.
//!
//! Canonical JSON: objects with their keys sorted (by UTF-8 bytes, at every
//! depth), no whitespace, numbers and strings as serde_json writes them.
//! So the same call always gives the same key, and the order in which
//! kwargs (or any nested object's fields) were written does not matter;
//! the order of `args` does (positions are meaningful).

use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// Writes `value` as canonical JSON into `out`.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The canonical key of calling `function` with `args` and `kwargs`.
pub fn key_for(function: &str, args: &[Value], kwargs: &serde_json::Map<String, Value>) -> String {
    let mut text = String::new();
    let call = serde_json::json!({ "args": args, "kwargs": kwargs });
    canonical(&call, &mut text);
    let digest = Sha256::digest(text.as_bytes());
    format!("fn:{function}:{}", hex::encode(digest))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn same_call_same_key_and_kwargs_order_does_not_matter() {
        let a: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"b": 2, "a": {"y": 1, "x": [1, 2]}}"#).unwrap();
        let b: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"a": {"x": [1, 2], "y": 1}, "b": 2}"#).unwrap();
        let k1 = key_for("render", &[json!("pkg")], &a);
        assert_eq!(k1, key_for("render", &[json!("pkg")], &b));
        assert_eq!(
            k1,
            format!(
                "fn:render:{}",
                hex::encode(Sha256::digest(
                    br#"{"args":["pkg"],"kwargs":{"a":{"x":[1,2],"y":1},"b":2}}"#
                ))
            )
        );
        assert_ne!(k1, key_for("render", &[json!("other")], &a));
        assert_ne!(
            key_for("f", &[json!(1), json!(2)], &Default::default()),
            key_for("f", &[json!(2), json!(1)], &Default::default())
        );
    }
}
