//! Supervision of one long-running child process (dnsmasq per network): spawn, restart with
//! capped exponential backoff when it dies, stop on request or drop.
//!
//! Invariants: at most one child per supervisor is alive at any time; after `stop()` returns
//! (or the supervisor is dropped) the child has been reaped. The monitor thread polls every
//! 50 ms, so a dead child is noticed within that time plus the current backoff.

use std::io;
use std::process::{Child, Command};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("spawn {program} for {name}")]
    Spawn {
        name: String,
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("start monitor thread for {name}")]
    Thread {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// What the supervisor currently knows about its child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChildStatus {
    /// PID of the running child; `None` while waiting to restart.
    pub pid: Option<u32>,
    /// How many times the child died and was restarted.
    pub restarts: u32,
}

const POLL: Duration = Duration::from_millis(50);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A child that ran this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// Builds the command afresh for every (re)start.
pub type CommandFactory = Box<dyn Fn() -> Command + Send + 'static>;

pub struct Supervisor {
    name: String,
    status: Arc<Mutex<ChildStatus>>,
    stop_tx: Option<mpsc::Sender<()>>,
    monitor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("name", &self.name)
            .field("status", &self.status())
            .finish()
    }
}

fn lock(status: &Mutex<ChildStatus>) -> MutexGuard<'_, ChildStatus> {
    // The status is plain data; a panic while holding the lock cannot leave it inconsistent.
    status.lock().unwrap_or_else(|e| e.into_inner())
}

impl Supervisor {
    /// Spawns the first child synchronously (so a bad program fails here) and starts the
    /// monitor thread.
    pub fn start(name: &str, factory: CommandFactory) -> Result<Self, SuperviseError> {
        let child = spawn(name, &factory)?;
        let status = Arc::new(Mutex::new(ChildStatus {
            pid: Some(child.id()),
            restarts: 0,
        }));
        let (stop_tx, stop_rx) = mpsc::channel();
        let thread_status = Arc::clone(&status);
        let thread_name = name.to_owned();
        let monitor = std::thread::Builder::new()
            .name(format!("supervise-{name}"))
            .spawn(move || monitor(thread_name, factory, child, thread_status, stop_rx))
            .map_err(|source| SuperviseError::Thread {
                name: name.to_owned(),
                source,
            })?;
        Ok(Self {
            name: name.to_owned(),
            status,
            stop_tx: Some(stop_tx),
            monitor: Some(monitor),
        })
    }

    pub fn status(&self) -> ChildStatus {
        *lock(&self.status)
    }

    /// Terminates the child (SIGTERM, then SIGKILL after 2 s) and waits for the monitor.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.monitor.take() {
            if handle.join().is_err() {
                tracing::error!(name = %self.name, "supervisor monitor thread panicked");
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(name: &str, factory: &CommandFactory) -> Result<Child, SuperviseError> {
    let mut cmd = factory();
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.spawn().map_err(|source| SuperviseError::Spawn {
        name: name.to_owned(),
        program,
        source,
    })
}

fn monitor(
    name: String,
    factory: CommandFactory,
    first: Child,
    status: Arc<Mutex<ChildStatus>>,
    stop_rx: mpsc::Receiver<()>,
) {
    let mut child = Some(first);
    let mut started = Instant::now();
    let mut backoff = BACKOFF_START;
    let mut restart_at: Option<Instant> = None;
    loop {
        match stop_rx.recv_timeout(POLL) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {}
        }
        if let Some(c) = child.as_mut() {
            match c.try_wait() {
                Ok(None) => continue,
                Ok(Some(exit)) => tracing::warn!(%name, %exit, "supervised process exited"),
                Err(e) => tracing::warn!(%name, error = %e, "cannot poll supervised process"),
            }
            child = None;
            lock(&status).pid = None;
            if started.elapsed() >= HEALTHY_AFTER {
                backoff = BACKOFF_START;
            }
            restart_at = Some(Instant::now() + backoff);
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        if restart_at.is_some_and(|t| Instant::now() >= t) {
            restart_at = None;
            match spawn(&name, &factory) {
                Ok(c) => {
                    let mut st = lock(&status);
                    st.pid = Some(c.id());
                    st.restarts += 1;
                    started = Instant::now();
                    child = Some(c);
                    tracing::info!(%name, pid = st.pid, "restarted supervised process");
                }
                Err(e) => {
                    tracing::warn!(%name, error = %e, "restart failed; retrying");
                    restart_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
    if let Some(c) = child {
        terminate(&name, c);
    }
    lock(&status).pid = None;
}

fn terminate(name: &str, mut child: Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: signalling our own unreaped child; the PID cannot be reused before we wait.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!(%name, "process ignored SIGTERM; killing");
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> CommandFactory {
        Box::new(|| {
            let mut c = Command::new("sleep");
            c.arg("60");
            c
        })
    }

    fn wait_for(mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn restarts_a_killed_child_and_stops_it() {
        let mut sup = Supervisor::start("t", sleeper()).unwrap();
        let first = sup.status().pid.unwrap();
        // SAFETY: killing the test's own child process.
        unsafe { libc::kill(first as libc::pid_t, libc::SIGKILL) };
        assert!(wait_for(|| {
            let st = sup.status();
            st.restarts == 1 && st.pid.is_some_and(|p| p != first)
        }));
        let second = sup.status().pid.unwrap();
        sup.stop();
        assert_eq!(sup.status().pid, None);
        // The child is gone (reaped): signalling it fails.
        // SAFETY: signal 0 only probes for existence.
        assert_ne!(unsafe { libc::kill(second as libc::pid_t, 0) }, 0);
    }

    #[test]
    fn bad_program_fails_at_start() {
        let err = Supervisor::start("bad", Box::new(|| Command::new("/nonexistent/dnsmasq")))
            .unwrap_err();
        assert!(matches!(err, SuperviseError::Spawn { .. }));
    }
}
