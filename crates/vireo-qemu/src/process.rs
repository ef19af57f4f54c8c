//! QEMU process supervision: start QEMU detached from the daemon, re-attach to a running QEMU
//! after a daemon restart, and learn about its exit.
//!
//! Invariants:
//! - a spawned QEMU runs in its own session (`setsid`), with stdin from /dev/null and
//!   stdout/stderr appended to the per-VM log file — never a pipe — so neither a signal to the
//!   daemon's process group nor the daemon's death (SIGKILL included) reaches QEMU;
//! - [`spawn`] returns only once QEMU wrote its pidfile (with the child's pid) and its QMP
//!   socket accepts connections; if QEMU exits first, the error carries the tail of the log;
//! - exit is observed through a pidfd (race-free against pid reuse) for children and adopted
//!   processes alike; children are reaped (`waitpid`) as soon as they exit, so no zombies
//!   remain; signals are sent through the pidfd too, so they can never hit a recycled pid;
//! - [`adopt`] accepts a pid only if `/proc/PID/cmdline` shows a `qemu-system-*` started with
//!   `-uuid` equal to the VM's UUID, checked while the pidfd proves the process is the same.
//!
//! A [`QemuProcess`] must be created inside a Tokio runtime (it registers the pidfd with the
//! reactor). Its watcher task lives until the process exits, even if every handle is dropped,
//! so the child is always reaped.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::watch;
use uuid::Uuid;

/// How long [`spawn`] waits for QEMU to become ready.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Lines of the log quoted in startup errors.
const LOG_TAIL_LINES: usize = 20;
/// Bytes of the log read to find those lines.
const LOG_TAIL_BYTES: u64 = 8 << 10;
/// `/proc/PID/cmdline` is bounded by the kernel's ARG_MAX; refuse anything larger.
const MAX_CMDLINE_BYTES: u64 = 2 << 20;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
    /// The process was not our child (adopted), so its status cannot be collected.
    Unknown,
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Exited(code) => write!(f, "exit code {code}"),
            ExitStatus::Signaled(sig) => write!(f, "killed by signal {sig}"),
            ExitStatus::Unknown => f.write_str("exit status unknown"),
        }
    }
}

/// Errors of process supervision.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("empty argv")]
    EmptyArgv,
    #[error("cannot open QEMU log file {path}")]
    OpenLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch process {pid} (pidfd)")]
    Pidfd {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU exited during startup ({status}); end of its log:\n{log_tail}")]
    EarlyExit {
        status: ExitStatus,
        log_tail: String,
    },
    #[error("QEMU was not ready (pidfile + QMP socket) within {timeout:?} and was killed; end of its log:\n{log_tail}")]
    NotReady { timeout: Duration, log_tail: String },
    #[error("process {pid} is not running")]
    NotRunning { pid: u32 },
    #[error("process {pid} is not QEMU (argv[0] is {argv0:?})")]
    NotQemu { pid: u32, argv0: String },
    #[error(
        "QEMU process {pid} belongs to another VM (expected -uuid {expected}, found {found:?})"
    )]
    UuidMismatch {
        pid: u32,
        expected: Uuid,
        found: Option<String>,
    },
    #[error("cannot read the command line of process {pid}")]
    ReadCmdline {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read pidfile {path}")]
    ReadPidfile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pidfile {path} does not hold a pid")]
    BadPidfile { path: PathBuf },
    #[error("cannot send signal {signal} to process {pid}")]
    Signal {
        pid: u32,
        signal: i32,
        #[source]
        source: std::io::Error,
    },
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open(2) takes a pid and flags, touches no memory of ours, and returns a
    // new file descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn pidfd_send_signal(fd: &OwnedFd, signal: i32) -> std::io::Result<()> {
    // SAFETY: pidfd_send_signal(2) with a valid pidfd, no siginfo (NULL) and no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the process behind `fd` has exited (the pidfd polls readable once it has).
fn pidfd_exited(fd: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
    rc > 0 && pfd.revents != 0
}

/// Collects the exit status of our child `pid` without blocking the runtime.
async fn reap(pid: u32) -> ExitStatus {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return ExitStatus::Unknown;
    };
    for _ in 0..200 {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid with a valid out-pointer; WNOHANG never blocks.
        let rc = unsafe { libc::waitpid(raw, &mut status, libc::WNOHANG) };
        if rc == raw {
            if libc::WIFEXITED(status) {
                return ExitStatus::Exited(libc::WEXITSTATUS(status));
            }
            if libc::WIFSIGNALED(status) {
                return ExitStatus::Signaled(libc::WTERMSIG(status));
            }
        }
        if rc < 0 {
            // ECHILD: somebody else reaped it.
            return ExitStatus::Unknown;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::warn!(pid, "process exited but could not be reaped");
    ExitStatus::Unknown
}

struct Inner {
    pid: u32,
    child: bool,
    pidfd: OwnedFd,
    exit: watch::Receiver<Option<ExitStatus>>,
}

/// A supervised QEMU process. Cheap to clone; clones share the same watcher.
#[derive(Clone)]
pub struct QemuProcess {
    inner: Arc<Inner>,
}

impl fmt::Debug for QemuProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QemuProcess")
            .field("pid", &self.inner.pid)
            .field("child", &self.inner.child)
            .field("exit", &*self.inner.exit.borrow())
            .finish()
    }
}

