//! Validation of names, refs and paths in requests; errors name the field.

use crate::ServiceError;

/// Checks a Kubernetes-style name (DNS-1123 label): 1 to 63 characters,
/// lowercase letters, digits and `-`, starting and ending with a letter or
/// digit.
pub fn dns_label(field: &str, value: &str) -> Result<(), ServiceError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ServiceError::bad_field(
            field,
            format!("{value:?} is not a valid name (a DNS-1123 label: lowercase letters, digits and '-', 1-63 characters, starting and ending with a letter or digit)"),
        ))
    }
}

/// Checks a Git branch name: the rules of `git check-ref-format --branch`
/// (libgit2's, through [`crate::origin::names::check_ref`], which also
/// bounds each component and the whole ref), and at most 255 bytes — and
/// Porch's rule (`ValidateDirectoryName` in `OpenRepository`: no `//`, and
/// the name without its `/` a DNS-1123 label — lowercase letters, digits
/// and `-`, starting and ending with a letter or digit, at most 63), so a
/// repository cairn registers is one Porch can open too.
pub fn branch(field: &str, value: &str) -> Result<(), ServiceError> {
    git_branch(field, value)?;
    let flat: String = value.chars().filter(|&c| c != '/').collect();
    let label = !flat.is_empty()
        && flat.len() <= 63
        && flat
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !flat.starts_with('-')
        && !flat.ends_with('-');
    if label {
        Ok(())
    } else {
        Err(ServiceError::bad_field(
            field,
            format!(
                "{value:?} is not a valid branch name (Porch's rule: without its '/', lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)"
            ),
        ))
    }
}

/// Git's rules for a branch name (see [`branch`]).
fn git_branch(field: &str, value: &str) -> Result<(), ServiceError> {
    let bad = value.is_empty()
        || value.len() > 255
        || value.starts_with('-')
        || value.starts_with('/')
        || value.ends_with('/')
        || value.ends_with(".lock")
        || value.ends_with('.')
        || value.contains("..")
        || value.contains("//")
        || value.contains("@{")
        || value == "@"
        || value
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c));
    if bad {
        return Err(ServiceError::bad_field(
            field,
            format!("{value:?} is not a valid branch name"),
        ));
    }
    crate::origin::names::check_ref(&format!("refs/heads/{value}")).map_err(|e| {
        ServiceError::bad_field(field, format!("{value:?} is not a valid branch name: {e}"))
    })
}

/// Checks a name or an email that becomes part of a Git commit's author
/// (`principal`, `git.author`, `git.email`), as libgit2's signatures take
/// them: no `<`, `>` or control characters, and, when not empty, more than
/// the spaces and punctuation (`,:;"'\\`) Git trims from their ends.
/// (Empty means "the default".)
pub fn signature(field: &str, value: &str) -> Result<(), ServiceError> {
    match crate::origin::names::signature_part(value) {
        None => Ok(()),
        Some(why) => Err(ServiceError::bad_field(field, format!("{value:?} {why}"))),
    }
}

/// Normalises a directory inside a repository: `/` (or empty) for the
/// whole repository, else `a/b` without leading or trailing `/`. Refuses
/// `..`, `.`, empty segments and control characters.
pub fn directory(field: &str, value: &str) -> Result<String, ServiceError> {
    let trimmed = value.trim_matches('/');
    if trimmed.is_empty() {
        return Ok("/".to_owned());
    }
    if value.chars().any(char::is_control) {
        return Err(ServiceError::bad_field(
            field,
            "must not contain control characters",
        ));
    }
    for segment in trimmed.split('/') {
        match segment {
            ".." => {
                return Err(ServiceError::bad_field(
                    field,
                    format!("{value:?} must not contain \"..\""),
                ))
            }
            "." | "" => {
                return Err(ServiceError::bad_field(
                    field,
                    format!("{value:?} has an empty or \".\" segment"),
                ))
            }
            _ => {}
        }
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refs_and_paths() {
        assert!(dns_label("name", "blueprints-1").is_ok());
        for bad in ["", "Upper", "-x", "x-", "a.b", "a_b", &"x".repeat(64)] {
            assert_eq!(dns_label("name", bad).unwrap_err().code, 400, "{bad}");
        }
        assert!(dns_label("name", "Upper")
            .unwrap_err()
            .message
            .starts_with("name: \"Upper\" is not a valid name"));
        // Porch's TestOpenRepositoryBadBranchName, and the branches its
        // Git suite runs with.
        for good in ["main", "feature", "nested/release", "release/v1", "r-1/a-2"] {
            assert!(branch("git.branch", good).is_ok(), "{good}");
        }
        assert_eq!(
            branch("git.branch", "illegal$$$Characters").unwrap_err().message,
            "git.branch: \"illegal$$$Characters\" is not a valid branch name (Porch's rule: without its '/', lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)"
        );
        for porch_refuses in ["Main", "release-1.0", "a_b", "-a", "a/b-", &"a".repeat(64)] {
            assert!(
                branch("git.branch", porch_refuses).is_err(),
                "{porch_refuses}"
            );
        }
        for bad in [
            "", "a..b", "-x", "a b", "x.lock", "a:b", "/x", "a/.b", "a.lock/b", "@",
        ] {
            assert!(branch("git.branch", bad).is_err(), "{bad}");
        }
        assert_eq!(
            branch("git.branch", "a.lock/b").unwrap_err().message,
            "git.branch: \"a.lock/b\" is not a valid branch name: refs/heads/a.lock/b is not a valid Git ref name (see git check-ref-format)"
        );
        assert_eq!(directory("git.directory", "/").unwrap(), "/");
        assert_eq!(directory("git.directory", "").unwrap(), "/");
        assert_eq!(
            directory("git.directory", "/catalog/gcp/").unwrap(),
            "catalog/gcp"
        );
        assert_eq!(
            directory("git.directory", "catalog/../etc")
                .unwrap_err()
                .message,
            "git.directory: \"catalog/../etc\" must not contain \"..\""
        );
        assert!(directory("git.directory", "a//b").is_err());
    }

    #[test]
    fn commit_authors_are_what_git_signatures_take() {
        for good in ["", "ada@example.com", "Ada Lovelace", "o'neil"] {
            assert_eq!(signature("principal", good), Ok(()), "{good:?}");
        }
        for (bad, message) in [
            ("a<b", "principal: \"a<b\" must not contain '<' or '>' (they delimit the email in a Git commit)"),
            ("x\ny", "principal: \"x\\ny\" must not contain control characters"),
            (" ,; ", "principal: \" ,; \" must hold more than spaces and punctuation (Git trims those)"),
        ] {
            assert_eq!(signature("principal", bad).unwrap_err().message, message, "{bad:?}");
        }
    }
}
