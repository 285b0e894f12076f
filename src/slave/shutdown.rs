//! Stopping: a flag threads sleep on (so a stop wakes them at once), and SIGINT/SIGTERM
//! turned into that flag by a thread that waits for them.

use anyhow::Context;
use nix::sys::signal::{SigSet, Signal};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A one-way flag with an interruptible sleep.
#[derive(Debug, Default)]
pub struct Stop {
    set: Mutex<bool>,
    changed: Condvar,
}

impl Stop {
    /// Raises the flag and wakes every sleeper.
    pub fn stop(&self) {
        *self.set.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.changed.notify_all();
    }

    /// True once [`Stop::stop`] was called.
    pub fn is_set(&self) -> bool {
        *self.set.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sleeps for `d` or until the flag is raised; true when it is raised.
    pub fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        while !*set {
            let Some(left) = end.checked_duration_since(Instant::now()) else {
                return false;
            };
            set = self
                .changed
                .wait_timeout(set, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// Routes SIGINT and SIGTERM to `stop`; a second one ends the process at once (the spool is
/// on disk, so nothing measured is lost). Call before starting other threads: they inherit
/// the blocked signal mask, which leaves the signals to the waiting thread.
pub fn on_signals(stop: Arc<Stop>) -> anyhow::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()
        .context("cannot block SIGINT/SIGTERM for the signal thread")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = 0;
            while let Ok(sig) = set.wait() {
                seen += 1;
                if seen == 1 {
                    log::info!("{sig}: stopping (no new traces; running ones finish, then the spool is flushed)");
                    stop.stop();
                } else {
                    log::warn!("{sig} again: exiting now; unsent results stay in the spool");
                    std::process::exit(1);
                }
            }
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_wakes_a_sleeper() {
        let stop = Arc::new(Stop::default());
        assert!(!stop.sleep(Duration::from_millis(1)));
        let s = stop.clone();
        let t = std::thread::spawn(move || s.sleep(Duration::from_secs(600)));
        stop.stop();
        assert!(t.join().unwrap());
        assert!(stop.is_set());
    }
}
