//! `vireo image info|convert|create|check|compare|map|snapshot|resize`: local disk-image
//! tools that run the native image engine in-process (no daemon, no QEMU). `snapshot` and
//! `resize` edit closed images only (a running QEMU's image lock makes them refuse).
//!
//! Exit codes follow `qemu-img`: `check` 0/1/2/3/63, `compare` 0 identical / 1 different /
//! 2 error; the others 0 on success. Errors of `compare` and `check` are printed here (they
//! have their own exit codes); other errors are returned for the caller to print.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use vireo_image::ops::{self, CheckOutcome, CompareOutcome, ConvertOptions, CreateSpec, ImageInfo};
use vireo_image::qcow2::{
    snapshot_apply, snapshot_create, snapshot_delete, snapshot_list, CompressionType,
    CreateOptions, Preallocation, SnapshotEntry,
};
use vireo_image::vmdk::VmdkSubformat;
use vireo_image::{Format, Limits, PathPolicy};

/// Output style of the local image commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LocalOutput {
    #[default]
    Table,
    Json,
}

/// qcow2 compression codec choice on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CompressionArg {
    #[default]
    Zlib,
    Zstd,
}

/// How `convert` writes the output's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CacheArg {
    /// Bypass the page cache (O_DIRECT) where the filesystem allows it.
    #[default]
    None,
    /// Write through the page cache.
    Writeback,
}

/// qcow2 preallocation choice on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PreallocationArg {
    #[default]
    Off,
    Metadata,
}

/// Output-format options shared by `convert` and `create`.
#[derive(Debug, Clone, clap::Args)]
pub struct FormatArgs {
    /// qcow2 compatibility level: 1.1 (version 3) or 0.10 (version 2).
    #[arg(long, default_value = "1.1", value_parser = ["1.1", "0.10", "v3", "v2"])]
    pub compat: String,
    /// qcow2 cluster size (512 B to 2 MiB, power of two).
    #[arg(long, default_value = "64KiB")]
    pub cluster_size: String,
    /// Codec for compressed qcow2 clusters.
    #[arg(long, value_enum, default_value_t)]
    pub compression_type: CompressionArg,
    /// VMDK variant: monolithicSparse or streamOptimized (compressed, for OVA).
    #[arg(long, default_value = "monolithicSparse", value_parser = ["monolithicSparse", "streamOptimized"])]
    pub subformat: String,
}

/// Local image commands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ImageLocalCmd {
    /// Show format, sizes, backing chain and snapshots of an image file.
    Info {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        output: LocalOutput,
    },
    /// Convert an image to another format (written to a temp file, renamed when complete).
    Convert {
        src: PathBuf,
        dst: PathBuf,
        /// Output format: qcow2, raw, vmdk.
        #[arg(short = 'O', long = "format", default_value = "qcow2")]
        out_format: String,
        /// Compress output clusters (qcow2).
        #[arg(short = 'c', long)]
        compress: bool,
        /// Reader threads (0 = one per CPU, at least 4).
        #[arg(long, default_value_t = 0)]
        threads: usize,
        /// Do not show a progress bar.
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Flush the output to disk before renaming it into place (qemu-img does not).
        #[arg(long)]
        sync: bool,
        /// Output data path: "none" bypasses the page cache (direct I/O), "writeback" uses it.
        #[arg(short = 't', long, value_enum, default_value_t)]
        cache: CacheArg,
        /// Convert this internal snapshot of a qcow2 source instead of its current content.
        #[arg(short = 'l', long = "snapshot")]
        snapshot: Option<String>,
        #[command(flatten)]
        qcow2: FormatArgs,
    },
    /// Create an empty image.
    Create {
        file: PathBuf,
        /// Virtual size (e.g. 10GiB); may be omitted with --backing.
        size: Option<String>,
        #[arg(short = 'O', long = "format", default_value = "qcow2")]
        out_format: String,
        /// Backing file (qcow2), recorded as given (relative to the new image).
        #[arg(short = 'b', long)]
        backing: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        preallocation: PreallocationArg,
        #[arg(long)]
        lazy_refcounts: bool,
        #[command(flatten)]
        qcow2: FormatArgs,
    },
    /// Check image metadata (exit 0 clean, 2 corrupt, 3 leaks, 63 not supported).
    Check {
        file: PathBuf,
        /// Rebuild qcow2 refcounts first (fixes leaks, refcount errors and a stale dirty bit).
        #[arg(short = 'r', long)]
        repair: bool,
        #[arg(long, value_enum, default_value_t)]
        output: LocalOutput,
    },
    /// Compare guest-visible content (exit 0 identical, 1 different, 2 error).
    Compare { a: PathBuf, b: PathBuf },
    /// List allocation extents.
    Map {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        output: LocalOutput,
    },
    /// Internal snapshots of a closed qcow2 image.
    Snapshot {
        file: PathBuf,
        #[command(subcommand)]
        action: SnapshotAction,
    },
    /// Grow a closed image (qcow2 or raw) to SIZE (e.g. 20GiB); shrinking is refused.
    Resize { file: PathBuf, size: String },
}

