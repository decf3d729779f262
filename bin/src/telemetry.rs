//! Tracing set-up (only binaries do this; libraries just emit spans).
//!
//! Text logs are coloured only when stderr is a terminal: a node run by
//! systemd, in a container or with its output piped to a file writes
//! plain text, no ANSI escape codes.

use std::io::IsTerminal as _;

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Installs a stderr subscriber: `RUST_LOG` wins over `level`; `json`
/// selects JSON lines. Calling it twice is harmless.
pub fn init(level: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if json {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()
    } else {
        registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
}