impl QemuProcess {
    fn watch(pid: u32, pidfd: OwnedFd, child: bool) -> Result<Self, ProcessError> {
        let pidfd_err = |source| ProcessError::Pidfd { pid, source };
        let watched = pidfd.try_clone().map_err(pidfd_err)?;
        // SAFETY: `watched` is an OwnedFd moved into the AsyncFd, so the descriptor stays
        // open and unchanged for the AsyncFd's whole lifetime.
        let async_fd = unsafe { AsyncFd::register_with_interest(watched, Interest::READABLE) }
            .map_err(|e| pidfd_err(e.into_parts().1))?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            if let Err(e) = async_fd.readable().await {
                // Should not happen; fall back to polling the pidfd.
                tracing::warn!(pid, error = %e, "pidfd registration failed; polling instead");
                while !pidfd_exited(async_fd.get_ref()) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            let status = if child {
                reap(pid).await
            } else {
                ExitStatus::Unknown
            };
            tracing::debug!(pid, %status, "QEMU process exited");
            tx.send_replace(Some(status));
        });
        Ok(QemuProcess {
            inner: Arc::new(Inner {
                pid,
                child,
                pidfd,
                exit: rx,
            }),
        })
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// Whether this daemon started the process (and can collect its exit status).
    pub fn is_child(&self) -> bool {
        self.inner.child
    }

    /// The exit status if the process has already exited.
    pub fn try_exit_status(&self) -> Option<ExitStatus> {
        *self.inner.exit.borrow()
    }

    /// Resolves when the process has exited (immediately if it already has).
    pub async fn exited(&self) -> ExitStatus {
        let mut rx = self.inner.exit.clone();
        let status = match rx.wait_for(Option::is_some).await {
            Ok(status) => status.unwrap_or(ExitStatus::Unknown),
            // The watcher only disappears with the runtime.
            Err(_) => ExitStatus::Unknown,
        };
        status
    }

    /// Sends `signal` through the pidfd. Fails with [`ProcessError::NotRunning`] if the
    /// process is gone.
    pub fn signal(&self, signal: i32) -> Result<(), ProcessError> {
        let pid = self.inner.pid;
        pidfd_send_signal(&self.inner.pidfd, signal).map_err(|source| {
            if source.raw_os_error() == Some(libc::ESRCH) {
                ProcessError::NotRunning { pid }
            } else {
                ProcessError::Signal {
                    pid,
                    signal,
                    source,
                }
            }
        })
    }

    /// SIGKILL. Succeeds if the process is already gone.
    pub fn kill(&self) -> Result<(), ProcessError> {
        match self.signal(libc::SIGKILL) {
            Err(ProcessError::NotRunning { .. }) => Ok(()),
            other => other,
        }
    }
}

/// Starts QEMU with [`DEFAULT_READY_TIMEOUT`]; see [`spawn_with_timeout`].
pub async fn spawn(
    argv: &[String],
    log_path: &Path,
    pidfile: &Path,
    qmp_socket: &Path,
) -> Result<QemuProcess, ProcessError> {
    spawn_with_timeout(argv, log_path, pidfile, qmp_socket, DEFAULT_READY_TIMEOUT).await
}

