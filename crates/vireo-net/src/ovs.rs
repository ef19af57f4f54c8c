//! Open vSwitch on its userspace datapath (`datapath_type=netdev`): Vireo runs its own
//! `ovsdb-server` and `ovs-vswitchd` (supervised, with their own run directory) and drives
//! them with `ovs-vsctl`.
//!
//! Invariants:
//! - everything lives under the run directory given to [`Ovs::start`] (database, sockets,
//!   pid files, logs); the host's own Open vSwitch, if any, is never contacted;
//! - only `vb-` bridges and `vt-` ports are created or removed; a trunk uplink port is added
//!   to its bridge but never deleted from the host;
//! - processes left by a previous daemon (found through the pid files, confirmed by their
//!   command line naming this run directory) are stopped and restarted; the configuration
//!   persists in the database, so bridges and ports come back as they were.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::addr::{IfName, Mtu, VlanId, BRIDGE_PREFIX, TAP_PREFIX};
use crate::host::{HostError, HostNet};
use crate::supervise::{SuperviseError, Supervisor};

/// Where Debian installs the schema.
pub const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

#[derive(Debug, thiserror::Error)]
pub enum OvsError {
    #[error("Open vSwitch is not installed ({program} not found)")]
    NotInstalled { program: &'static str },
    #[error("prepare run directory {path}")]
    RunDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("run {argv}")]
    Spawn {
        argv: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{argv} failed ({status}): {stderr}")]
    Command {
        argv: String,
        status: String,
        stderr: String,
    },
    #[error("start {name}")]
    Supervise {
        name: &'static str,
        #[source]
        source: SuperviseError,
    },
    #[error("{what} did not become ready within {secs} s")]
    NotReady { what: &'static str, secs: u64 },
    #[error("host link operation")]
    Host(#[source] HostError),
}

/// An OVS bridge Vireo wants, with its VM ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredOvsBridge {
    pub bridge: IfName,
    pub mtu: Option<Mtu>,
    /// A host interface added as a trunk port (all VLANs).
    pub uplink: Option<String>,
    /// (tap, access VLAN, MTU, link up).
    pub ports: Vec<(IfName, Option<VlanId>, Option<Mtu>, bool)>,
}

/// Vireo's Open vSwitch instance.
pub struct Ovs {
    run_dir: PathBuf,
    db: Supervisor,
    switchd: Supervisor,
}

impl std::fmt::Debug for Ovs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ovs")
            .field("run_dir", &self.run_dir)
            .finish()
    }
}

fn which(program: &'static str) -> Result<(), OvsError> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(OvsError::NotInstalled { program })
    }
}

/// Whether the Open vSwitch programs Vireo needs are installed.
pub fn installed() -> Result<(), OvsError> {
    for p in ["ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovsdb-tool"] {
        which(p)?;
    }
    if !Path::new(SCHEMA).is_file() {
        return Err(OvsError::NotInstalled {
            program: "vswitch.ovsschema",
        });
    }
    Ok(())
}

