//! `cairn views rebuild`: drop every view and fold the log into it again.

use std::{path::Path, time::Instant};

use anyhow::bail;
use cairn_storage::{views::default_views, Store, StoreConfig};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{config::store_dir, node::explain_open_error};

/// Rebuilds all views of the node whose data directory is `data_dir`.
/// Prints a progress bar to stderr and a final count to stdout.
pub fn rebuild(data_dir: &Path, out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    let path = store_dir(data_dir);
    if !path.join("CURRENT").is_file() {
        bail!(
            "{} holds no cairn store (expected {})",
            data_dir.display(),
            path.display()
        );
    }
    let store = Store::open(StoreConfig::new(&path), default_views())
        .map_err(|e| explain_open_error(e.into(), &path))?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} rebuilding views [{bar:40}] {pos}/{len} events ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let progress_bar = bar.clone();
    let started = Instant::now();
    let stats = store.rebuild(
        &[],
        Some(Box::new(move |done, total| {
            progress_bar.set_length(total);
            progress_bar.set_position(done);
        })),
    )?;
    bar.finish_and_clear();
    writeln!(
        out,
        "rebuilt {} views ({}) from {} events in {:.2}s",
        stats.views.len(),
        stats.views.join(", "),
        stats.events,
        started.elapsed().as_secs_f64()
    )?;
    Ok(())
}
