//! Real test of the Debian image: build it (or reuse the cached build), boot it under TCG
//! through SeaBIOS and through OVMF, and check over qemu-guest-agent that systemd reached
//! `multi-user.target`, cloud-init finished, and the per-machine state was made at first boot.
//!
//! The image is cached in `$VIREO_TEST_CACHE/debian/image` (default
//! `/var/cache/vireo-test/debian/image`) and rebuilt only when [`ValidSpec::fingerprint`]
//! changes (builder revision, release, size, packages, mirror, generated configuration);
//! downloaded packages are kept in `$VIREO_TEST_CACHE/debian/debs`. A cold build takes
//! several minutes and the TCG boots one to three minutes each, so the tests are `#[ignore]`d
//! in the default run; `docs/testing.md` ("Debian image") has the command.
//!
//! Needs root, debootstrap, e2fsprogs, GRUB (grub-pc-bin, grub-efi-amd64-bin), ovmf,
//! qemu-system-x86_64 and qemu-img. The guest's NIC is QEMU user networking with
//! `restrict=on`: DHCP from QEMU itself, nothing leaves the host.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine;
use serde_json::{json, Value};
use vireo_distro::{BuildOptions, DebianImage, DebianSpec};

/// SeaBIOS + GRUB + systemd + cloud-init under TCG on a shared 2-core machine.
const BIOS_BOOT_TIMEOUT: Duration = Duration::from_secs(420);
/// OVMF adds its own slow start under TCG.
const UEFI_BOOT_TIMEOUT: Duration = Duration::from_secs(600);
const AGENT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

fn cache_root() -> PathBuf {
    std::env::var_os("VIREO_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/vireo-test"))
        .join("debian")
}

