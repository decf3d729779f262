//! The registry's errors and their mapping into [`ServiceError`].

use crate::ServiceError;

/// Why the registry refused a request. Each variant says how a client
/// handles it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// No repository is registered under that name (404): list the
    /// repositories, or register it.
    #[error("repository {namespace}/{name} not found")]
    NotFound {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// A repository is registered under that name already (409):
    /// unregister it first, or update it.
    #[error("repository {namespace}/{name} is already registered")]
    AlreadyRegistered {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
}

impl RegistryError {
    /// [`RegistryError::NotFound`] for `namespace/name`.
    pub fn not_found(namespace: &str, name: &str) -> Self {
        Self::NotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl From<RegistryError> for ServiceError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound { .. } => ServiceError::not_found(e.to_string()),
            RegistryError::AlreadyRegistered { .. } => ServiceError::conflict(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_errors_answer_404_and_409() {
        assert_eq!(
            ServiceError::from(RegistryError::not_found("ns", "r")),
            ServiceError::not_found("repository ns/r not found")
        );
        assert_eq!(
            ServiceError::from(RegistryError::AlreadyRegistered {
                namespace: "ns".into(),
                name: "r".into()
            }),
            ServiceError::conflict("repository ns/r is already registered")
        );
    }
}
