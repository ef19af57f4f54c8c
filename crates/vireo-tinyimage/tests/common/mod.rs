//! Helpers shared by the real-QEMU tests of the tiny image (`boot.rs`) and the tiny disk
//! (`disk_boot.rs`): where the Debian package cache is, a QEMU process whose serial console is
//! captured and whose guest-agent port is wired up (the tests add machine, disks and network),
//! and a minimal line-oriented qemu-guest-agent client.
//!
//! Invariants:
//! - a [`Qemu`] kills and reaps its process when dropped, so a failing test leaves no guest
//!   running;
//! - the console is read by a background thread into a buffer the test polls; QEMU is started
//!   with the console socket in `wait=on` mode, so no output is lost before the test connects;
//! - every wait is bounded by a timeout and fails with the console text (or QEMU's stderr).
// Each test binary includes this module and uses a different subset of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use base64::Engine;
use serde_json::{json, Value};

/// The shared package cache the image builds read (`VIREO_TINY_CACHE` overrides it).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("VIREO_TINY_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/vireo-test/tiny"))
}

/// How long QEMU may take to create its serial socket.
const SERIAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Poll interval of the console and exit waits.
const POLL: Duration = Duration::from_millis(20);

/// A running QEMU with its serial console captured; killed when dropped.
pub struct Qemu {
    child: Child,
    /// Working directory of this VM (sockets, `qemu.stderr`).
    pub dir: PathBuf,
    serial: Arc<Mutex<Vec<u8>>>,
    serial_in: UnixStream,
    /// When QEMU was spawned (boot timings are measured from here).
    pub started: Instant,
}

impl Qemu {
    /// Spawns `cmd` (machine, firmware, disks, network) after appending the serial console,
    /// a `server=on,wait=on` chardev socket at `dir/serial.sock`, and the guest agent's
    /// virtio-serial port at `dir/ga.sock`; stdin and stdout are null, stderr goes to
    /// `dir/qemu.stderr`. Connects to the console and starts capturing it.
    pub fn spawn(cmd: &mut Command, dir: &Path) -> Result<Qemu> {
        let serial_sock = dir.join("serial.sock");
        let _ = std::fs::remove_file(&serial_sock);
        // wait=on: QEMU does not start the guest before the test is connected, so no console
        // output (firmware, boot loader, kernel) is lost.
        cmd.arg("-chardev")
            .arg(format!(
                "socket,id=con,path={},server=on,wait=on",
                serial_sock.display()
            ))
            .args(["-serial", "chardev:con"])
            .args(["-device", "virtio-serial-pci"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=ga,path={},server=on,wait=off",
                dir.join("ga.sock").display()
            ))
            .args([
                "-device",
                "virtserialport,chardev=ga,name=org.qemu.guest_agent.0",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("qemu.stderr"))?);
        let started = Instant::now();
        let mut child = cmd.spawn().context("spawning qemu-system-x86_64")?;
        let serial_in = loop {
            match UnixStream::connect(&serial_sock) {
                Ok(s) => break s,
                Err(_) if started.elapsed() < SERIAL_CONNECT_TIMEOUT => {
                    if let Some(status) = child.try_wait()? {
                        bail!(
                            "QEMU exited early ({status}): {}",
                            std::fs::read_to_string(dir.join("qemu.stderr")).unwrap_or_default()
                        );
                    }
                    std::thread::sleep(POLL);
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e).context("connecting to the serial socket");
                }
            }
        };
        let serial = Arc::new(Mutex::new(Vec::new()));
        let mut reader = serial_in.try_clone()?;
        let sink = Arc::clone(&serial);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Ok(Qemu {
            child,
            dir: dir.to_owned(),
            serial,
            serial_in,
            started,
        })
    }

    /// Everything the console printed so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.serial.lock().unwrap()).into_owned()
    }

    /// Bytes the console printed so far (a mark for [`Qemu::wait_console`]).
    pub fn console_len(&self) -> usize {
        self.serial.lock().unwrap().len()
    }

    /// Waits until `needle` appears in the console output after byte offset `from`; returns
    /// the time since QEMU started.
    pub fn wait_console(
        &mut self,
        needle: &str,
        from: usize,
        timeout: Duration,
    ) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.console();
            if text.get(from..).is_some_and(|t| t.contains(needle)) {
                return Ok(self.started.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("QEMU exited ({status}) before {needle:?}; console:\n{text}");
            }
            if Instant::now() > deadline {
                bail!("no {needle:?} on the console within {timeout:?}; console:\n{text}");
            }
            std::thread::sleep(POLL);
        }
    }

    /// Types `line` and Enter on the serial console.
    pub fn type_line(&mut self, line: &str) -> Result<()> {
        self.serial_in.write_all(format!("{line}\n").as_bytes())?;
        Ok(())
    }

    /// Connects to the guest agent at `dir/ga.sock` (see [`Agent::connect`]).
    pub fn agent(&self, read_timeout: Duration) -> Result<Agent> {
        Agent::connect(&self.dir.join("ga.sock"), read_timeout)
    }

    /// Waits for QEMU to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!(
                    "QEMU still running after {timeout:?}; console:\n{}",
                    self.console()
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// qemu-guest-agent over its unix socket, one JSON document per line.
pub struct Agent {
    writer: UnixStream,
    lines: std::io::Lines<BufReader<UnixStream>>,
}

