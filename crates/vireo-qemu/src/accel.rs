//! Accelerator choice: KVM when it actually runs guests, TCG otherwise.
//!
//! `/dev/kvm` existing is not enough (on the development machines it is a paravirtual KVM on
//! which a stock kernel hangs in early boot), so `auto` boots a real kernel under KVM and
//! watches the serial console for a late-boot line. Anything short of that — no device, QEMU
//! failing, silence until the timeout — selects TCG, with the reason in
//! [`AccelProbe::detail`] and a warning in the log.
//!
//! Invariants: probing never fails (a failed probe is a reason to use TCG); the probe QEMU is
//! always killed before [`probe`] returns; a cached result is only reused when the QEMU
//! binary and version, the kernel (path, size, mtime) and the presence of `/dev/kvm` are all
//! unchanged; the cache file is replaced atomically.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

/// The KVM device node.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// How long the probe guest may take to reach late boot.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Console lines that prove the kernel got through early boot (the probe boots without an
/// initrd, so it either runs an init or panics for lack of a root filesystem).
pub const LATE_BOOT_MARKERS: [&str; 4] = [
    "Run /init",
    "Freeing unused kernel",
    "Kernel panic - not syncing: VFS: Unable to mount root fs",
    "VFS: Cannot open root device",
];

/// Console bytes kept while probing (the markers appear after ~20 KiB of boot log).
const CONSOLE_KEEP: usize = 64 << 10;

/// A resolved accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The configured choice (`accel = "auto" | "kvm" | "tcg"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelPolicy {
    /// Probe whether KVM boots a guest; fall back to TCG.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// A string that is not `auto`, `kvm` or `tcg`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("accelerator must be \"auto\", \"kvm\" or \"tcg\" (got {0:?})")]
pub struct AccelPolicyError(pub String);

impl FromStr for AccelPolicy {
    type Err = AccelPolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(AccelPolicy::Auto),
            "kvm" => Ok(AccelPolicy::Kvm),
            "tcg" => Ok(AccelPolicy::Tcg),
            _ => Err(AccelPolicyError(s.to_string())),
        }
    }
}

impl fmt::Display for AccelPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AccelPolicy::Auto => "auto",
            AccelPolicy::Kvm => "kvm",
            AccelPolicy::Tcg => "tcg",
        })
    }
}

/// Outcome of the accelerator decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelProbe {
    pub chosen: Accel,
    pub kvm_device_present: bool,
    /// A kernel reached late boot under KVM (false when not probed).
    pub kvm_boots_guest: bool,
    /// Human-readable reason for the choice.
    pub detail: String,
    /// `qemu-system-* --version`, e.g. `7.2.22`; `None` when QEMU could not be run.
    pub qemu_version: Option<String>,
}

/// Extracts the version from `qemu-system-x86_64 --version` output.
pub fn parse_qemu_version(output: &str) -> Option<String> {
    let first = output.lines().next()?;
    let rest = first.split("version").nth(1)?;
    let token = rest.split_whitespace().next()?;
    token
        .chars()
        .next()
        .filter(char::is_ascii_digit)
        .map(|_| token.trim_end_matches(',').to_string())
}

/// Returns the first late-boot marker found in `console`.
pub fn late_boot_marker(console: &str) -> Option<&'static str> {
    LATE_BOOT_MARKERS
        .iter()
        .copied()
        .find(|m| console.contains(m))
}

/// Runs `qemu_bin --version`.
pub async fn qemu_version(qemu_bin: &Path) -> Option<String> {
    let run = tokio::process::Command::new(qemu_bin)
        .arg("--version")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(Ok(out)) if out.status.success() => {
            parse_qemu_version(&String::from_utf8_lossy(&out.stdout))
        }
        _ => None,
    }
}

