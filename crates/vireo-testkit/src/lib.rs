//! Test kit for end-to-end tests: starts the real `vireod` on a temporary state directory and
//! socket, runs the real `vireo` CLI against it, and cleans up every QEMU it started.
//!
//! Invariants: a [`TestDaemon`] never touches `/var/lib/vireo` or `/run/vireo`; dropping it
//! kills the daemon and every QEMU whose pidfile lies under its state directory, then removes
//! the directory. Guest artefacts (Debian packages, the built tiny image's inputs) are cached
//! in `VIREO_TEST_CACHE` (default `/var/cache/vireo-test`) so repeated runs are fast.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Root of the repository (for locating built binaries).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from("."))
}

/// A built binary of this workspace (`cargo build --bins` must have run; scripts/test.sh does).
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let p = target.join("debug").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --bins` first",
        p.display()
    );
    p
}

/// Shared cache for guest artefacts.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("VIREO_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/vireo-test"))
}

/// Options for a test daemon.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// `auto`, `kvm` or `tcg`.
    pub accel: String,
    /// TCP listener, e.g. `127.0.0.1:0` is not supported (needs a fixed port); `None` = off.
    pub listen: Option<String>,
    /// Run the daemon inside this network namespace (`ip netns exec`) with managed networks
    /// on. `None` (the default): the daemon runs in the host namespace with managed networks
    /// OFF — it creates no bridges, taps, rules or dnsmasq, and VMs use QEMU's `user` network.
    pub netns: Option<String>,
    /// Extra lines for the `[network]` section (managed daemons only), e.g. `uplink = "vx0"`.
    pub network_config: String,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            accel: "tcg".into(),
            listen: None,
            netns: None,
            network_config: String::new(),
        }
    }
}

/// A running `vireod` on temporary directories.
#[derive(Debug)]
pub struct TestDaemon {
    dir: tempfile::TempDir,
    child: Option<Child>,
    opts: DaemonOptions,
}

impl TestDaemon {
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(DaemonOptions::default())
    }

    pub fn start_with(opts: DaemonOptions) -> anyhow::Result<Self> {
        // Short paths: unix socket paths are limited to 107 bytes.
        let dir = tempfile::Builder::new().prefix("vt").tempdir_in("/tmp")?;
        let mut d = TestDaemon {
            dir,
            child: None,
            opts,
        };
        d.write_config()?;
        d.spawn()?;
        Ok(d)
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let cache = cache_dir();
        std::fs::create_dir_all(&cache)?;
        let mut cfg = format!(
            "state_dir = \"{}\"\nsocket = \"{}\"\naccel = \"{}\"\nimage_cache_dir = \"{}\"\nnode = \"test-node\"\n",
            self.state_dir().display(),
            self.socket().display(),
            self.opts.accel,
            cache.display()
        );
        if let Some(l) = &self.opts.listen {
            cfg.push_str(&format!("listen = \"{l}\"\n"));
        }
        // The suite runs in the host's namespace: only daemons confined to a namespace the
        // test created may touch networking.
        if self.opts.netns.is_some() {
            cfg.push_str(&format!(
                "[network]\nmanaged = true\n{}\n",
                self.opts.network_config
            ));
        } else {
            cfg.push_str("[network]\nmanaged = false\n");
        }
        std::fs::write(self.dir.path().join("vireod.toml"), cfg)?;
        Ok(())
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("s.sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("vireod.log")
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = match &self.opts.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(binary("vireod"));
                c
            }
            None => Command::new(binary("vireod")),
        };
        let child = cmd
            .arg("--config")
            .arg(self.dir.path().join("vireod.toml"))
            .env("RUST_LOG", "info,vireo=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning vireod")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.socket().exists() && self.cli(&["host", "show"]).status.success() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!("vireod exited with {status}; log:\n{}", self.log());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("vireod did not come up; log:\n{}", self.log())
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGKILLs the daemon (VMs keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the daemon again on the same state.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.spawn()
    }

    /// Runs the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_stdin(args, None)
    }

    /// Runs the CLI with `stdin` piped in.
    pub fn cli_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new(binary("vireo"));
        cmd.args(args)
            .env("VIREO_SOCKET", self.socket())
            .env_remove("VIREO_REMOTE")
            .env_remove("VIREO_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => panic!("running vireo: {e}"),
        };
        if let Some(data) = stdin {
            if let Some(mut si) = child.stdin.take() {
                let _ = si.write_all(data);
            }
        }
        child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for vireo: {e}"))
    }

    /// Runs the CLI and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "vireo {} failed ({}):\nstdout: {}\nstderr: {}\ndaemon log tail:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 40)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `vireo --output json ARGS` parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["--output", "json"];
        full.extend_from_slice(args);
        let out = self.ok(&full);
        serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!("vireo {} printed invalid JSON ({e}): {out}", args.join(" "))
        })
    }

    /// Builds (or finds) the tiny image in this daemon.
    pub fn ensure_tiny(&self) {
        if !self.cli(&["image", "show", "tiny"]).status.success() {
            self.ok(&["image", "build", "tiny"]);
        }
    }

    /// Polls `vireo vm show NAME` until `pred` holds or `timeout` passes.
    pub fn wait_vm(
        &self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.json(&["vm", "show", name]);
            if pred(&v) {
                return v;
            }
            if Instant::now() > deadline {
                panic!("VM {name} did not reach the expected state in {timeout:?}: {v}\ndaemon log tail:\n{}", tail(&self.log(), 40));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Raw HTTP/1.1 request over the unix socket: (status, body).
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http_unix(&self.socket(), method, path, body, &[])
    }

    /// QEMU pids recorded under the state directory.
    pub fn qemu_pids(&self) -> Vec<i32> {
        let mut pids = vec![];
        if let Ok(rd) = std::fs::read_dir(self.state_dir().join("vms")) {
            for e in rd.flatten() {
                if let Ok(s) = std::fs::read_to_string(e.path().join("qemu.pid")) {
                    if let Ok(p) = s.trim().parse::<i32>() {
                        if Path::new(&format!("/proc/{p}")).exists() {
                            pids.push(p);
                        }
                    }
                }
            }
        }
        pids
    }
}

/// Storage helpers: guest shell, operations, pools (used by the `real_storage*` tests).
impl TestDaemon {
    /// Runs `script` with `sh -c` in guest `vm` through the agent; asserts exit 0, returns stdout.
    pub fn sh(&self, vm: &str, script: &str) -> String {
        self.ok(&["vm", "exec", vm, "--", "sh", "-c", script])
    }

    /// Waits until `vm` runs and its guest agent answers.
    pub fn wait_ready(&self, vm: &str) -> serde_json::Value {
        self.wait_vm(vm, Duration::from_secs(120), |v| {
            v["state"] == "running" && v["guest_ready"] == true
        })
    }

    /// Polls operation `id` until it is no longer pending/running; returns it.
    pub fn wait_operation(&self, id: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let op = self.json(&["operation", "show", id]);
            let status = op["status"].as_str().unwrap_or("");
            if !matches!(status, "pending" | "running") {
                return op;
            }
            if Instant::now() > deadline {
                panic!(
                    "operation {id} still {status} after {timeout:?}: {op}\ndaemon log tail:\n{}",
                    tail(&self.log(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// [`TestDaemon::http`] with the body parsed as JSON (`Null` when empty or not JSON).
    pub fn http_json(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let (status, text) = self.http(method, path, body);
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// The directory of storage pool `pool` (from `vireo storage pool show`).
    pub fn pool_dir(&self, pool: &str) -> PathBuf {
        let info = self.json(&["storage", "pool", "show", pool]);
        PathBuf::from(
            info["path"]
                .as_str()
                .unwrap_or_else(|| panic!("pool {pool} has no path: {info}")),
        )
    }

    /// Volume records of `pool` (`vireo storage volume list --pool POOL`).
    pub fn volumes(&self, pool: &str) -> Vec<serde_json::Value> {
        match self.json(&["storage", "volume", "list", "--pool", pool]) {
            serde_json::Value::Array(v) => v,
            other => panic!("volume list is not an array: {other}"),
        }
    }

    /// Compares the files in `pool`'s directory with its volume records (a `dir` pool stores
    /// volume UUID `u` as `u.qcow2`): returns (files without a record, records without a file),
    /// both sorted. Both empty means the pool holds exactly what the daemon knows about.
    pub fn pool_mismatch(&self, pool: &str) -> (Vec<String>, Vec<String>) {
        let expected: std::collections::BTreeSet<String> = self
            .volumes(pool)
            .iter()
            .map(|v| format!("{}.qcow2", v["uuid"].as_str().unwrap_or("?")))
            .collect();
        let present: std::collections::BTreeSet<String> = std::fs::read_dir(self.pool_dir(pool))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        (
            present.difference(&expected).cloned().collect(),
            expected.difference(&present).cloned().collect(),
        )
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.kill9();
        // Helpers a managed-network daemon started (dnsmasq, ovsdb-server, ovs-vswitchd) name
        // files under the state directory on their command lines.
        kill_processes_mentioning(&self.state_dir());
        for pid in self.qemu_pids() {
            // Only kill processes that are QEMUs of this state directory.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let dir = self.state_dir();
            let needle = dir.as_os_str().as_encoded_bytes();
            if cmdline.windows(needle.len()).any(|w| w == needle) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Minimal HTTP/1.1 client over a unix socket for raw API tests (hostile bodies included).
pub fn http_unix(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use std::io::Read;
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .unwrap_or_else(|e| panic!("connecting {}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: vireo\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("writing request: {e}"));
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// SIGKILLs every process whose command line contains `dir` (a test's unique temporary
/// directory), except this process.
pub fn kill_processes_mentioning(dir: &Path) {
    let needle = dir.as_os_str().as_encoded_bytes();
    if needle.len() < 8 {
        return;
    }
    let me = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
