//! Layout of a VM's run directory: every file QEMU creates or uses for one VM lives there, so
//! a restarted daemon finds everything it needs to re-attach (pidfile, sockets, logs).
//!
//! Invariant: the names are fixed; [`crate::argv::build`] and [`crate::process`] both derive
//! their paths from [`RunPaths`], so they always agree.

use std::path::{Path, PathBuf};

/// QMP monitor socket (QEMU listens).
pub const QMP_SOCKET: &str = "qmp.sock";
/// Host end of the qemu-guest-agent virtio-serial port (QEMU listens).
pub const QGA_SOCKET: &str = "qga.sock";
/// Serial console socket (QEMU listens; the daemon connects and reconnects).
pub const SERIAL_SOCKET: &str = "serial.sock";
/// Everything the guest wrote to the serial console, appended across restarts.
pub const CONSOLE_LOG: &str = "console.log";
/// QEMU's own stdout/stderr.
pub const QEMU_LOG: &str = "qemu.log";
/// QEMU writes its pid here.
pub const PIDFILE: &str = "qemu.pid";
/// Per-VM copy of the UEFI variable store.
pub const UEFI_VARS: &str = "uefi-vars.fd";

/// Paths inside one VM's run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPaths {
    dir: PathBuf,
}

impl RunPaths {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join(QMP_SOCKET)
    }

    pub fn qga_socket(&self) -> PathBuf {
        self.dir.join(QGA_SOCKET)
    }

    pub fn serial_socket(&self) -> PathBuf {
        self.dir.join(SERIAL_SOCKET)
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.join(CONSOLE_LOG)
    }

    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join(QEMU_LOG)
    }

    pub fn pidfile(&self) -> PathBuf {
        self.dir.join(PIDFILE)
    }

    pub fn uefi_vars(&self) -> PathBuf {
        self.dir.join(UEFI_VARS)
    }
}