/// The argv of the probe guest: the kernel alone, serial console on stdout, no reboot.
pub fn probe_argv(qemu_bin: &Path, kernel: &Path, accel: Accel) -> Vec<String> {
    [
        qemu_bin.to_string_lossy().as_ref(),
        "-machine",
        "q35",
        "-accel",
        accel.as_str(),
        "-cpu",
        match accel {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        },
        "-smp",
        "1",
        "-m",
        "256M",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
        kernel.to_string_lossy().as_ref(),
        "-append",
        "console=ttyS0 panic=-1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn last_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .chars()
        .take(200)
        .collect()
}

fn keep_tail(buf: &mut Vec<u8>) {
    if buf.len() > CONSOLE_KEEP {
        let cut = buf.len() - CONSOLE_KEEP;
        buf.drain(..cut);
    }
}

/// Boots `kernel` (no initrd) under `accel` and watches the serial console for a
/// [`LATE_BOOT_MARKERS`] line. `Ok` describes the success, `Err` why the boot did not get
/// there. The guest is killed before this returns.
pub async fn boot_check(
    qemu_bin: &Path,
    kernel: &Path,
    accel: Accel,
    timeout: Duration,
) -> Result<String, String> {
    let argv = probe_argv(qemu_bin, kernel, accel);
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu_bin.display()))?;
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err("probe QEMU has no output pipes".into());
    };
    let (mut console, mut errors) = (Vec::new(), Vec::new());
    let (mut out_chunk, mut err_chunk) = (vec![0u8; 8192], vec![0u8; 4096]);
    let (mut out_open, mut err_open) = (true, true);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let outcome = loop {
        tokio::select! {
            n = stdout.read(&mut out_chunk), if out_open => match n {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => {
                    console.extend_from_slice(&out_chunk[..n]);
                    if let Some(marker) = late_boot_marker(&String::from_utf8_lossy(&console)) {
                        break Ok(format!(
                            "a kernel booted under {} (console showed {marker:?} after {} ms)",
                            accel.as_str().to_uppercase(),
                            started.elapsed().as_millis()
                        ));
                    }
                    keep_tail(&mut console);
                }
            },
            n = stderr.read(&mut err_chunk), if err_open => match n {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => {
                    errors.extend_from_slice(&err_chunk[..n]);
                    keep_tail(&mut errors);
                }
            },
            status = child.wait(), if !out_open && !err_open => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                break Err(format!(
                    "QEMU with -accel {accel} exited ({status}) before the kernel reached late boot: {}",
                    last_line(if errors.is_empty() { &console } else { &errors })
                ));
            }
            _ = &mut deadline => {
                break Err(format!(
                    "a kernel under {} did not reach late boot within {} s (last console line: {:?})",
                    accel.as_str().to_uppercase(),
                    timeout.as_secs(),
                    last_line(&console)
                ));
            }
        }
    };
    let _ = child.start_kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    outcome
}

/// Probes whether KVM boots `kernel` (see the module docs). Never fails.
pub async fn probe(qemu_bin: &Path, kernel: &Path, timeout: Duration) -> AccelProbe {
    probe_with_device(qemu_bin, kernel, timeout, Path::new(KVM_DEVICE)).await
}

/// [`probe`] with another KVM device path (tests use a missing path).
pub async fn probe_with_device(
    qemu_bin: &Path,
    kernel: &Path,
    timeout: Duration,
    kvm_device: &Path,
) -> AccelProbe {
    let qemu_version = qemu_version(qemu_bin).await;
    let kvm_device_present = kvm_device.exists();
    let (chosen, kvm_boots_guest, detail) = if !kvm_device_present {
        (
            Accel::Tcg,
            false,
            format!("{} does not exist; using TCG", kvm_device.display()),
        )
    } else {
        match boot_check(qemu_bin, kernel, Accel::Kvm, timeout).await {
            Ok(detail) => (Accel::Kvm, true, detail),
            Err(reason) => (Accel::Tcg, false, format!("{reason}; using TCG")),
        }
    };
    if chosen == Accel::Tcg && kvm_device_present {
        tracing::warn!(%detail, "KVM is present but does not run guests: falling back to TCG software emulation (slow)");
    } else {
        tracing::info!(accel = %chosen, %detail, "accelerator probed");
    }
    AccelProbe {
        chosen,
        kvm_device_present,
        kvm_boots_guest,
        detail,
        qemu_version,
    }
}

/// What a cached probe result depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CacheKey {
    qemu_binary: PathBuf,
    qemu_version: Option<String>,
    kernel: PathBuf,
    kernel_size: u64,
    kernel_mtime_secs: u64,
    kernel_mtime_nanos: u32,
    kvm_device_present: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct CacheFile {
    key: CacheKey,
    probe: AccelProbe,
}

/// Cache files are tiny; anything bigger is not ours.
const MAX_CACHE_BYTES: u64 = 64 << 10;

