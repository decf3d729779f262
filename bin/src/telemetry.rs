//! Tracing set-up (only binaries do this; libraries just emit spans).

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
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
}