/// Outcome of a guest process run through `guest-exec`.
pub struct ExecResult {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
}

impl Agent {
    /// Connects and synchronises with `guest-sync`; every later read waits at most
    /// `read_timeout`.
    pub fn connect(path: &Path, read_timeout: Duration) -> Result<Agent> {
        // A fresh id per connection: replies a previous client left queued never match it.
        static NEXT_SYNC: AtomicI64 = AtomicI64::new(1);
        let stream = UnixStream::connect(path).context("connecting to the agent socket")?;
        stream.set_read_timeout(Some(read_timeout))?;
        let mut agent = Agent {
            writer: stream.try_clone()?,
            lines: BufReader::new(stream).lines(),
        };
        // guest-sync discards anything a previous client left in the channel.
        let id = i64::from(std::process::id()) * 1000 + NEXT_SYNC.fetch_add(1, Ordering::Relaxed);
        writeln!(
            agent.writer,
            "{}",
            json!({"execute": "guest-sync", "arguments": {"id": id}})
        )?;
        loop {
            let line = agent.lines.next().context("agent closed during sync")??;
            if serde_json::from_str::<Value>(&line).is_ok_and(|v| v["return"] == json!(id)) {
                return Ok(agent);
            }
        }
    }

    /// Sends `command` and returns its `return` value (an `error` reply fails).
    pub fn call(&mut self, command: Value) -> Result<Value> {
        writeln!(self.writer, "{command}")?;
        let line = self.lines.next().context("agent closed")??;
        let reply: Value = serde_json::from_str(&line)?;
        if let Some(err) = reply.get("error") {
            bail!("agent error for {command}: {err}");
        }
        reply
            .get("return")
            .cloned()
            .ok_or_else(|| anyhow!("agent reply without return: {line}"))
    }

    /// Only sends: commands like guest-shutdown answer nothing on success.
    pub fn send(&mut self, command: Value) -> Result<()> {
        writeln!(self.writer, "{command}")?;
        Ok(())
    }

    /// Runs `path args…` in the guest with output captured; polls until it exits (30 s).
    pub fn exec(&mut self, path: &str, args: &[&str]) -> Result<ExecResult> {
        let started = self.call(json!({
            "execute": "guest-exec",
            "arguments": {"path": path, "arg": args, "capture-output": true}
        }))?;
        let pid = started["pid"].clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.call(json!({
                "execute": "guest-exec-status", "arguments": {"pid": pid}
            }))?;
            if status["exited"] == json!(true) {
                let decode = |key: &str| -> Result<String> {
                    let b64 = status.get(key).and_then(Value::as_str).unwrap_or("");
                    let bytes = base64::engine::general_purpose::STANDARD.decode(b64)?;
                    Ok(String::from_utf8_lossy(&bytes).into_owned())
                };
                return Ok(ExecResult {
                    exit_code: status["exitcode"].as_i64().unwrap_or(-1),
                    stdout: decode("out-data")?,
                    stderr: decode("err-data")?,
                });
            }
            ensure!(
                Instant::now() < deadline,
                "guest-exec {path} did not finish"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `sh -c script`, requires exit code 0 and returns its stdout.
    pub fn shell(&mut self, script: &str) -> Result<String> {
        let r = self.exec("/bin/sh", &["-c", script])?;
        ensure!(
            r.exit_code == 0,
            "`{script}` exited {}: {}",
            r.exit_code,
            r.stderr
        );
        Ok(r.stdout)
    }
}