/// Why the cache could not be written (logged, never fatal).
#[derive(Debug, thiserror::Error)]
enum CacheError {
    #[error("cannot write accelerator cache {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode accelerator cache")]
    Encode(#[source] serde_json::Error),
}

async fn cache_key(qemu_bin: &Path, kernel: &Path, kvm_device: &Path) -> Option<CacheKey> {
    let meta = std::fs::metadata(kernel).ok()?;
    let mtime = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    Some(CacheKey {
        qemu_binary: qemu_bin.to_path_buf(),
        qemu_version: qemu_version(qemu_bin).await,
        kernel: kernel.to_path_buf(),
        kernel_size: meta.len(),
        kernel_mtime_secs: mtime.as_secs(),
        kernel_mtime_nanos: mtime.subsec_nanos(),
        kvm_device_present: kvm_device.exists(),
    })
}

fn read_cache(cache_file: &Path) -> Option<CacheFile> {
    use std::io::Read;
    let mut text = Vec::new();
    std::fs::File::open(cache_file)
        .ok()?
        .take(MAX_CACHE_BYTES)
        .read_to_end(&mut text)
        .ok()?;
    serde_json::from_slice(&text).ok()
}

fn write_cache(cache_file: &Path, entry: &CacheFile) -> Result<(), CacheError> {
    let json = serde_json::to_vec_pretty(entry).map_err(CacheError::Encode)?;
    let tmp = cache_file.with_extension("json.tmp");
    let write_err = |source| CacheError::Write {
        path: cache_file.to_path_buf(),
        source,
    };
    if let Some(parent) = cache_file.parent() {
        std::fs::create_dir_all(parent).map_err(write_err)?;
    }
    std::fs::write(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, cache_file))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            write_err(e)
        })
}

/// Returns the cached probe for these inputs or probes and caches the result.
pub async fn load_or_probe(
    cache_file: &Path,
    qemu_bin: &Path,
    kernel: &Path,
    timeout: Duration,
) -> AccelProbe {
    load_or_probe_with_device(cache_file, qemu_bin, kernel, timeout, Path::new(KVM_DEVICE)).await
}

/// [`load_or_probe`] with another KVM device path.
pub async fn load_or_probe_with_device(
    cache_file: &Path,
    qemu_bin: &Path,
    kernel: &Path,
    timeout: Duration,
    kvm_device: &Path,
) -> AccelProbe {
    let key = cache_key(qemu_bin, kernel, kvm_device).await;
    if let (Some(key), Some(cached)) = (&key, read_cache(cache_file)) {
        if cached.key == *key {
            tracing::debug!(cache = %cache_file.display(), accel = %cached.probe.chosen, "accelerator probe cached");
            return cached.probe;
        }
    }
    let probe = probe_with_device(qemu_bin, kernel, timeout, kvm_device).await;
    // Without a key (kernel unreadable) the result cannot be validated later: don't cache it.
    if let Some(key) = key {
        let entry = CacheFile { key, probe };
        if let Err(e) = write_cache(cache_file, &entry) {
            tracing::warn!(error = %e, "accelerator probe result not cached");
        }
        return entry.probe;
    }
    probe
}