/// `vireo image snapshot FILE …` actions.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SnapshotAction {
    /// Take a disk-only snapshot of the current content.
    Create { name: String },
    /// List the snapshots.
    List {
        #[arg(long, value_enum, default_value_t)]
        output: LocalOutput,
    },
    /// Revert the image to a snapshot (the snapshot is kept).
    Apply { name: String },
    /// Delete a snapshot and free the space only it uses.
    Delete { name: String },
}

/// Set by the SIGINT handler while a long command runs.
static CANCEL: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    CANCEL.store(true, Ordering::SeqCst);
}

/// Routes SIGINT to [`CANCEL`] until dropped, then restores the previous disposition.
struct SigintGuard {
    previous: libc::sigaction,
}

impl SigintGuard {
    fn install() -> anyhow::Result<SigintGuard> {
        CANCEL.store(false, Ordering::SeqCst);
        // SAFETY: `sigaction` structs are plain data; zeroed is a valid initial state. The
        // handler only performs an atomic store, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigint as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGINT, &action, &mut previous) != 0 {
                return Err(std::io::Error::last_os_error())
                    .context("installing the Ctrl-C handler");
            }
            Ok(SigintGuard { previous })
        }
    }
}

impl Drop for SigintGuard {
    fn drop(&mut self) {
        // SAFETY: restores the disposition saved by `install`.
        unsafe {
            libc::sigaction(libc::SIGINT, &self.previous, std::ptr::null_mut());
        }
    }
}

fn parse_format(name: &str) -> anyhow::Result<Format> {
    Format::from_qemu_name(name).with_context(|| format!("unknown image format {name:?}"))
}

fn qcow2_options(args: &FormatArgs) -> anyhow::Result<CreateOptions> {
    let cluster = vireo_types::size::parse_size(&args.cluster_size)?;
    if !cluster.is_power_of_two() || !(512..=(2 << 20)).contains(&cluster) {
        anyhow::bail!("cluster size must be a power of two from 512 B to 2 MiB");
    }
    Ok(CreateOptions {
        version: if matches!(args.compat.as_str(), "0.10" | "v2") {
            2
        } else {
            3
        },
        cluster_bits: cluster.trailing_zeros(),
        compression_type: match args.compression_type {
            CompressionArg::Zlib => CompressionType::Zlib,
            CompressionArg::Zstd => CompressionType::Zstd,
        },
        ..CreateOptions::default()
    })
}

fn vmdk_subformat(args: &FormatArgs) -> VmdkSubformat {
    if args.subformat == "streamOptimized" {
        VmdkSubformat::StreamOptimized
    } else {
        VmdkSubformat::MonolithicSparse
    }
}

