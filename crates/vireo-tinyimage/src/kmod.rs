//! Kernel modules for the initramfs: which files to copy and in which order to load them.
//!
//! Debian's kernel packages do not ship `modules.dep` (depmod runs in the postinst), so the
//! dependencies come from `modules.dep` when the tree has one and otherwise from each module's
//! own `.modinfo` ELF section (`depends=`), which is what depmod reads too. Modules listed in
//! `modules.builtin` are part of the kernel image and are skipped.
//!
//! Invariants:
//! - [`load_order`] returns every requested module that is not built in, each after all of its
//!   (transitive) dependencies, otherwise in request order; each module appears once.
//! - Module names are normalised (`-` → `_`), as the kernel does.
//! - Compressed modules (`.ko.xz`, `.ko.zst`) are decompressed at build time, so the guest's
//!   busybox `insmod` only ever sees plain `.ko` files; decompressed size is capped at
//!   [`MAX_MODULE_BYTES`].
//! - ELF parsing is bounds-checked; a malformed module yields an error, never a panic.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Upper bound for one (decompressed) module; the largest modules in Debian's kernels are a
/// few MiB.
pub const MAX_MODULE_BYTES: u64 = 64 << 20;

/// Errors while indexing, reading or ordering kernel modules.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "kernel module {name:?} (needed by {needed_by}) is neither a module file nor built in"
    )]
    Unknown { name: String, needed_by: String },
    #[error("kernel modules form a dependency cycle through {name:?}")]
    Cycle { name: String },
    #[error("{path} is not a loadable kernel module: {reason}")]
    BadModule { path: PathBuf, reason: String },
    #[error("cannot decompress {path}")]
    Decompress {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} decompresses to more than {MAX_MODULE_BYTES} bytes")]
    TooLarge { path: PathBuf },
}

/// How a module file is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Compression {
    None,
    Xz,
    Zstd,
}

/// A module file inside `lib/modules/<version>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFile {
    /// Path relative to the modules directory, e.g. `kernel/drivers/block/virtio_blk.ko`.
    pub rel_path: String,
    pub compression: Compression,
}

impl ModuleFile {
    /// The path the decompressed module gets in the initramfs, relative to the modules dir.
    pub fn installed_rel_path(&self) -> String {
        match self.compression {
            Compression::None => self.rel_path.clone(),
            Compression::Xz | Compression::Zstd => self
                .rel_path
                .rsplit_once(".ko.")
                .map(|(stem, _)| format!("{stem}.ko"))
                .unwrap_or_else(|| self.rel_path.clone()),
        }
    }
}

/// Splits a module file name into its normalised module name and compression, or `None` when
/// the name is not a module.
pub fn module_name(file_name: &str) -> Option<(String, Compression)> {
    let base = file_name.rsplit('/').next()?;
    let (stem, compression) = if let Some(stem) = base.strip_suffix(".ko") {
        (stem, Compression::None)
    } else if let Some(stem) = base.strip_suffix(".ko.xz") {
        (stem, Compression::Xz)
    } else if let Some(stem) = base.strip_suffix(".ko.zst") {
        (stem, Compression::Zstd)
    } else {
        return None;
    };
    if stem.is_empty() {
        return None;
    }
    Some((normalise_name(stem), compression))
}

/// The kernel treats `-` and `_` in module names as the same character.
pub fn normalise_name(name: &str) -> String {
    name.replace('-', "_")
}

/// Parses `modules.builtin` (one module path per line) into module names.
pub fn parse_builtin(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| module_name(line.trim()))
        .map(|(name, _)| name)
        .collect()
}

/// Parses `modules.dep` (`path: dep-path dep-path…`) into name → dependency names.
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut deps = BTreeMap::new();
    for line in text.lines() {
        let Some((module, rest)) = line.split_once(':') else {
            continue;
        };
        let Some((name, _)) = module_name(module.trim()) else {
            continue;
        };
        let names = rest
            .split_whitespace()
            .filter_map(module_name)
            .map(|(n, _)| n)
            .collect();
        deps.insert(name, names);
    }
    deps
}

/// Orders `requested` modules for loading; see the module docs. `deps_of` returns a module's
/// direct (or transitive, as `modules.dep` lists them) dependencies, or `None` when no such
/// module file exists.
pub fn load_order<F>(
    requested: &[&str],
    builtin: &BTreeSet<String>,
    mut deps_of: F,
) -> Result<Vec<String>, KmodError>
where
    F: FnMut(&str) -> Result<Option<Vec<String>>, KmodError>,
{
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    let mut in_progress = BTreeSet::new();
    for name in requested {
        visit(
            &normalise_name(name),
            "the tiny image",
            builtin,
            &mut deps_of,
            &mut done,
            &mut in_progress,
            &mut order,
        )?;
    }
    Ok(order)
}

