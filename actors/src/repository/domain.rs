//! The repository domain of the writer shell, as a marker type. Its
//! [`crate::writer::StreamDomain`] impl lives in the parent module (which
//! runs `command` and `sync`); this leaf lets those two name the domain
//! without importing the module that imports them.

/// The repository domain of the writer shell.
#[derive(Debug, Clone, Copy)]
pub struct Repository;
