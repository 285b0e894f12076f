//! Logging to a file and to stderr at one level (log + simplelog).

use anyhow::Context;
use simplelog::{
    ColorChoice, CombinedLogger, ConfigBuilder, TermLogger, TerminalMode, WriteLogger,
};
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

static ON_STDERR: AtomicBool = AtomicBool::new(false);

/// True once [`init`] has sent errors to stderr: a fatal error logged then needs no second
/// print.
pub fn on_stderr() -> bool {
    ON_STDERR.load(Ordering::Relaxed)
}

/// Sends log records at `level` and above to `file` (appended) and to stderr.
///
/// A file that cannot be opened is an error: the operator asked for it.
pub fn init(file: &Path, level: log::LevelFilter) -> anyhow::Result<()> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .with_context(|| format!("cannot open log file {}", file.display()))?;
    let config = ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_target_level(log::LevelFilter::Off)
        .set_thread_level(log::LevelFilter::Off)
        .add_filter_allow_str("dist_traceroute")
        .build();
    // Ignoring the error: a second init in one process (demo, tests) keeps the first logger.
    let first = CombinedLogger::init(vec![
        TermLogger::new(
            level,
            config.clone(),
            TerminalMode::Stderr,
            ColorChoice::Never,
        ),
        WriteLogger::new(level, config, out),
    ]);
    if first.is_ok() && level >= log::LevelFilter::Error {
        ON_STDERR.store(true, Ordering::Relaxed);
    }
    Ok(())
}