/// Applies the configured policy: `tcg`/`kvm` are taken as given, `auto` probes (cached) with
/// `kernel`, or picks TCG when there is no kernel to probe with.
pub async fn decide(
    policy: AccelPolicy,
    qemu_bin: &Path,
    kernel: Option<&Path>,
    cache_file: &Path,
) -> AccelProbe {
    let kvm_device_present = Path::new(KVM_DEVICE).exists();
    let forced = |chosen: Accel, detail: String| AccelProbe {
        chosen,
        kvm_device_present,
        kvm_boots_guest: false,
        detail,
        qemu_version: None,
    };
    match (policy, kernel) {
        (AccelPolicy::Tcg, _) => AccelProbe {
            qemu_version: qemu_version(qemu_bin).await,
            ..forced(Accel::Tcg, "TCG selected by configuration".into())
        },
        (AccelPolicy::Kvm, _) => {
            let mut detail = "KVM selected by configuration (not probed)".to_string();
            if !kvm_device_present {
                detail.push_str(&format!("; warning: {KVM_DEVICE} does not exist"));
                tracing::warn!("accelerator forced to KVM but {KVM_DEVICE} does not exist");
            }
            AccelProbe {
                qemu_version: qemu_version(qemu_bin).await,
                ..forced(Accel::Kvm, detail)
            }
        }
        (AccelPolicy::Auto, None) => AccelProbe {
            qemu_version: qemu_version(qemu_bin).await,
            ..forced(
                Accel::Tcg,
                "no kernel available to probe KVM with; using TCG".into(),
            )
        },
        (AccelPolicy::Auto, Some(kernel)) => {
            load_or_probe(cache_file, qemu_bin, kernel, DEFAULT_PROBE_TIMEOUT).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_parsing() {
        assert_eq!("auto".parse(), Ok(AccelPolicy::Auto));
        assert_eq!(" KVM ".parse(), Ok(AccelPolicy::Kvm));
        assert_eq!("tcg".parse(), Ok(AccelPolicy::Tcg));
        assert!("hvf".parse::<AccelPolicy>().is_err());
        for p in [AccelPolicy::Auto, AccelPolicy::Kvm, AccelPolicy::Tcg] {
            assert_eq!(p.to_string().parse(), Ok(p));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{p}\""));
        }
        assert_eq!(Accel::Kvm.to_string(), "kvm");
    }

    #[test]
    fn version_parsing() {
        let out = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022";
        assert_eq!(parse_qemu_version(out).as_deref(), Some("7.2.22"));
        assert_eq!(
            parse_qemu_version("QEMU emulator version 10.0.0\n").as_deref(),
            Some("10.0.0")
        );
        assert_eq!(parse_qemu_version("something else"), None);
        assert_eq!(parse_qemu_version(""), None);
    }

    #[test]
    fn markers() {
        let log = "[    0.9] Freeing unused kernel image (initmem) memory: 2000K\n";
        assert_eq!(late_boot_marker(log), Some("Freeing unused kernel"));
        assert_eq!(late_boot_marker("[ 0.0] Linux version 6.1"), None);
    }

    #[tokio::test]
    async fn missing_kvm_device_selects_tcg_without_booting() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, b"not a kernel").unwrap();
        let cache = dir.path().join("accel.json");
        let no_kvm = dir.path().join("no-kvm");
        let p = load_or_probe_with_device(
            &cache,
            Path::new("qemu-system-x86_64"),
            &kernel,
            Duration::from_secs(1),
            &no_kvm,
        )
        .await;
        assert_eq!(p.chosen, Accel::Tcg);
        assert!(!p.kvm_device_present && !p.kvm_boots_guest);
        assert!(p.detail.contains("does not exist"), "{}", p.detail);
        assert!(p.qemu_version.is_some());
        // Cached with its key; a changed kernel invalidates it.
        let cached: CacheFile = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
        assert_eq!(cached.probe, p);
        assert_eq!(cached.key.kernel_size, 12);
        std::fs::write(
            &cache,
            serde_json::to_vec(&CacheFile {
                key: cached.key.clone(),
                probe: AccelProbe {
                    detail: "from cache".into(),
                    ..p.clone()
                },
            })
            .unwrap(),
        )
        .unwrap();
        let again = load_or_probe_with_device(
            &cache,
            Path::new("qemu-system-x86_64"),
            &kernel,
            Duration::from_secs(1),
            &no_kvm,
        )
        .await;
        assert_eq!(again.detail, "from cache");
        std::fs::write(&kernel, b"another kernel!").unwrap();
        let fresh = load_or_probe_with_device(
            &cache,
            Path::new("qemu-system-x86_64"),
            &kernel,
            Duration::from_secs(1),
            &no_kvm,
        )
        .await;
        assert_ne!(fresh.detail, "from cache");
    }

    #[tokio::test]
    async fn forced_policies() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("c.json");
        let q = Path::new("qemu-system-x86_64");
        assert_eq!(
            decide(AccelPolicy::Tcg, q, None, &cache).await.chosen,
            Accel::Tcg
        );
        assert_eq!(
            decide(AccelPolicy::Kvm, q, None, &cache).await.chosen,
            Accel::Kvm
        );
        let auto = decide(AccelPolicy::Auto, q, None, &cache).await;
        assert_eq!(auto.chosen, Accel::Tcg);
        assert!(auto.detail.contains("no kernel"));
        assert!(!cache.exists());
    }
}