/// Runs one local image command and returns the process exit code.
pub fn run(cmd: ImageLocalCmd) -> anyhow::Result<i32> {
    let limits = Limits::default();
    let policy = PathPolicy::default();
    match cmd {
        ImageLocalCmd::Info { file, output } => {
            let info = ops::info(&file, &limits, &policy)
                .with_context(|| format!("reading {}", file.display()))?;
            match output {
                LocalOutput::Json => println!("{}", serde_json::to_string_pretty(&info)?),
                LocalOutput::Table => print!("{}", render_info(&info)),
            }
            Ok(0)
        }
        ImageLocalCmd::Convert {
            src,
            dst,
            out_format,
            compress,
            threads,
            quiet,
            sync,
            cache,
            snapshot,
            qcow2,
        } => {
            let format = parse_format(&out_format)?;
            let mut opts = ConvertOptions::new(format);
            opts.source_snapshot = snapshot;
            opts.compress = compress;
            opts.threads = threads;
            opts.sync = sync;
            opts.spec = CreateSpec {
                backing: None,
                qcow2: qcow2_options(&qcow2)?,
                vmdk_subformat: vmdk_subformat(&qcow2),
                direct_io: cache == CacheArg::None,
            };
            let bar = if quiet {
                indicatif::ProgressBar::hidden()
            } else {
                let bar = indicatif::ProgressBar::new(0);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "[{elapsed_precise}] [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )?
                    .progress_chars("=> "),
                );
                bar
            };
            let guard = SigintGuard::install()?;
            let result = ops::convert_with(
                &src,
                &dst,
                &opts,
                &mut |p| {
                    bar.set_length(p.total_bytes);
                    bar.set_position(p.done_bytes);
                },
                &CANCEL,
            );
            drop(guard);
            bar.finish_and_clear();
            result.with_context(|| format!("converting {} to {}", src.display(), dst.display()))?;
            Ok(0)
        }
        ImageLocalCmd::Create {
            file,
            size,
            out_format,
            backing,
            preallocation,
            lazy_refcounts,
            qcow2,
        } => {
            let format = parse_format(&out_format)?;
            let size = match size {
                Some(s) => vireo_types::size::parse_size(&s)?,
                None if backing.is_some() => 0,
                None => anyhow::bail!("a size is required without --backing"),
            };
            let mut q = qcow2_options(&qcow2)?;
            q.lazy_refcounts = lazy_refcounts;
            q.preallocation = match preallocation {
                PreallocationArg::Off => Preallocation::Off,
                PreallocationArg::Metadata => Preallocation::Metadata,
            };
            let spec = CreateSpec {
                backing,
                vmdk_subformat: vmdk_subformat(&qcow2),
                qcow2: q,
                direct_io: false,
            };
            ops::create_with(&file, format, size, &spec)
                .with_context(|| format!("creating {}", file.display()))?;
            Ok(0)
        }
        ImageLocalCmd::Check {
            file,
            repair,
            output,
        } => match if repair {
            ops::repair(&file, &limits)
        } else {
            ops::check(&file, &limits, &policy)
        } {
            Ok(outcome) => {
                match output {
                    LocalOutput::Json => println!("{}", serde_json::to_string_pretty(&outcome)?),
                    LocalOutput::Table => print!("{}", render_check(&outcome)),
                }
                Ok(outcome.exit_code())
            }
            Err(e) => {
                eprintln!("error: checking {}: {}", file.display(), chain(&e));
                Ok(1)
            }
        },
        ImageLocalCmd::Compare { a, b } => {
            let guard = SigintGuard::install()?;
            let r = ops::compare(&a, &b, &limits, &policy, &CANCEL);
            drop(guard);
            match r {
                Ok(CompareOutcome::Identical) => {
                    println!("Images are identical.");
                    Ok(0)
                }
                Ok(CompareOutcome::Differ { offset }) => {
                    println!("Content mismatch at offset {offset}!");
                    Ok(1)
                }
                Err(e) => {
                    eprintln!(
                        "error: comparing {} and {}: {}",
                        a.display(),
                        b.display(),
                        chain(&e)
                    );
                    Ok(2)
                }
            }
        }
        ImageLocalCmd::Map { file, output } => {
            print_map(&file, output, &limits, &policy)?;
            Ok(0)
        }
        ImageLocalCmd::Snapshot { file, action } => {
            let what =
                |verb: &str, name: &str| format!("{verb} snapshot {name:?} of {}", file.display());
            match action {
                SnapshotAction::Create { name } => {
                    snapshot_create(&file, &name, &limits)
                        .with_context(|| what("creating", &name))?;
                }
                SnapshotAction::Apply { name } => {
                    snapshot_apply(&file, &name, &limits)
                        .with_context(|| what("applying", &name))?;
                }
                SnapshotAction::Delete { name } => {
                    snapshot_delete(&file, &name, &limits)
                        .with_context(|| what("deleting", &name))?;
                }
                SnapshotAction::List { output } => {
                    let list = snapshot_list(&file, &limits)
                        .with_context(|| format!("listing snapshots of {}", file.display()))?;
                    match output {
                        LocalOutput::Json => println!("{}", serde_json::to_string_pretty(&list)?),
                        LocalOutput::Table => print!("{}", render_snapshots(&list)),
                    }
                }
            }
            Ok(0)
        }
        ImageLocalCmd::Resize { file, size } => {
            let size = vireo_types::size::parse_size(&size)?;
            ops::resize(&file, size, &limits, &policy)
                .with_context(|| format!("resizing {}", file.display()))?;
            Ok(0)
        }
    }
}

