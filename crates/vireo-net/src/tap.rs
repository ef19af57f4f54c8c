//! Persistent tap devices created with the TUNSETIFF ioctl (netlink cannot create taps that
//! QEMU can later open by name), optionally inside a named network namespace.
//!
//! Invariants: the device is made persistent (it outlives our file descriptor, so QEMU opens
//! it later by name) and owned by uid 0. Namespace switching happens on a short-lived helper
//! thread, so the calling thread never changes namespace.

use crate::addr::IfName;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("open /dev/net/tun for tap {tap}")]
    OpenTun {
        tap: String,
        #[source]
        source: io::Error,
    },
    #[error("ioctl {op} on tap {tap}")]
    Ioctl {
        tap: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("enter network namespace {path}")]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("namespace helper thread ({tap}) panicked")]
    Thread { tap: String },
}

// _IOW('T', 202..204, int) from <linux/if_tun.h>.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` restricted to the name and flags members (40 bytes like the C union).
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates persistent tap `name` in the current namespace, or in `/run/netns/<netns>`.
pub fn create_tap(name: &IfName, netns: Option<&str>) -> Result<(), TapError> {
    match netns {
        None => create_tap_here(name),
        Some(ns) => in_netns(ns, || create_tap_here(name))?,
    }
}

/// Runs `f` on a helper thread that has entered the named namespace (`/run/netns/<netns>`);
/// the calling thread's namespace never changes. Sockets `f` creates stay in that namespace.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> Result<T, TapError> {
    let path = PathBuf::from("/run/netns").join(netns);
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter_netns(&path)?;
                Ok(f())
            })
            .join()
            .map_err(|_| TapError::Thread {
                tap: format!("netns {netns}"),
            })?
    })
}

/// Moves the calling thread into the network namespace at `path`.
fn enter_netns(path: &std::path::Path) -> Result<(), TapError> {
    let ns = File::open(path).map_err(|source| TapError::Netns {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: setns takes a valid open fd (kept alive by `ns`) and a namespace type flag;
    // it only affects the calling thread.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(TapError::Netns {
            path: path.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn create_tap_here(name: &IfName) -> Result<(), TapError> {
    let tap = name.to_string();
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|source| TapError::OpenTun {
            tap: tap.clone(),
            source,
        })?;
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    // IfName is at most 15 bytes, so the name stays NUL-terminated.
    req.name[..tap.len()].copy_from_slice(tap.as_bytes());
    let ioctl = |op: &'static str, rc: libc::c_int| {
        if rc < 0 {
            Err(TapError::Ioctl {
                tap: tap.clone(),
                op,
                source: io::Error::last_os_error(),
            })
        } else {
            Ok(())
        }
    };
    // SAFETY: `req` is a properly sized, initialised ifreq that outlives the call; the fd is
    // open for the duration of all three calls.
    ioctl("TUNSETIFF", unsafe {
        libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReqFlags)
    })?;
    // SAFETY: integer-argument ioctls on the same open tun fd.
    ioctl("TUNSETOWNER", unsafe {
        libc::ioctl(tun.as_raw_fd(), TUNSETOWNER, 0 as libc::c_ulong)
    })?;
    // SAFETY: as above.
    ioctl("TUNSETPERSIST", unsafe {
        libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong)
    })?;
    tracing::debug!(tap = %tap, "created persistent tap");
    Ok(())
}
