//! Label selectors as kubectl takes them (`-l`): requirements separated by
//! commas — `key=value` (or `==`), `key!=value`, `key in (a,b)`,
//! `key notin (a,b)`, `key` (has the label), `!key` (has not).
//!
//! The node filters labels by equality only (`pkgrev.list`'s `labels`), so
//! the CLI sends the equality requirements to the node (narrowing what it
//! pages) and applies the whole selector to what comes back.

use std::collections::BTreeMap;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Requirement {
    /// `key=value`, `key==value`.
    Equals(String, String),
    /// `key!=value` (also true without the label, as in kubectl).
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)` (also true without the label).
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

/// A selector: every requirement holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Selector(pub(crate) Vec<Requirement>);

impl Selector {
    /// Whether `labels` satisfy every requirement.
    pub(crate) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    /// The `key=value` requirements (what the node can filter on).
    pub(crate) fn equalities(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .filter_map(|r| match r {
                Requirement::Equals(k, v) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }

    /// Whether it holds nothing but `key=value` requirements.
    pub(crate) fn only_equalities(&self) -> bool {
        self.0.iter().all(|r| matches!(r, Requirement::Equals(..)))
    }
}

/// The clap value parser of `-l/--selector`: one selector (several `-l`
/// add up).
pub(crate) fn parse(text: &str) -> Result<Selector, String> {
    let mut requirements = Vec::new();
    for part in split_outside_parens(text) {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("{text:?}: an empty requirement"));
        }
        requirements.push(requirement(part)?);
    }
    Ok(Selector(requirements))
}

fn requirement(part: &str) -> Result<Requirement, String> {
    let key = |k: &str| -> Result<String, String> {
        let k = k.trim();
        if k.is_empty() || k.contains(|c: char| c.is_whitespace() || "=!(),".contains(c)) {
            Err(format!("{part:?}: {k:?} is not a label key"))
        } else {
            Ok(k.to_owned())
        }
    };
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(key(k)?, v.trim().to_owned()));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::Equals(key(k)?, v.trim().to_owned()));
    }
    if let Some(k) = part.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(key(k)?));
    }
    let words: Vec<&str> = part.splitn(2, char::is_whitespace).collect();
    if let [k, rest] = words[..] {
        let rest = rest.trim_start();
        let (notin, values) = if let Some(v) = rest.strip_prefix("notin") {
            (true, v)
        } else if let Some(v) = rest.strip_prefix("in") {
            (false, v)
        } else {
            return Err(format!(
                "{part:?}: expected key=value, key!=value, key in (a,b), key notin (a,b), key or !key"
            ));
        };
        let values = values
            .trim()
            .strip_prefix('(')
            .and_then(|v| v.strip_suffix(')'))
            .ok_or_else(|| format!("{part:?}: the values go in parentheses: (a,b)"))?;
        let values: Vec<String> = values.split(',').map(|v| v.trim().to_owned()).collect();
        let k = key(k)?;
        return Ok(if notin {
            Requirement::NotIn(k, values)
        } else {
            Requirement::In(k, values)
        });
    }
    Ok(Requirement::Exists(key(part)?))
}

/// `text` split at the commas outside parentheses.
fn split_outside_parens(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn selectors_parse_and_match_as_kubectl() {
        let s = parse("tier=base,env!=prod,region in (eu, us),!legacy,owner").unwrap();
        assert_eq!(
            s.0,
            vec![
                Requirement::Equals("tier".into(), "base".into()),
                Requirement::NotEquals("env".into(), "prod".into()),
                Requirement::In("region".into(), vec!["eu".into(), "us".into()]),
                Requirement::DoesNotExist("legacy".into()),
                Requirement::Exists("owner".into()),
            ]
        );
        let ok = labels(&[("tier", "base"), ("region", "eu"), ("owner", "a")]);
        assert!(s.matches(&ok));
        assert!(!s.matches(&labels(&[
            ("tier", "base"),
            ("region", "ap"),
            ("owner", "a")
        ])));
        assert!(!s.matches(&labels(&[
            ("tier", "base"),
            ("region", "eu"),
            ("owner", "a"),
            ("env", "prod")
        ])));
        assert_eq!(s.equalities(), labels(&[("tier", "base")]));
        assert!(parse("a notin (x)").unwrap().matches(&labels(&[])));
        assert!(parse("a==b").unwrap().only_equalities());
        assert_eq!(
            parse("a in x").unwrap_err(),
            "\"a in x\": the values go in parentheses: (a,b)"
        );
        assert_eq!(parse("a,,b").unwrap_err(), "\"a,,b\": an empty requirement");
    }
}