fn visit<F>(
    name: &str,
    needed_by: &str,
    builtin: &BTreeSet<String>,
    deps_of: &mut F,
    done: &mut BTreeSet<String>,
    in_progress: &mut BTreeSet<String>,
    order: &mut Vec<String>,
) -> Result<(), KmodError>
where
    F: FnMut(&str) -> Result<Option<Vec<String>>, KmodError>,
{
    if done.contains(name) || builtin.contains(name) {
        return Ok(());
    }
    if !in_progress.insert(name.to_owned()) {
        return Err(KmodError::Cycle {
            name: name.to_owned(),
        });
    }
    let deps = deps_of(name)?.ok_or_else(|| KmodError::Unknown {
        name: name.to_owned(),
        needed_by: needed_by.to_owned(),
    })?;
    for dep in deps {
        visit(
            &normalise_name(&dep),
            name,
            builtin,
            deps_of,
            done,
            in_progress,
            order,
        )?;
    }
    in_progress.remove(name);
    done.insert(name.to_owned());
    order.push(name.to_owned());
    Ok(())
}

/// Key/value pairs of a module's `.modinfo` section (`depends`, `name`, `vermagic`, …).
/// Keys may repeat (`alias=`), so values are collected in order.
pub fn parse_modinfo(elf: &[u8]) -> Result<Vec<(String, String)>, String> {
    let section = modinfo_section(elf)?;
    Ok(section
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let text = String::from_utf8_lossy(s);
            text.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect())
}

/// Dependencies named by a module's `depends=` field.
pub fn modinfo_depends(elf: &[u8]) -> Result<Vec<String>, String> {
    Ok(parse_modinfo(elf)?
        .into_iter()
        .filter(|(k, _)| k == "depends")
        .flat_map(|(_, v)| {
            v.split(',')
                .filter(|d| !d.is_empty())
                .map(normalise_name)
                .collect::<Vec<_>>()
        })
        .collect())
}

/// Finds the `.modinfo` section of a little-endian ELF64 relocatable object.
fn modinfo_section(elf: &[u8]) -> Result<&[u8], String> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
        return Err("no ELF header".into());
    }
    if elf[4] != 2 || elf[5] != 1 {
        return Err("not a little-endian 64-bit ELF object".into());
    }
    let shoff = read_u64(elf, 0x28)?;
    let shentsize = u64::from(read_u16(elf, 0x3a)?);
    let shnum = u64::from(read_u16(elf, 0x3c)?);
    let shstrndx = u64::from(read_u16(elf, 0x3e)?);
    if shentsize < 64 {
        return Err(format!("section header size {shentsize} is too small"));
    }
    let header = |index: u64| -> Result<(u32, u64, u64), String> {
        let base = index
            .checked_mul(shentsize)
            .and_then(|o| o.checked_add(shoff))
            .ok_or("section header offset overflows")?;
        let base = usize::try_from(base).map_err(|_| "section header offset overflows")?;
        Ok((
            read_u32(elf, base)?,
            read_u64(elf, base + 24)?,
            read_u64(elf, base + 32)?,
        ))
    };
    let slice = |offset: u64, size: u64| -> Result<&[u8], String> {
        let start = usize::try_from(offset).map_err(|_| "section offset overflows")?;
        let len = usize::try_from(size).map_err(|_| "section size overflows")?;
        let end = start.checked_add(len).ok_or("section end overflows")?;
        elf.get(start..end)
            .ok_or_else(|| "section lies outside the file".to_owned())
    };
    if shstrndx >= shnum {
        return Err("section name table index out of range".into());
    }
    let (_, names_offset, names_size) = header(shstrndx)?;
    let names = slice(names_offset, names_size)?;
    for index in 0..shnum {
        let (name_offset, offset, size) = header(index)?;
        let name = names
            .get(name_offset as usize..)
            .and_then(|rest| rest.split(|b| *b == 0).next())
            .unwrap_or_default();
        if name == b".modinfo" {
            return slice(offset, size);
        }
    }
    Err("no .modinfo section".into())
}

fn read_u16(b: &[u8], at: usize) -> Result<u16, String> {
    let bytes = b.get(at..at + 2).ok_or("truncated ELF data")?;
    Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
}

fn read_u32(b: &[u8], at: usize) -> Result<u32, String> {
    let bytes = b.get(at..at + 4).ok_or("truncated ELF data")?;
    let mut a = [0u8; 4];
    a.copy_from_slice(bytes);
    Ok(u32::from_le_bytes(a))
}