/// Text rendering of `snapshot list` (the columns of `qemu-img snapshot -l`, plus the disk
/// size each snapshot restores).
pub fn render_snapshots(list: &[SnapshotEntry]) -> String {
    let mut out = String::from(
        "ID        TAG               VM SIZE     DISK SIZE         DATE     VM CLOCK\n",
    );
    for s in list {
        out.push_str(&format!(
            "{:<9} {:<17} {:>7} {:>13} {:>12} {:>8}.{:03}\n",
            s.id,
            s.name,
            vireo_types::size::format_size(s.vm_state_size),
            vireo_types::size::format_size(s.disk_size),
            s.date_sec,
            s.vm_clock_nsec / 1_000_000_000,
            s.vm_clock_nsec % 1_000_000_000 / 1_000_000
        ));
    }
    out
}

/// "a: b: c" from an error and its sources.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn human(bytes: u64) -> String {
    format!("{} ({bytes} bytes)", vireo_types::size::format_size(bytes))
}

/// Text rendering of `info`, one block per image of the chain.
pub fn render_info(info: &ImageInfo) -> String {
    let mut out = String::new();
    for (i, img) in info.chain().into_iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("image: {}\n", img.filename));
        out.push_str(&format!("file format: {}\n", img.format));
        out.push_str(&format!("virtual size: {}\n", human(img.virtual_size)));
        out.push_str(&format!(
            "disk size: {}\n",
            vireo_types::size::format_size(img.actual_size)
        ));
        if let Some(cs) = img.cluster_size {
            out.push_str(&format!("cluster_size: {cs}\n"));
        }
        if let Some(b) = &img.backing_filename {
            out.push_str(&format!("backing file: {b}"));
            if let Some(full) = &img.full_backing_filename {
                out.push_str(&format!(" (actual path: {full})"));
            }
            out.push('\n');
        }
        if let Some(f) = &img.backing_filename_format {
            out.push_str(&format!("backing file format: {f}\n"));
        }
        if let Some(d) = img.dirty_flag {
            out.push_str(&format!("dirty flag: {d}\n"));
        }
        if !img.snapshots.is_empty() {
            out.push_str("Snapshot list:\nID        TAG               VM SIZE                DATE     VM CLOCK\n");
            for s in &img.snapshots {
                out.push_str(&format!(
                    "{:<9} {:<17} {:>7} {:>20} {:>12}.{:03}\n",
                    s.id,
                    s.name,
                    vireo_types::size::format_size(s.vm_state_size),
                    s.date_sec,
                    s.vm_clock_sec,
                    s.vm_clock_nsec / 1_000_000
                ));
            }
        }
        if let Some(ops::FormatSpecific::Qcow2(q)) = &img.format_specific {
            out.push_str("Format specific information:\n");
            out.push_str(&format!("    compat: {}\n", q.compat));
            let ct = serde_json::to_value(q.compression_type).ok();
            let ct = ct.as_ref().and_then(|v| v.as_str()).unwrap_or("zlib");
            out.push_str(&format!("    compression type: {ct}\n"));
            out.push_str(&format!("    lazy refcounts: {}\n", q.lazy_refcounts));
            out.push_str(&format!("    refcount bits: {}\n", q.refcount_bits));
            out.push_str(&format!("    corrupt: {}\n", q.corrupt));
            out.push_str(&format!("    extended l2: {}\n", q.extended_l2));
        }
    }
    out
}

