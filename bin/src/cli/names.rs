//! How the command line names things: one form everywhere.
//!
//! Every argument and flag that names a repository or a package revision
//! — positional names, `--repository`, `--clone-from`, `log --stream` —
//! takes `NAMESPACE/NAME`, or a bare `NAME` in the namespace of
//! `-n/--namespace` (default `$CAIRN_NAMESPACE`, else `default`), as
//! kubectl and porchctl resolve names. A package revision's NAME is its
//! Porch object name (`repo.path.package.workspace`); a repository's is
//! its name. `log --stream` also takes a stream id as the log prints it
//! (`repo/NAMESPACE/NAME`).
//!
//! Errors name the argument as the user typed it (`--repository
//! "a/b/c": …`), never a request field.

use std::fmt;

/// A namespaced name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key {
    /// The namespace.
    pub(crate) ns: String,
    /// The name in it.
    pub(crate) name: String,
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ns, self.name)
    }
}

impl Key {
    /// `{"namespace","name"}`, the key of most requests.
    pub(crate) fn body(&self) -> serde_json::Value {
        serde_json::json!({"namespace": self.ns, "name": self.name})
    }
}

/// `text` (the value of `what`, e.g. `--repository` or `NAME`) as a key:
/// `ns/name`, or a bare `name` in `namespace`.
pub(crate) fn key(what: &str, text: &str, namespace: &str) -> anyhow::Result<Key> {
    let bad =
        |why: &str| anyhow::anyhow!("{what} {text:?}: {why}; expected NAME or NAMESPACE/NAME");
    match text.split_once('/') {
        None if text.is_empty() => Err(bad("empty")),
        None => Ok(Key {
            ns: namespace.to_owned(),
            name: text.to_owned(),
        }),
        Some((_, name)) if name.contains('/') => Err(bad("more than one '/'")),
        Some((ns, name)) if ns.is_empty() || name.is_empty() => Err(bad("an empty part")),
        Some((ns, name)) => {
            dns_label(ns).map_err(|why| anyhow::anyhow!("{what} {text:?}: namespace {why}"))?;
            Ok(Key {
                ns: ns.to_owned(),
                name: name.to_owned(),
            })
        }
    }
}

/// The stream id of `log --stream`: `repo/NS/NAME` as is, else the
/// repository `NS/NAME` (or `NAME` in `namespace`).
pub(crate) fn stream(text: &str, namespace: &str) -> anyhow::Result<String> {
    if let Some(rest) = text.strip_prefix("repo/") {
        if rest.split('/').count() == 2 && !rest.split('/').any(str::is_empty) {
            return Ok(text.to_owned());
        }
    }
    let repository = key("--stream", text, namespace)?;
    Ok(format!("repo/{}/{}", repository.ns, repository.name))
}

/// Checks a namespace as the node will (a DNS-1123 label: at most 63
/// lowercase letters, digits and `-`, starting and ending with a letter
/// or digit); the reason otherwise.
pub(crate) fn dns_label(text: &str) -> Result<(), String> {
    let ok = !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{text:?} is not a valid name (lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit)"
        ))
    }
}

/// The clap value parser of `-n/--namespace`.
pub(crate) fn namespace_arg(text: &str) -> Result<String, String> {
    dns_label(text).map(|()| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_take_one_form() {
        assert_eq!(
            key("NAME", "team-a/r.app.v1", "default")
                .unwrap()
                .to_string(),
            "team-a/r.app.v1"
        );
        assert_eq!(key("NAME", "r", "team-b").unwrap().to_string(), "team-b/r");
        assert_eq!(
            key("--repository", "a/b/c", "default")
                .unwrap_err()
                .to_string(),
            "--repository \"a/b/c\": more than one '/'; expected NAME or NAMESPACE/NAME"
        );
        assert_eq!(
            key("NAME", "/x", "default").unwrap_err().to_string(),
            "NAME \"/x\": an empty part; expected NAME or NAMESPACE/NAME"
        );
        assert!(key("NAME", "Team/x", "default")
            .unwrap_err()
            .to_string()
            .starts_with("NAME \"Team/x\": namespace \"Team\" is not a valid name"));
    }

    #[test]
    fn streams_are_repositories_or_stream_ids() {
        assert_eq!(stream("team-a/drafts", "x").unwrap(), "repo/team-a/drafts");
        assert_eq!(stream("drafts", "team-b").unwrap(), "repo/team-b/drafts");
        assert_eq!(
            stream("repo/team-a/drafts", "x").unwrap(),
            "repo/team-a/drafts"
        );
    }
}