fn read_u64(b: &[u8], at: usize) -> Result<u64, String> {
    let bytes = b.get(at..at + 8).ok_or("truncated ELF data")?;
    let mut a = [0u8; 8];
    a.copy_from_slice(bytes);
    Ok(u64::from_le_bytes(a))
}

/// The module files, built-in list and (optional) `modules.dep` of one kernel version.
#[derive(Debug)]
pub struct ModuleTree {
    /// `…/lib/modules/<version>`.
    pub dir: PathBuf,
    pub files: BTreeMap<String, ModuleFile>,
    pub builtin: BTreeSet<String>,
    pub modules_dep: Option<BTreeMap<String, Vec<String>>>,
}

impl ModuleTree {
    /// Indexes `dir` (a `lib/modules/<version>` directory).
    pub fn open(dir: &Path) -> Result<Self, KmodError> {
        let mut files = BTreeMap::new();
        index_dir(dir, dir, &mut files)?;
        let builtin = match read_optional(&dir.join("modules.builtin"))? {
            Some(text) => parse_builtin(&text),
            None => BTreeSet::new(),
        };
        let modules_dep =
            read_optional(&dir.join("modules.dep"))?.map(|text| parse_modules_dep(&text));
        Ok(Self {
            dir: dir.to_owned(),
            files,
            builtin,
            modules_dep,
        })
    }

    /// Load order for `requested` (see [`load_order`]), with the file of each module.
    pub fn resolve(&self, requested: &[&str]) -> Result<Vec<(String, ModuleFile)>, KmodError> {
        let order = load_order(requested, &self.builtin, |name| {
            let Some(file) = self.files.get(name) else {
                return Ok(None);
            };
            if let Some(dep) = &self.modules_dep {
                return Ok(Some(dep.get(name).cloned().unwrap_or_default()));
            }
            let elf = self.read(file)?;
            modinfo_depends(&elf)
                .map(Some)
                .map_err(|reason| KmodError::BadModule {
                    path: self.dir.join(&file.rel_path),
                    reason,
                })
        })?;
        Ok(order
            .into_iter()
            .filter_map(|name| self.files.get(&name).cloned().map(|f| (name, f)))
            .collect())
    }

    /// Reads a module, decompressing it if needed.
    pub fn read(&self, file: &ModuleFile) -> Result<Vec<u8>, KmodError> {
        let path = self.dir.join(&file.rel_path);
        let raw = std::fs::read(&path).map_err(|source| KmodError::Read {
            path: path.clone(),
            source,
        })?;
        decompress(&path, file.compression, &raw)
    }
}

/// Decompresses module bytes according to `compression`, capped at [`MAX_MODULE_BYTES`].
pub fn decompress(path: &Path, compression: Compression, raw: &[u8]) -> Result<Vec<u8>, KmodError> {
    let decompress_err = |source| KmodError::Decompress {
        path: path.to_owned(),
        source,
    };
    let mut out = Vec::new();
    match compression {
        Compression::None => return Ok(raw.to_vec()),
        Compression::Xz => {
            let mut limited = LimitedWriter {
                inner: &mut out,
                remaining: MAX_MODULE_BYTES,
            };
            let mut input = raw;
            lzma_rs::xz_decompress(&mut input, &mut limited).map_err(|e| {
                if limited.remaining == 0 {
                    return KmodError::TooLarge {
                        path: path.to_owned(),
                    };
                }
                decompress_err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e.to_string(),
                ))
            })?;
        }
        Compression::Zstd => {
            let mut input = raw;
            let decoder = ruzstd::decoding::StreamingDecoder::new(&mut input).map_err(|e| {
                decompress_err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e.to_string(),
                ))
            })?;
            decoder
                .take(MAX_MODULE_BYTES + 1)
                .read_to_end(&mut out)
                .map_err(decompress_err)?;
            if out.len() as u64 > MAX_MODULE_BYTES {
                return Err(KmodError::TooLarge {
                    path: path.to_owned(),
                });
            }
        }
    }
    Ok(out)
}

/// A writer that fails once more than `remaining` bytes are written (bounds decompression).
struct LimitedWriter<'a> {
    inner: &'a mut Vec<u8>,
    remaining: u64,
}

