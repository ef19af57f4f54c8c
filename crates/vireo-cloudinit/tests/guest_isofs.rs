//! The Linux kernel's isofs reads the seeds: Vireo's tiny guest (Debian's cloud kernel, built
//! from Debian packages by vireo-tinyimage and cached) boots under TCG with two ISOs on a
//! virtio-scsi CD-ROM controller — a rendered seed and a stress volume (32 files, a
//! multi-sector directory, empty and 1 MiB files) — and mounts each with Rock Ridge (the
//! default) and with `norock` (Joliet), listing names and hashing every file from the guest's
//! serial console. The host kernel of the build machines has no isofs, so this is where the
//! kernel check happens; `iso_oracles.rs` also loop-mounts when the host can.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use vireo_cloudinit::iso9660::{write_iso, IsoFile, IsoImage};
use vireo_cloudinit::render_seed;
use vireo_tinyimage::{build, BuildOptions};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// QEMU with its serial console on stdin/stdout; killed when dropped.
struct Guest {
    child: Child,
    stdin: ChildStdin,
    console: Arc<Mutex<Vec<u8>>>,
}

impl Guest {
    fn console(&self) -> String {
        String::from_utf8_lossy(&self.console.lock().unwrap()).into_owned()
    }

    /// Waits for `needle` after byte `from`; returns the console text after `from`.
    fn wait_for(&mut self, needle: &str, from: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.console();
            if let Some(tail) = text.get(from..) {
                if tail.contains(needle) {
                    return tail.to_string();
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("QEMU exited ({status}) before {needle:?}; console:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {timeout:?}; console:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `script` in the console shell and returns what it printed between two markers
    /// (computed by the shell, so the echoed command line never matches).
    fn run(&mut self, script: &str) -> String {
        let from = self.console.lock().unwrap().len();
        let line = format!("echo BEGIN-$((20+1)); {script}; echo END-$((40+2))-$?\n");
        self.stdin.write_all(line.as_bytes()).unwrap();
        let tail = self.wait_for("END-42-", from, COMMAND_TIMEOUT);
        let body = tail.split("BEGIN-21").nth(1).unwrap_or("");
        let (output, rest) = body.split_once("END-42-").unwrap();
        assert!(
            rest.starts_with('0'),
            "`{script}` failed:\n{}",
            output.replace('\r', "")
        );
        output.replace('\r', "")
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stress_image() -> IsoImage {
    let mut files: Vec<IsoFile> = (0..31)
        .map(|i| IsoFile {
            name: format!("stress-{i:02}.data"),
            data: (0..(i * 977) % 9000).map(|b| (b * 13 + i) as u8).collect(),
        })
        .collect();
    files.push(IsoFile {
        name: "big".into(),
        data: (0..1usize << 20).map(|b| (b % 253) as u8).collect(),
    });
    IsoImage {
        volume_id: "stress".into(),
        recorded_at: common::recorded_at(),
        files,
    }
}

/// name → sha256 hex, as the guest should see the volume.
fn expected_hashes(image: &IsoImage) -> BTreeMap<String, String> {
    image
        .files
        .iter()
        .map(|f| (f.name.clone(), hex::encode(Sha256::digest(&f.data))))
        .collect()
}

/// Parses `sha256sum` output (`HASH  /mnt/x/NAME` lines) into name → hash.
fn parse_sums(output: &str) -> BTreeMap<String, String> {
    output
        .lines()
        .filter_map(|l| l.split_once("  "))
        .filter(|(hash, _)| hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|(hash, path)| {
            let name = path.trim().rsplit('/').next().unwrap_or("").to_string();
            (name, hash.trim().to_string())
        })
        .collect()
}

#[test]
fn guest_kernel_mounts_seeds_with_exact_names() {
    let work = tempfile::tempdir().unwrap();
    let cache = std::env::var_os("VIREO_TINY_CACHE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/cache/vireo-test/tiny".into());
    let image = build(&BuildOptions {
        cache_dir: cache,
        out_dir: work.path().join("tiny"),
        progress: None,
    })
    .expect("building the tiny guest image");

    let (_, seed_input) = common::cases().remove(1);
    let seed = render_seed(&seed_input)
        .unwrap()
        .iso_image(common::recorded_at());
    let stress = stress_image();
    let seed_iso = work.path().join("seed.iso");
    let stress_iso = work.path().join("stress.iso");
    std::fs::write(&seed_iso, write_iso(&seed).unwrap()).unwrap();
    std::fs::write(&stress_iso, write_iso(&stress).unwrap()).unwrap();

    let cdrom = |id: &str, path: &Path, scsi_id: u32| {
        [
            "-drive".to_string(),
            format!(
                "file={},if=none,id={id},media=cdrom,format=raw,readonly=on",
                path.display()
            ),
            "-device".to_string(),
            format!("scsi-cd,drive={id},bus=scsi0.0,scsi-id={scsi_id}"),
        ]
    };
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nodefaults",
        ])
        .args(["-display", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .args(["-append", &image.cmdline])
        .args([
            "-chardev",
            "stdio,id=con,signal=off",
            "-serial",
            "chardev:con",
        ])
        .args(["-device", "virtio-scsi-pci,id=scsi0"])
        .args(cdrom("seed", &seed_iso, 0))
        .args(cdrom("stress", &stress_iso, 1))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-system-x86_64");
    let stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let console = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&console);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let mut guest = Guest {
        child,
        stdin,
        console,
    };
    guest.wait_for(&image.ready_marker, 0, BOOT_TIMEOUT);
    guest.wait_for(":~# ", 0, COMMAND_TIMEOUT);

    let mut seen = Vec::new();
    for dev in ["/dev/sr0", "/dev/sr1"] {
        for options in ["ro", "ro,norock"] {
            let out = guest.run(&format!(
                "mkdir -p /mnt/cd && mount -t iso9660 -o {options} {dev} /mnt/cd && ls -ln /mnt/cd && sha256sum /mnt/cd/*; r=$?; umount /mnt/cd; [ $r = 0 ]"
            ));
            let sums = parse_sums(&out);
            let want = if sums.contains_key("meta-data") {
                expected_hashes(&seed)
            } else {
                expected_hashes(&stress)
            };
            assert_eq!(sums, want, "{dev} -o {options}:\n{out}");
            if options == "ro" {
                // Rock Ridge modes: every file r--r--r--, owned by root.
                let files: Vec<&str> = out.lines().filter(|l| l.starts_with('-')).collect();
                assert_eq!(files.len(), want.len(), "{out}");
                assert!(files.iter().all(|l| l.starts_with("-r--r--r--")), "{out}");
            }
            seen.push(want.len());
        }
    }
    seen.sort();
    assert_eq!(seen, [4, 4, 32, 32], "both volumes mounted both ways");
    let hostname = guest.run("mount -t iso9660 -o ro /dev/sr0 /mnt/cd 2>/dev/null || mount -t iso9660 -o ro /dev/sr1 /mnt/cd; grep local-hostname /mnt/cd/meta-data; umount /mnt/cd");
    assert!(
        hostname.contains("local-hostname: \"db1.example.com\""),
        "{hostname}"
    );
}