/// Starts `argv` (`argv[0]` is the QEMU binary) in a new session with output appended to
/// `log_path`, then waits until `pidfile` names the child and `qmp_socket` accepts a
/// connection. On early exit or timeout (QEMU is then killed) the error quotes the log.
pub async fn spawn_with_timeout(
    argv: &[String],
    log_path: &Path,
    pidfile: &Path,
    qmp_socket: &Path,
    ready_timeout: Duration,
) -> Result<QemuProcess, ProcessError> {
    let (program, args) = argv.split_first().ok_or(ProcessError::EmptyArgv)?;
    let open_err = |source| ProcessError::OpenLog {
        path: log_path.to_path_buf(),
        source,
    };
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(log_path)
        .map_err(open_err)?;
    let log_start = log.metadata().map_err(open_err)?.len();
    let log_err = log.try_clone().map_err(open_err)?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // SAFETY: the closure runs between fork and exec and only calls setsid(2), which is
    // async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
        program: program.clone(),
        source,
    })?;
    let pid = child.id();
    // Dropping a std Child neither waits nor kills; the pidfd watcher reaps it. The pid cannot
    // be recycled before that, since only we can reap it.
    drop(child);
    let pidfd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(source) => {
            // Without a pidfd we cannot supervise it: do not leave it running unsupervised.
            // SAFETY: plain kill(2) on our own unreaped child (its pid cannot be reused).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            return Err(ProcessError::Pidfd { pid, source });
        }
    };
    let process = QemuProcess::watch(pid, pidfd, true)?;
    tracing::info!(pid, program = %program, "QEMU started");
    let deadline = tokio::time::Instant::now() + ready_timeout;
    loop {
        if let Some(status) = process.try_exit_status() {
            return Err(ProcessError::EarlyExit {
                status,
                log_tail: log_tail(log_path, log_start),
            });
        }
        if read_pidfile(pidfile).ok() == Some(pid)
            && tokio::net::UnixStream::connect(qmp_socket).await.is_ok()
        {
            return Ok(process);
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = process.kill();
            let _ = tokio::time::timeout(Duration::from_secs(2), process.exited()).await;
            return Err(ProcessError::NotReady {
                timeout: ready_timeout,
                log_tail: log_tail(log_path, log_start),
            });
        }
        tokio::select! {
            _ = process.exited() => {}
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// The last lines QEMU wrote to `log_path` since byte `from`.
fn log_tail(log_path: &Path, from: u64) -> String {
    let read = || -> std::io::Result<Vec<u8>> {
        let mut f = std::fs::File::open(log_path)?;
        let len = f.metadata()?.len();
        let start = from.max(len.saturating_sub(LOG_TAIL_BYTES));
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        f.take(LOG_TAIL_BYTES).read_to_end(&mut buf)?;
        Ok(buf)
    };
    match read() {
        Ok(bytes) => tail_lines(&bytes, LOG_TAIL_LINES),
        Err(e) => format!("(log {} unreadable: {e})", log_path.display()),
    }
}

/// The last `n` non-empty lines of `bytes`, lossily decoded.
pub fn tail_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Reads the pid QEMU wrote to its pidfile.
pub fn read_pidfile(path: &Path) -> Result<u32, ProcessError> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(64).read_to_string(&mut text))
        .map_err(|source| ProcessError::ReadPidfile {
            path: path.to_path_buf(),
            source,
        })?;
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ProcessError::BadPidfile {
            path: path.to_path_buf(),
        })
}

/// Checks that a NUL-separated command line is a `qemu-system-*` started with `-uuid expected`.
pub fn check_cmdline(pid: u32, cmdline: &[u8], expected: Uuid) -> Result<(), ProcessError> {
    let mut args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    if args.last().is_some_and(|a| a.is_empty()) {
        args.pop();
    }
    let argv0 = args
        .first()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .unwrap_or_default();
    let base = argv0.rsplit('/').next().unwrap_or_default();
    if !base.starts_with("qemu-system-") {
        return Err(ProcessError::NotQemu { pid, argv0 });
    }
    let found = args
        .windows(2)
        .find(|w| w[0] == b"-uuid" || w[0] == b"--uuid")
        .map(|w| String::from_utf8_lossy(w[1]).into_owned());
    match found.as_deref().map(Uuid::parse_str) {
        Some(Ok(u)) if u == expected => Ok(()),
        _ => Err(ProcessError::UuidMismatch {
            pid,
            expected,
            found,
        }),
    }
}

