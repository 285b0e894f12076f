//! Logging to a file and to stderr at one level (log + simplelog).
//!
//! `-log -` logs to stderr only (for systemd's journal). With a file, SIGHUP reopens it under
//! its name, so logrotate can move it away and the next line goes to a new file.

use anyhow::Context;
use simplelog::{
    ColorChoice, CombinedLogger, ConfigBuilder, SharedLogger, TermLogger, TerminalMode, WriteLogger,
};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

static ON_STDERR: AtomicBool = AtomicBool::new(false);

/// The log file in use, for SIGHUP to reopen.
static LOG_FILE: OnceLock<(PathBuf, Arc<Mutex<File>>)> = OnceLock::new();

/// True once [`init`] has sent errors to stderr: a fatal error logged then needs no second
/// print.
pub fn on_stderr() -> bool {
    ON_STDERR.load(Ordering::Relaxed)
}

/// The log file, shared with [`reopen`].
struct Shared(Arc<Mutex<File>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

fn open(file: &Path) -> anyhow::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .with_context(|| format!("cannot open log file {}", file.display()))
}

/// Sends log records at `level` and above to stderr and, unless `file` is `-`, to `file`
/// (appended; reopened on SIGHUP).
///
/// A file that cannot be opened is an error: the operator asked for it.
pub fn init(file: &Path, level: log::LevelFilter) -> anyhow::Result<()> {
    let config = ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_target_level(log::LevelFilter::Off)
        .set_thread_level(log::LevelFilter::Off)
        .add_filter_allow_str("dist_traceroute")
        .build();
    let mut loggers: Vec<Box<dyn SharedLogger>> = vec![TermLogger::new(
        level,
        config.clone(),
        TerminalMode::Stderr,
        ColorChoice::Never,
    )];
    let shared = if file == Path::new("-") {
        None
    } else {
        let shared = Arc::new(Mutex::new(open(file)?));
        loggers.push(WriteLogger::new(level, config, Shared(shared.clone())));
        Some(shared)
    };
    // Ignoring the error: a second init in one process (demo, tests) keeps the first logger.
    let first = CombinedLogger::init(loggers);
    if first.is_ok() && level >= log::LevelFilter::Error {
        ON_STDERR.store(true, Ordering::Relaxed);
    }
    if first.is_ok() {
        if let Some(shared) = shared {
            let _ = LOG_FILE.set((file.to_owned(), shared));
        }
        // Also without a file: SIGHUP (systemctl reload) must never stop the process.
        reopen_on_sighup()?;
    }
    Ok(())
}

/// Opens the log file again under its name (after logrotate moved it); the file before
/// stays open until then, so no line is lost.
pub fn reopen() -> anyhow::Result<()> {
    let Some((path, shared)) = LOG_FILE.get() else {
        return Ok(());
    };
    let new = open(path)?;
    *shared.lock().unwrap_or_else(|p| p.into_inner()) = new;
    Ok(())
}

/// A thread that waits for SIGHUP and reopens the log file. SIGHUP is blocked here first, so
/// every thread started later has it blocked too and only this one takes it.
fn reopen_on_sighup() -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGHUP);
    set.thread_block()
        .context("cannot block SIGHUP for the log thread")?;
    std::thread::Builder::new()
        .name("log-reopen".into())
        .spawn(move || {
            // Every other signal is for the other threads: one that reached this thread
            // unblocked (SIGTERM before the slave's own signal thread blocks it, say) would
            // take its default action and end the process.
            let _ = SigSet::all().thread_block();
            while set.wait().is_ok() {
                match reopen() {
                    Ok(()) if LOG_FILE.get().is_none() => {
                        log::info!("SIGHUP: logging to stderr only, nothing to reopen")
                    }
                    Ok(()) => log::info!("SIGHUP: log file reopened"),
                    Err(e) => log::error!("SIGHUP: {e:#}; logging on to the file before"),
                }
            }
        })
        .context("cannot start the log thread")?;
    Ok(())
}