/// Text rendering of `check` in qemu-img's words.
pub fn render_check(outcome: &CheckOutcome) -> String {
    let r = match outcome {
        CheckOutcome::NotSupported { format } => {
            return format!("This image format ({format}) does not support checks.\n");
        }
        CheckOutcome::Checked(r) => r,
    };
    let mut out = String::new();
    for m in &r.messages {
        out.push_str(m);
        out.push('\n');
    }
    if r.dirty_flag {
        out.push_str("The image is marked dirty (lazy refcounts were not settled).\n");
    }
    if r.corrupt_flag {
        out.push_str("The image is marked corrupt.\n");
    }
    if r.corruptions == 0 && r.leaks == 0 && r.check_errors == 0 {
        out.push_str("No errors were found on the image.\n");
    }
    if r.corruptions > 0 {
        out.push_str(&format!(
            "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
            r.corruptions
        ));
    }
    if r.leaks > 0 {
        out.push_str(&format!(
            "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
            r.leaks
        ));
    }
    if r.check_errors > 0 {
        out.push_str(&format!(
            "\n{} internal errors have occurred during the check.\n",
            r.check_errors
        ));
    }
    if let (Some(total), Some(alloc)) = (r.total_clusters, r.allocated_clusters) {
        let pct = |n: u64, d: u64| {
            if d == 0 {
                0.0
            } else {
                n as f64 * 100.0 / d as f64
            }
        };
        out.push_str(&format!(
            "{alloc}/{total} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters\n",
            pct(alloc, total),
            pct(r.fragmented_clusters.unwrap_or(0), alloc),
            pct(r.compressed_clusters.unwrap_or(0), alloc),
        ));
    }
    if let Some(end) = r.image_end_offset {
        out.push_str(&format!("Image end offset: {end}\n"));
    }
    out
}

