//! How package revisions are named: the Porch object name. A leaf module,
//! so the component, the upstream read and the decisions share it without
//! importing each other.

/// The longest object name of a package revision cairn creates, in bytes:
/// Porch's bound (the object name is a Kubernetes name, a DNS-1123
/// subdomain: at most 253 characters); `pkgrev.get` and the other commands
/// take no longer name either.
pub const OBJECT_NAME_MAX_BYTES: usize = 253;

/// The Porch object name of a package revision:
/// `<repo>.<path with / as .>.<package>.<workspace>`.
pub fn object_name(repository: &str, path: &str, package: &str, workspace: &str) -> String {
    let path = path.trim_matches('/');
    if path.is_empty() {
        format!("{repository}.{package}.{workspace}")
    } else {
        format!(
            "{repository}.{}.{package}.{workspace}",
            path.replace('/', ".")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_follow_porch() {
        assert_eq!(
            object_name("blueprints", "", "basens", "main"),
            "blueprints.basens.main"
        );
        assert_eq!(
            object_name("r", "catalog/namespace", "basens", "v2"),
            "r.catalog.namespace.basens.v2"
        );
        assert_eq!(object_name("r", "/catalog/", "b", "v1"), "r.catalog.b.v1");
    }
}