/// The parent pid from `/proc/PID/stat` (field 4, after the parenthesised command name).
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// Re-attaches to a running QEMU after a daemon restart, after verifying it runs the VM with
/// `expected_uuid`. Must be called inside a Tokio runtime.
pub fn adopt(pid: u32, expected_uuid: Uuid) -> Result<QemuProcess, ProcessError> {
    let pidfd = pidfd_open(pid).map_err(|source| match source.raw_os_error() {
        Some(libc::ESRCH) => ProcessError::NotRunning { pid },
        _ => ProcessError::Pidfd { pid, source },
    })?;
    let mut cmdline = Vec::new();
    std::fs::File::open(format!("/proc/{pid}/cmdline"))
        .and_then(|f| f.take(MAX_CMDLINE_BYTES).read_to_end(&mut cmdline))
        .map_err(|source| ProcessError::ReadCmdline { pid, source })?;
    check_cmdline(pid, &cmdline, expected_uuid)?;
    // The pidfd was opened before reading /proc: if the process is still alive now, the
    // command line we checked was its own and not that of a process that reused the pid.
    if pidfd_exited(&pidfd) {
        return Err(ProcessError::NotRunning { pid });
    }
    // SAFETY: getpid(2) cannot fail.
    let me = unsafe { libc::getpid() } as u32;
    let child = parent_pid(pid) == Some(me);
    tracing::info!(pid, child, "adopted QEMU process");
    QemuProcess::watch(pid, pidfd, child)
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "0191c7a4-1f3e-7c2a-9d1e-2b3c4d5e6f70";

    fn cmdline(args: &[&str]) -> Vec<u8> {
        let mut v = Vec::new();
        for a in args {
            v.extend_from_slice(a.as_bytes());
            v.push(0);
        }
        v
    }

    #[test]
    fn cmdline_must_be_qemu_with_matching_uuid() {
        let u = Uuid::parse_str(U).unwrap();
        let ok = cmdline(&[
            "/usr/bin/qemu-system-x86_64",
            "-name",
            "guest=a",
            "-uuid",
            U,
        ]);
        assert!(check_cmdline(1, &ok, u).is_ok());
        let upper = cmdline(&["qemu-system-x86_64", "-uuid", &U.to_uppercase()]);
        assert!(check_cmdline(1, &upper, u).is_ok());
        let other = cmdline(&[
            "qemu-system-x86_64",
            "-uuid",
            "0191c7a4-1f3e-7c2a-9d1e-000000000000",
        ]);
        assert!(matches!(
            check_cmdline(1, &other, u),
            Err(ProcessError::UuidMismatch { found: Some(_), .. })
        ));
        let missing = cmdline(&["qemu-system-x86_64", "-name", U]);
        assert!(matches!(
            check_cmdline(1, &missing, u),
            Err(ProcessError::UuidMismatch { found: None, .. })
        ));
        let dangling = cmdline(&["qemu-system-x86_64", "-uuid"]);
        assert!(check_cmdline(1, &dangling, u).is_err());
        let bash = cmdline(&["/bin/bash", "-c", "qemu-system-x86_64 -uuid x"]);
        assert!(matches!(
            check_cmdline(1, &bash, u),
            Err(ProcessError::NotQemu { .. })
        ));
        assert!(matches!(
            check_cmdline(1, b"", u),
            Err(ProcessError::NotQemu { .. })
        ));
    }

    #[test]
    fn tail_keeps_last_nonempty_lines() {
        let log = b"a\n\nb\nc\r\n\xffd\n";
        assert_eq!(tail_lines(log, 2), "c\n\u{fffd}d");
        assert_eq!(tail_lines(b"", 3), "");
    }

    #[test]
    fn pidfile_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pid");
        std::fs::write(&p, "1234\n").unwrap();
        assert_eq!(read_pidfile(&p).unwrap(), 1234);
        std::fs::write(&p, "x").unwrap();
        assert!(matches!(
            read_pidfile(&p),
            Err(ProcessError::BadPidfile { .. })
        ));
        assert!(matches!(
            read_pidfile(&dir.path().join("none")),
            Err(ProcessError::ReadPidfile { .. })
        ));
    }

    #[test]
    fn parent_of_self_is_known() {
        let me = std::process::id();
        // SAFETY: getppid(2) cannot fail.
        let parent = unsafe { libc::getppid() } as u32;
        assert_eq!(parent_pid(me), Some(parent));
    }
}