fn print_map(
    file: &Path,
    output: LocalOutput,
    limits: &Limits,
    policy: &PathPolicy,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    let mut first = true;
    match output {
        LocalOutput::Json => writeln!(w, "[")?,
        LocalOutput::Table => writeln!(w, "{:<20} {:<20} Kind", "Offset", "Length")?,
    }
    ops::map(file, limits, policy, &mut |e| {
        let r = match output {
            LocalOutput::Json => {
                let line = serde_json::to_string(&e).unwrap_or_default();
                let sep = if first { "" } else { ",\n" };
                write!(w, "{sep}  {line}")
            }
            LocalOutput::Table => {
                let kind = match e.kind {
                    vireo_image::ExtentKind::Data => "data",
                    vireo_image::ExtentKind::Zero => "zero",
                    vireo_image::ExtentKind::Backing => "backing",
                };
                writeln!(w, "{:<#20x} {:<#20x} {kind}", e.start, e.length)
            }
        };
        first = false;
        // Stop mapping as soon as output fails (e.g. a closed pipe).
        r.map_err(|err| vireo_image::ImageError::io("writing the map", err))
    })
    .with_context(|| format!("mapping {}", file.display()))?;
    if output == LocalOutput::Json {
        writeln!(w, "\n]")?;
    }
    w.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vireo_image::qcow2::CheckReport;

    fn report(corruptions: u64, leaks: u64) -> CheckOutcome {
        CheckOutcome::Checked(CheckReport {
            filename: "a.qcow2".into(),
            format: "qcow2".into(),
            corruptions,
            leaks,
            total_clusters: Some(16),
            allocated_clusters: Some(4),
            fragmented_clusters: Some(1),
            compressed_clusters: Some(0),
            image_end_offset: Some(327680),
            ..CheckReport::default()
        })
    }

    #[test]
    fn snapshot_rendering() {
        let list = [SnapshotEntry {
            id: "1".into(),
            name: "before-upgrade".into(),
            date_sec: 1_790_000_000,
            date_nsec: 5,
            vm_clock_nsec: 61_250_000_000,
            vm_state_size: 0,
            disk_size: 10 << 30,
            icount: None,
        }];
        assert_eq!(
            render_snapshots(&list),
            "ID        TAG               VM SIZE     DISK SIZE         DATE     VM CLOCK\n\
             1         before-upgrade         0B         10GiB   1790000000       61.250\n"
        );
    }

    #[test]
    fn check_rendering_and_exit_codes() {
        let clean = report(0, 0);
        assert_eq!(clean.exit_code(), 0);
        assert_eq!(
            render_check(&clean),
            "No errors were found on the image.\n\
             4/16 = 25.00% allocated, 25.00% fragmented, 0.00% compressed clusters\n\
             Image end offset: 327680\n"
        );
        let leaky = report(0, 2);
        assert_eq!(leaky.exit_code(), 3);
        assert!(render_check(&leaky).contains("2 leaked clusters were found on the image."));
        let corrupt = report(1, 2);
        assert_eq!(corrupt.exit_code(), 2);
        assert!(render_check(&corrupt).contains("1 errors were found on the image."));
        let raw = CheckOutcome::NotSupported {
            format: "raw".into(),
        };
        assert_eq!(raw.exit_code(), 63);
        assert_eq!(
            render_check(&raw),
            "This image format (raw) does not support checks.\n"
        );
    }

    #[test]
    fn info_rendering_walks_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        ops::create(&base, Format::Qcow2, 1 << 20, None).unwrap();
        let top = dir.path().join("top.qcow2");
        ops::create(&top, Format::Qcow2, 0, Some(Path::new("base.qcow2"))).unwrap();
        let info = ops::info(&top, &Limits::default(), &PathPolicy::default()).unwrap();
        let text = render_info(&info);
        assert!(
            text.contains("virtual size: 1MiB (1048576 bytes)"),
            "{text}"
        );
        assert!(
            text.contains("backing file: base.qcow2 (actual path: "),
            "{text}"
        );
        assert!(text.contains("backing file format: qcow2"), "{text}");
        assert_eq!(text.matches("image: ").count(), 2, "{text}");
    }

    #[test]
    fn qcow2_options_from_flags() {
        let args = FormatArgs {
            compat: "0.10".into(),
            cluster_size: "4KiB".into(),
            compression_type: CompressionArg::Zlib,
            subformat: "streamOptimized".into(),
        };
        let o = qcow2_options(&args).unwrap();
        assert_eq!((o.version, o.cluster_bits), (2, 12));
        assert_eq!(vmdk_subformat(&args), VmdkSubformat::StreamOptimized);
        let bad = FormatArgs {
            cluster_size: "3000".into(),
            ..args
        };
        assert!(qcow2_options(&bad).is_err());
    }
}