fn run(mut c: Command) -> Result<String, OvsError> {
    let argv = std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let out = c
        .stdin(Stdio::null())
        .output()
        .map_err(|source| OvsError::Spawn {
            argv: argv.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(OvsError::Command {
            argv,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr)
                .chars()
                .take(2000)
                .collect::<String>()
                .trim()
                .to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Stops a process recorded in `pid_file` if its command line mentions `run_dir`.
fn stop_stale(pid_file: &Path, run_dir: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<libc::pid_t>().ok())
    else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let needle = run_dir.as_os_str().as_encoded_bytes();
    if needle.is_empty() || !cmdline.windows(needle.len()).any(|w| w == needle) {
        return;
    }
    tracing::info!(pid, pid_file = %pid_file.display(), "stopping Open vSwitch process of a previous daemon");
    // SAFETY: a plain signal to a process confirmed to be ours by its command line.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && Path::new(&format!("/proc/{pid}")).exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Ovs {
    /// Starts ovsdb-server and ovs-vswitchd with everything under `run_dir` and waits until
    /// the switch answers.
    pub fn start(run_dir: &Path) -> Result<Self, OvsError> {
        installed()?;
        let rd = |source| OvsError::RunDir {
            path: run_dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(run_dir).map_err(rd)?;
        let db_file = run_dir.join("conf.db");
        let sock = run_dir.join("db.sock");
        stop_stale(&run_dir.join("ovs-vswitchd.pid"), run_dir);
        stop_stale(&run_dir.join("ovsdb-server.pid"), run_dir);
        if !db_file.exists() {
            let mut c = Command::new("ovsdb-tool");
            c.arg("create").arg(&db_file).arg(SCHEMA);
            run(c)?;
        }
        let env_dir = run_dir.to_path_buf();
        let with_env = move |c: &mut Command| {
            c.env("OVS_RUNDIR", &env_dir)
                .env("OVS_LOGDIR", &env_dir)
                .env("OVS_DBDIR", &env_dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
        };
        let (d, s, e) = (run_dir.to_path_buf(), sock.clone(), with_env.clone());
        let db = Supervisor::start(
            "ovsdb-server",
            Box::new(move || {
                let mut c = Command::new("ovsdb-server");
                c.arg(d.join("conf.db"))
                    .arg(format!("--remote=punix:{}", s.display()))
                    .arg(format!(
                        "--unixctl={}",
                        d.join("ovsdb-server.ctl").display()
                    ))
                    .arg(format!(
                        "--pidfile={}",
                        d.join("ovsdb-server.pid").display()
                    ))
                    .arg(format!(
                        "--log-file={}",
                        d.join("ovsdb-server.log").display()
                    ));
                e(&mut c);
                c
            }),
        )
        .map_err(|source| OvsError::Supervise {
            name: "ovsdb-server",
            source,
        })?;
        wait_for("ovsdb-server socket", Duration::from_secs(10), || {
            sock.exists()
        })?;
        // The database must be initialised before the switch reads it.
        let init = {
            let mut c = Command::new("ovs-vsctl");
            c.arg(format!("--db=unix:{}", sock.display()))
                .args(["--no-wait", "init"]);
            c
        };
        run(init)?;
        let ovs = Ovs {
            run_dir: run_dir.to_path_buf(),
            db,
            switchd: Supervisor::start("ovs-vswitchd", {
                let (d, s, e) = (run_dir.to_path_buf(), sock.clone(), with_env);
                Box::new(move || {
                    let mut c = Command::new("ovs-vswitchd");
                    c.arg(format!("unix:{}", s.display()))
                        .arg(format!(
                            "--unixctl={}",
                            d.join("ovs-vswitchd.ctl").display()
                        ))
                        .arg(format!(
                            "--pidfile={}",
                            d.join("ovs-vswitchd.pid").display()
                        ))
                        .arg(format!(
                            "--log-file={}",
                            d.join("ovs-vswitchd.log").display()
                        ));
                    e(&mut c);
                    c
                })
            })
            .map_err(|source| OvsError::Supervise {
                name: "ovs-vswitchd",
                source,
            })?,
        };
        // `ovs-vsctl` without --no-wait returns once ovs-vswitchd applied the change: a
        // harmless round trip proves the switch is up.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match ovs.vsctl(&["list-br"]) {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        Ok(ovs)
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    fn vsctl_cmd(&self) -> Command {
        let mut c = Command::new("ovs-vsctl");
        c.arg(format!(
            "--db=unix:{}",
            self.run_dir.join("db.sock").display()
        ))
        .env("OVS_RUNDIR", &self.run_dir);
        c
    }

    /// `ovs-vsctl --timeout=10 ARGS` (waits for ovs-vswitchd to apply the change).
    pub fn vsctl(&self, args: &[&str]) -> Result<String, OvsError> {
        let mut c = self.vsctl_cmd();
        c.arg("--timeout=10").args(args);
        run(c)
    }

    /// Whether both daemons currently run.
    pub fn running(&self) -> bool {
        self.db.status().pid.is_some() && self.switchd.status().pid.is_some()
    }

    fn lines(text: &str) -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Makes Vireo's OVS bridges and ports match `desired`: removes `vb-` bridges and `vt-`
    /// ports that are not desired, creates missing ones (taps included), sets VLAN tags, MTU
    /// and link state.
    pub fn reconcile(
        &self,
        host: &dyn HostNet,
        desired: &[DesiredOvsBridge],
    ) -> Result<(), OvsError> {
        let existing = Self::lines(&self.vsctl(&["list-br"])?);
        for br in existing.iter().filter(|b| b.starts_with(BRIDGE_PREFIX)) {
            if !desired.iter().any(|d| d.bridge.as_str() == br) {
                self.vsctl(&["--if-exists", "del-br", br])?;
            }
        }
        let links: Vec<String> = host
            .list_links()
            .map_err(OvsError::Host)?
            .into_iter()
            .map(|l| l.name)
            .collect();
        for d in desired {
            let b = d.bridge.as_str();
            self.vsctl(&[
                "--may-exist",
                "add-br",
                b,
                "--",
                "set",
                "bridge",
                b,
                "datapath_type=netdev",
            ])?;
            let ports = Self::lines(&self.vsctl(&["list-ports", b])?);
            for p in ports.iter().filter(|p| p.starts_with(TAP_PREFIX)) {
                if !d.ports.iter().any(|(t, ..)| t.as_str() == p) {
                    self.vsctl(&["--if-exists", "del-port", b, p])?;
                }
            }
            for (tap, vlan, mtu, up) in &d.ports {
                if !links.iter().any(|l| l == tap.as_str()) {
                    host.create_tap(tap).map_err(OvsError::Host)?;
                }
                self.vsctl(&["--may-exist", "add-port", b, tap.as_str()])?;
                match vlan {
                    Some(v) => {
                        let tag = format!("tag={}", v.get());
                        self.vsctl(&["set", "port", tap.as_str(), &tag, "vlan_mode=access"])?
                    }
                    None => self.vsctl(&["clear", "port", tap.as_str(), "tag"])?,
                };
                if let Some(m) = mtu.or(d.mtu) {
                    host.set_mtu(tap.as_str(), m).map_err(OvsError::Host)?;
                }
                host.set_up(tap.as_str(), *up).map_err(OvsError::Host)?;
            }
            if let Some(u) = &d.uplink {
                self.vsctl(&["--may-exist", "add-port", b, u])?;
                host.set_up(u, true).map_err(OvsError::Host)?;
            }
            // The bridge's internal port (a tap under the netdev datapath) carries no
            // address, but must be up for the datapath to forward.
            host.set_up(b, true).map_err(OvsError::Host)?;
        }
        Ok(())
    }
}

fn wait_for(
    what: &'static str,
    limit: Duration,
    mut ok: impl FnMut() -> bool,
) -> Result<(), OvsError> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(OvsError::NotReady {
        what,
        secs: limit.as_secs(),
    })
}
