//! How the command line names things.

/// Splits `<namespace>/<name>`.
pub(super) fn split_key(key: &str) -> anyhow::Result<(&str, &str)> {
    key.split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
        .ok_or_else(|| anyhow::anyhow!("{key:?}: expected <namespace>/<name>"))
}