impl std::io::Write for LimitedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() as u64 > self.remaining {
            self.remaining = 0;
            return Err(std::io::Error::other(
                "decompressed module exceeds the size limit",
            ));
        }
        self.remaining -= buf.len() as u64;
        self.inner.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, KmodError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KmodError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn index_dir(
    root: &Path,
    dir: &Path,
    files: &mut BTreeMap<String, ModuleFile>,
) -> Result<(), KmodError> {
    let read_err = |source| KmodError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .collect::<Result<_, _>>()
        .map_err(read_err)?;
    // Sorted so that a (pathological) duplicate module name resolves the same way every time.
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let file_type = entry.file_type().map_err(read_err)?;
        if file_type.is_dir() {
            index_dir(root, &path, files)?;
        } else if let Some((name, compression)) = entry.file_name().to_str().and_then(module_name) {
            let rel_path = path
                .strip_prefix(root)
                .ok()
                .and_then(Path::to_str)
                .map(str::to_owned);
            if let Some(rel_path) = rel_path {
                files.entry(name).or_insert(ModuleFile {
                    rel_path,
                    compression,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 LE object with a `.shstrtab` and a `.modinfo` section.
    pub(crate) fn fake_module(modinfo: &[&str]) -> Vec<u8> {
        let mut info = Vec::new();
        for kv in modinfo {
            info.extend_from_slice(kv.as_bytes());
            info.push(0);
        }
        let shstrtab = b"\0.shstrtab\0.modinfo\0".to_vec();
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        let info_off = elf.len() as u64;
        elf.extend_from_slice(&info);
        let str_off = elf.len() as u64;
        elf.extend_from_slice(&shstrtab);
        elf.resize(elf.len().next_multiple_of(8), 0);
        let shoff = elf.len() as u64;
        let mut section = |name: u32, offset: u64, size: u64| {
            let mut h = vec![0u8; 64];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&offset.to_le_bytes());
            h[32..40].copy_from_slice(&size.to_le_bytes());
            elf.extend_from_slice(&h);
        };
        section(0, 0, 0);
        section(1, str_off, shstrtab.len() as u64);
        section(11, info_off, info.len() as u64);
        elf[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf
    }

    const VIRTIO_SET: [&str; 10] = [
        "virtio_ring",
        "virtio",
        "virtio_pci_modern_dev",
        "virtio_pci_legacy_dev",
        "virtio_pci",
        "virtio_blk",
        "failover",
        "net_failover",
        "virtio_net",
        "virtio_console",
    ];

    fn deps(table: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        table
            .iter()
            .map(|(m, d)| (m.to_string(), d.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn virtio_set_keeps_its_documented_order() {
        // Dependencies as the Debian 6.1 cloud kernel declares them.
        let table = deps(&[
            ("virtio_ring", &[]),
            ("virtio", &[]),
            ("virtio_pci_modern_dev", &[]),
            ("virtio_pci_legacy_dev", &[]),
            (
                "virtio_pci",
                &[
                    "virtio_pci_legacy_dev",
                    "virtio_pci_modern_dev",
                    "virtio",
                    "virtio_ring",
                ],
            ),
            ("virtio_blk", &["virtio", "virtio_ring"]),
            ("failover", &[]),
            ("net_failover", &["failover"]),
            ("virtio_net", &["net_failover", "virtio", "virtio_ring"]),
            ("virtio_console", &["virtio", "virtio_ring"]),
        ]);
        let order =
            load_order(&VIRTIO_SET, &BTreeSet::new(), |m| Ok(table.get(m).cloned())).unwrap();
        assert_eq!(order, VIRTIO_SET);
    }

    #[test]
    fn dependencies_come_first_and_builtins_are_skipped() {
        let table = deps(&[
            ("sr_mod", &["cdrom", "scsi_mod"]),
            ("cdrom", &[]),
            ("scsi_mod", &["scsi_common"]),
            ("scsi_common", &[]),
            ("isofs", &[]),
        ]);
        let builtin: BTreeSet<String> = ["ext4".to_string(), "scsi_common".to_string()].into();
        let order = load_order(&["ext4", "isofs", "sr-mod", "cdrom"], &builtin, |m| {
            Ok(table.get(m).cloned())
        })
        .unwrap();
        assert_eq!(order, ["isofs", "cdrom", "scsi_mod", "sr_mod"]);
    }

    #[test]
    fn unknown_and_cyclic_modules_are_errors() {
        let table = deps(&[("a", &["b"]), ("b", &["a"]), ("c", &["missing"])]);
        let lookup = |m: &str| Ok(table.get(m).cloned());
        assert!(matches!(
            load_order(&["a"], &BTreeSet::new(), lookup),
            Err(KmodError::Cycle { .. })
        ));
        let err = load_order(&["c"], &BTreeSet::new(), lookup).unwrap_err();
        assert!(
            matches!(&err, KmodError::Unknown { name, needed_by } if name == "missing" && needed_by == "c"),
            "{err}"
        );
    }

    #[test]
    fn names_and_index_files_parse() {
        assert_eq!(
            module_name("kernel/drivers/char/hw_random/virtio-rng.ko"),
            Some(("virtio_rng".into(), Compression::None))
        );
        assert_eq!(
            module_name("a/b/c.ko.xz"),
            Some(("c".into(), Compression::Xz))
        );
        assert_eq!(
            module_name("c.ko.zst"),
            Some(("c".into(), Compression::Zstd))
        );
        assert_eq!(module_name("modules.order"), None);
        assert_eq!(module_name(".ko"), None);
        let builtin = parse_builtin("kernel/fs/ext4/ext4.ko\nkernel/lib/crc16.ko\n\n");
        assert_eq!(builtin.into_iter().collect::<Vec<_>>(), ["crc16", "ext4"]);
        let dep = parse_modules_dep(
            "kernel/drivers/scsi/sr_mod.ko.xz: kernel/drivers/cdrom/cdrom.ko.xz kernel/drivers/scsi/scsi_mod.ko.xz\nkernel/fs/isofs/isofs.ko.xz:\ngarbage\n",
        );
        assert_eq!(dep["sr_mod"], ["cdrom", "scsi_mod"]);
        assert!(dep["isofs"].is_empty());
        assert_eq!(dep.len(), 2);
        let file = ModuleFile {
            rel_path: "kernel/x/y.ko.xz".into(),
            compression: Compression::Xz,
        };
        assert_eq!(file.installed_rel_path(), "kernel/x/y.ko");
    }

    #[test]
    fn modinfo_depends_are_read_from_elf() {
        let elf = fake_module(&[
            "license=GPL",
            "depends=virtio,virtio_ring,virtio-pci-modern-dev",
            "name=virtio_pci",
        ]);
        assert_eq!(
            modinfo_depends(&elf).unwrap(),
            ["virtio", "virtio_ring", "virtio_pci_modern_dev"]
        );
        let none = fake_module(&["depends="]);
        assert!(modinfo_depends(&none).unwrap().is_empty());
    }

    #[test]
    fn malformed_elf_is_an_error_not_a_panic() {
        let good = fake_module(&["depends=a"]);
        assert!(modinfo_depends(b"not elf").is_err());
        for cut in [10, 64, 80, good.len() - 30] {
            assert!(modinfo_depends(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad_offsets = good.clone();
        bad_offsets[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(modinfo_depends(&bad_offsets).is_err());
        let mut bad_index = good;
        bad_index[0x3e..0x40].copy_from_slice(&9u16.to_le_bytes());
        assert!(modinfo_depends(&bad_index).is_err());
    }

    #[test]
    fn compressed_modules_round_trip_and_are_bounded() {
        let elf = fake_module(&["depends=x"]);
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut elf.as_slice(), &mut xz).unwrap();
        let out = decompress(Path::new("m.ko.xz"), Compression::Xz, &xz).unwrap();
        assert_eq!(out, elf);
        assert!(decompress(Path::new("m.ko.xz"), Compression::Xz, b"garbage").is_err());
        assert!(decompress(Path::new("m.ko.zst"), Compression::Zstd, b"garbage").is_err());
    }

    #[test]
    fn module_tree_resolves_from_modinfo_and_modules_dep() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("kernel/a")).unwrap();
        std::fs::write(
            root.join("kernel/a/top.ko"),
            fake_module(&["depends=low-level"]),
        )
        .unwrap();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut fake_module(&["depends="]).as_slice(), &mut xz).unwrap();
        std::fs::write(root.join("kernel/a/low-level.ko.xz"), xz).unwrap();
        std::fs::write(root.join("modules.builtin"), "kernel/fs/ext4/ext4.ko\n").unwrap();

        let tree = ModuleTree::open(root).unwrap();
        let resolved = tree.resolve(&["ext4", "top"]).unwrap();
        let names: Vec<_> = resolved.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["low_level", "top"]);
        assert_eq!(resolved[0].1.installed_rel_path(), "kernel/a/low-level.ko");
        assert!(tree.read(&resolved[0].1).unwrap().starts_with(b"\x7fELF"));

        // With modules.dep present it wins over .modinfo.
        std::fs::write(root.join("modules.dep"), "kernel/a/top.ko:\n").unwrap();
        let tree = ModuleTree::open(root).unwrap();
        let names: Vec<_> = tree
            .resolve(&["top"])
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["top"]);
    }
}