/// The cached image, rebuilt when the spec's fingerprint changed or the qcow2 is missing.
fn image() -> Result<DebianImage> {
    let spec = DebianSpec::default();
    let valid = spec.validate()?;
    let out = cache_root().join("image");
    if let Some(img) = vireo_distro::load(&out, &valid.release)? {
        if img.fingerprint == valid.fingerprint() && img.path.is_file() {
            eprintln!(
                "using cached {} (built in {:.0} s)",
                img.path.display(),
                img.build_seconds
            );
            return Ok(img);
        }
    }
    std::fs::create_dir_all(&out)?;
    let started = Instant::now();
    let progress =
        |line: &str| eprintln!("  build [{:6.1}s] {line}", started.elapsed().as_secs_f64());
    let mut opts = BuildOptions::new(cache_root(), &out);
    opts.spec = spec;
    opts.progress = Some(&progress);
    let img = vireo_distro::build_debian(&opts)?;
    eprintln!("built {} in {:.0} s", img.path.display(), img.build_seconds);
    Ok(img)
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A QEMU process, killed when dropped; its serial console goes to `dir/console.log`.
struct Vm {
    child: Child,
    dir: PathBuf,
    started: Instant,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    fn start(img: &DebianImage, uefi: bool, dir: &Path) -> Result<Vm> {
        let overlay = dir.join("disk.qcow2");
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&img.path)
            .arg(&overlay))?;
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-machine", "q35", "-accel", "tcg", "-smp", "2", "-m", "1024",
        ])
        .args(["-nodefaults", "-display", "none", "-no-reboot"]);
        if uefi {
            let template = vireo_qemu::ovmf::locate()?;
            let files = vireo_qemu::ovmf::prepare_vars(&template, &dir.join("vars.fd"))?;
            cmd.arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    files.code.display()
                ))
                .arg("-drive")
                .arg(format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    files.vars.display()
                ));
        }
        cmd.arg("-drive")
            .arg(format!(
                "if=none,id=disk0,format=qcow2,file={}",
                overlay.display()
            ))
            .args(["-device", "virtio-blk-pci,drive=disk0,bootindex=1"])
            .args(["-nic", "user,model=virtio-net-pci,restrict=on"])
            .arg("-chardev")
            .arg(format!(
                "file,id=con,path={}",
                dir.join("console.log").display()
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
        let child = cmd.spawn().context("spawning qemu-system-x86_64")?;
        Ok(Vm {
            child,
            dir: dir.to_owned(),
            started: Instant::now(),
        })
    }

    /// The console so far; lossy because firmware and GRUB menus print bytes that are not
    /// UTF-8.
    fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.join("console.log")).unwrap_or_default())
            .into_owned()
    }

    fn context(&mut self) -> String {
        let exited = self.child.try_wait().ok().flatten();
        let console = self.console();
        let tail: Vec<&str> = console.lines().rev().take(60).collect();
        format!(
            "QEMU exited: {exited:?}; stderr: {}\nconsole tail:\n{}",
            std::fs::read_to_string(self.dir.join("qemu.stderr")).unwrap_or_default(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    /// Connects to the agent and waits until it answers `guest-sync`.
    fn agent(&mut self, timeout: Duration) -> Result<Agent> {
        let deadline = Instant::now() + timeout;
        let mut attempt = 0u64;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "QEMU exited ({status}) before the agent answered\n{}",
                    self.context()
                );
            }
            attempt += 1;
            if let Ok(stream) = UnixStream::connect(self.dir.join("ga.sock")) {
                let mut agent = Agent::new(stream)?;
                if agent.sync(attempt, Duration::from_secs(5)).is_ok() {
                    return Ok(agent);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the guest agent did not answer within {timeout:?}\n{}",
                    self.context()
                );
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

/// A line-oriented qemu-guest-agent client.
struct Agent {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Agent {
    fn new(stream: UnixStream) -> Result<Agent> {
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Agent { stream, reader })
    }

    /// `guest-sync` with a unique id; discards stale replies until the matching one.
    fn sync(&mut self, id: u64, timeout: Duration) -> Result<()> {
        self.stream.set_read_timeout(Some(timeout))?;
        writeln!(
            self.stream,
            "{}",
            json!({"execute": "guest-sync", "arguments": {"id": id}})
        )?;
        loop {
            let mut line = String::new();
            ensure!(self.reader.read_line(&mut line)? > 0, "agent closed");
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["return"] == json!(id) {
                    return Ok(());
                }
            }
        }
    }

    fn call(&mut self, cmd: Value) -> Result<Value> {
        self.stream.set_read_timeout(Some(AGENT_REPLY_TIMEOUT))?;
        writeln!(self.stream, "{cmd}")?;
        let mut line = String::new();
        ensure!(self.reader.read_line(&mut line)? > 0, "agent closed");
        let v: Value = serde_json::from_str(&line).with_context(|| format!("reply {line:?}"))?;
        if let Some(e) = v.get("error") {
            bail!("{cmd} failed: {e}");
        }
        Ok(v["return"].clone())
    }

    /// Runs a program in the guest; returns (exit code, stdout).
    fn exec(&mut self, path: &str, args: &[&str], timeout: Duration) -> Result<(i64, String)> {
        let ret = self.call(json!({"execute": "guest-exec", "arguments": {
            "path": path, "arg": args, "capture-output": true}}))?;
        let pid = ret["pid"].as_i64().context("guest-exec pid")?;
        let deadline = Instant::now() + timeout;
        loop {
            let st =
                self.call(json!({"execute": "guest-exec-status", "arguments": {"pid": pid}}))?;
            if st["exited"] == json!(true) {
                let out = st["out-data"]
                    .as_str()
                    .map(|s| base64::engine::general_purpose::STANDARD.decode(s))
                    .transpose()?
                    .unwrap_or_default();
                return Ok((
                    st["exitcode"].as_i64().unwrap_or(-1),
                    String::from_utf8_lossy(&out).into_owned(),
                ));
            }
            ensure!(
                Instant::now() < deadline,
                "{path} {args:?} still running after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Boots the image and checks the guest from the inside.
fn boot_and_check(uefi: bool, timeout: Duration) -> Result<()> {
    let img = image()?;
    let dir = tempfile::tempdir()?;
    let mut vm = Vm::start(&img, uefi, dir.path())?;
    let mut agent = vm.agent(timeout)?;
    let agent_at = vm.started.elapsed();
    let platform = if uefi { "efi" } else { "pc" };
    eprintln!("{platform}: guest agent answered after {agent_at:.1?}");

    // multi-user.target: systemd's boot finished (running, or degraded for a failed
    // unit, which the check below names).
    let (_, state) = agent.exec(
        "/usr/bin/systemctl",
        &["is-system-running", "--wait"],
        timeout,
    )?;
    let (code, target) = agent.exec(
        "/usr/bin/systemctl",
        &["is-active", "multi-user.target"],
        Duration::from_secs(60),
    )?;
    let (_, failed) = agent.exec(
        "/usr/bin/systemctl",
        &["--failed", "--no-legend", "--plain"],
        Duration::from_secs(60),
    )?;
    eprintln!(
        "{platform}: system {} after {:.1?}; failed units: {failed:?}",
        state.trim(),
        vm.started.elapsed()
    );
    ensure!(
        code == 0 && target.trim() == "active",
        "multi-user.target: {target}"
    );
    if state.trim() != "running" {
        // Explain the failure: the failed units' journals and cloud-init's own log.
        let mut why = String::new();
        for unit in failed.lines().filter_map(|l| l.split_whitespace().next()) {
            let (_, log) = agent.exec(
                "/usr/bin/journalctl",
                &["--no-pager", "-n", "60", "-u", unit],
                Duration::from_secs(60),
            )?;
            why.push_str(&log);
        }
        let (_, ci_log) = agent.exec(
            "/usr/bin/tail",
            &["-n", "80", "/var/log/cloud-init.log"],
            Duration::from_secs(60),
        )?;
        bail!("system state {state:?}, failed units: {failed}\n{why}\ncloud-init.log:\n{ci_log}");
    }

    let (code, ci) = agent.exec("/usr/bin/cloud-init", &["status", "--wait"], timeout)?;
    ensure!(
        code == 0 && ci.contains("done"),
        "cloud-init status: {ci} ({code})"
    );
    eprintln!(
        "{platform}: cloud-init done after {:.1?}",
        vm.started.elapsed()
    );

    // First-boot state: a fresh machine-id and SSH host keys; sshd listening.
    let (_, machine_id) = agent.exec(
        "/usr/bin/cat",
        &["/etc/machine-id"],
        Duration::from_secs(30),
    )?;
    ensure!(machine_id.trim().len() == 32, "machine-id {machine_id:?}");
    let (code, _) = agent.exec(
        "/usr/bin/test",
        &["-s", "/etc/ssh/ssh_host_ed25519_key.pub"],
        Duration::from_secs(30),
    )?;
    ensure!(code == 0, "no SSH host key was generated");
    let (code, ssh) = agent.exec(
        "/usr/bin/systemctl",
        &["is-active", "ssh.service"],
        Duration::from_secs(30),
    )?;
    ensure!(code == 0, "ssh.service: {ssh}");

    // The console shows GRUB's line for this firmware path and a serial login prompt.
    let console = vm.console();
    ensure!(
        console.contains(&format!("vireo-debian: GRUB ({platform})")),
        "no GRUB line for {platform}\n{}",
        vm.context()
    );
    ensure!(
        console.contains("login:"),
        "no getty on ttyS0\n{}",
        vm.context()
    );

    let _ = agent.call(json!({"execute": "guest-shutdown", "arguments": {"mode": "powerdown"}}));
    let deadline = Instant::now() + Duration::from_secs(120);
    while vm.child.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("{platform}: total {:.1?}", vm.started.elapsed());
    Ok(())
}

#[test]
#[ignore = "builds a Debian image and boots it under TCG for minutes; see docs/testing.md"]
fn debian_image_boots_through_seabios_to_multi_user_with_agent() -> Result<()> {
    boot_and_check(false, BIOS_BOOT_TIMEOUT)
}

#[test]
#[ignore = "builds a Debian image and boots it under TCG (OVMF) for minutes; see docs/testing.md"]
fn debian_image_boots_through_ovmf() -> Result<()> {
    boot_and_check(true, UEFI_BOOT_TIMEOUT)
}
