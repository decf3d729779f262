//! The `kpt:{…}` annotations Porch writes into commit messages.
//!
//! One annotation per line, `kpt:` followed by a JSON object with the fields
//! `package` (package path in the repository), `workspaceName`, `revision`
//! (`N` as current Porch writes it, `0` on a draft; `vN` in older Porch and
//! the fixtures: it is kept as text, both read) and `task` (the Porch task
//! that caused the commit). A line that does not parse, or whose fields
//! have the wrong types, is skipped: it never fails discovery (Porch logs
//! and ignores it the same way). Other lines (a `Cairn-Principal:`
//! trailer) are not annotations.

use serde_json::Value;

/// One entry of a revision's task history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// Task type: `init`, `clone`, `edit`, `eval`, `patch`, …
    pub r#type: String,
    /// The task's JSON exactly as written in the commit message.
    pub raw: String,
}

/// One parsed `kpt:` line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Annotation {
    /// `package`: the package path in the repository, e.g. `catalog/gcp/bucket`.
    pub(crate) package: String,
    /// `workspaceName`, empty when absent (annotations older than workspaces).
    pub(crate) workspace_name: String,
    /// `revision`, e.g. `1` (current Porch), `v1` (older); empty when
    /// absent.
    pub(crate) revision: String,
    /// `task`, when the commit was made by a task with a `type`.
    pub(crate) task: Option<Task>,
}

/// Every well-formed annotation in `message`, in line order.
pub(crate) fn parse_message(message: &str) -> Vec<Annotation> {
    message
        .lines()
        .filter_map(|line| line.trim().strip_prefix("kpt:"))
        .filter_map(parse_annotation)
        .collect()
}

fn parse_annotation(json: &str) -> Option<Annotation> {
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(json) else {
        return None;
    };
    // Like Go's json.Unmarshal into the annotation struct: a field of the
    // wrong type rejects the whole line; `null` counts as absent.
    let string_field = |name: &str| match fields.get(name) {
        None | Some(Value::Null) => Some(String::new()),
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => None,
    };
    let package = string_field("package")?;
    let workspace_name = string_field("workspaceName")?;
    let revision = string_field("revision")?;
    let task = match fields.get("task") {
        None | Some(Value::Null) => None,
        Some(Value::Object(task)) => match task.get("type") {
            // A task without a type says nothing usable; keep the rest.
            Some(Value::String(kind)) if !kind.is_empty() => Some(Task {
                r#type: kind.clone(),
                raw: raw_member(json, "task")?.to_owned(),
            }),
            None | Some(Value::Null) | Some(Value::String(_)) => None,
            Some(_) => return None,
        },
        Some(_) => return None,
    };
    Some(Annotation {
        package,
        workspace_name,
        revision,
        task,
    })
}

/// The text of the value of the top-level member `key` of the JSON object
/// `json` (already known to be valid JSON), exactly as written. The last
/// occurrence wins, as in serde_json and Go.
fn raw_member<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let b = json.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut found = None;
    loop {
        i = skip_ws(b, i);
        match b.get(i)? {
            b'}' => return found,
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let key_end = skip_string(b, i)?;
        let name: String = serde_json::from_str(&json[i..key_end]).ok()?;
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let value_end = skip_value(b, i)?;
        if name == key {
            found = Some(&json[i..value_end]);
        }
        i = value_end;
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// `b[i]` is an opening quote; returns the index after the closing quote.
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}

/// Returns the index after the JSON value starting at `b[i]`.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            Some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_task_annotation_and_keeps_raw_task_text() {
        let msg = "Intermediate commit: eval\nkpt:{\"package\":\"a/b\",\"workspaceName\":\"ws\",\
                   \"task\":{\"type\":\"eval\",\"eval\":{\"image\":\"render\",\"config\":null,\"match\":{}}}}\n";
        let got = parse_message(msg);
        assert_eq!(
            got,
            vec![Annotation {
                package: "a/b".into(),
                workspace_name: "ws".into(),
                revision: String::new(),
                task: Some(Task {
                    r#type: "eval".into(),
                    raw: "{\"type\":\"eval\",\"eval\":{\"image\":\"render\",\"config\":null,\"match\":{}}}"
                        .into(),
                }),
            }]
        );
    }

    #[test]
    fn raw_task_survives_strings_with_braces_and_escapes() {
        let line = r#"{"task":{"type":"patch","p":"}{\"]"},"package":"p","revision":"v2"}"#;
        let a = parse_annotation(line).unwrap();
        assert_eq!(a.package, "p");
        assert_eq!(a.revision, "v2");
        assert_eq!(
            a.task.unwrap().raw,
            r#"{"type":"patch","p":"}{\"]"}"#.to_owned()
        );
    }

    #[test]
    fn malformed_lines_are_skipped_not_fatal() {
        let msg = "invalid annotation\nkpt:{invalid:annotation}\nkpt:[1]\nkpt:{\"package\":3}\n\
                   kpt:{\"package\":\"ok\",\"revision\":\"v1\"}";
        let got = parse_message(msg);
        assert_eq!(
            got,
            vec![Annotation {
                package: "ok".into(),
                revision: "v1".into(),
                ..Annotation::default()
            }]
        );
    }
}
