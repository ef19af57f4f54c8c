//! A writer for the "newc" cpio format (`070701`), the format the Linux kernel unpacks as an
//! initramfs.
//!
//! Invariants of [`Archive::to_newc`]:
//! - Output is deterministic: entries are emitted sorted by path (bytewise), every entry carries
//!   the same fixed mtime ([`FIXED_MTIME`]), uid/gid 0, and inode numbers are assigned in emission
//!   order starting at 1. The same archive always produces the same bytes.
//! - A parent directory always precedes its children (a path sorts after any of its prefixes),
//!   and [`Archive`] creates missing parent directories itself, so the kernel never has to
//!   create a directory implicitly.
//! - Every header plus name, and every body, is padded with NULs to a multiple of 4 bytes; the
//!   archive ends with the `TRAILER!!!` entry (also padded to 4 bytes, no 512-byte blocking: the
//!   kernel does not need it).
//! - Hard links share one inode number and carry `nlink` = size of the link set; the file body is
//!   stored only with the last member of the set in emission order (the newc convention GNU cpio
//!   uses, and what the kernel's unpacker accepts); the other members have `filesize` 0.
//! - Paths are relative, `/`-separated, without `.`/`..`/empty components or NUL bytes.

use std::collections::{BTreeMap, BTreeSet};

/// mtime written for every entry (the Unix epoch), so archives are reproducible.
pub const FIXED_MTIME: u32 = 0;

const NEWC_MAGIC: &[u8; 6] = b"070701";
const TRAILER_NAME: &str = "TRAILER!!!";
/// newc fields are 8 hex digits.
const MAX_FIELD: u64 = u32::MAX as u64;
/// Longest path accepted (Linux PATH_MAX, including the terminating NUL).
const MAX_PATH_LEN: usize = 4095;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const PERMISSION_BITS: u32 = 0o7777;

/// Errors from building or serialising an archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("invalid archive path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("archive path {path:?} is added twice")]
    Duplicate { path: String },
    #[error("archive path {path:?} needs parent directory {parent:?}, which is not a directory")]
    ParentNotDirectory { path: String, parent: String },
    #[error("hard link {path:?} points at {target:?}, which is not a regular file in the archive")]
    BadHardLinkTarget { path: String, target: String },
    #[error("entry {path:?} is {size} bytes; newc stores at most 4 GiB - 1")]
    TooLarge { path: String, size: u64 },
}

/// What an archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    File {
        data: Vec<u8>,
    },
    Symlink {
        target: String,
    },
    CharDevice {
        major: u32,
        minor: u32,
    },
    /// Another name for the regular file at `target` (an archive path).
    HardLink {
        target: String,
    },
}

/// One archive entry: permission bits and kind (the file-type bits come from the kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub permissions: u32,
    pub kind: EntryKind,
}

/// An in-memory set of entries keyed by path; see the module docs for the output invariants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory (and any missing parents). Adding an existing directory again is
    /// allowed when the permissions agree, so callers can declare layout idempotently.
    pub fn dir(&mut self, path: &str, permissions: u32) -> Result<(), CpioError> {
        let path = normalise(path)?;
        if let Some(existing) = self.entries.get(&path) {
            if existing.kind == EntryKind::Directory && existing.permissions == permissions {
                return Ok(());
            }
            return Err(CpioError::Duplicate { path });
        }
        self.insert(path, permissions, EntryKind::Directory)
    }

    pub fn file(&mut self, path: &str, permissions: u32, data: Vec<u8>) -> Result<(), CpioError> {
        let path = normalise(path)?;
        if data.len() as u64 > MAX_FIELD {
            return Err(CpioError::TooLarge {
                path,
                size: data.len() as u64,
            });
        }
        self.insert(path, permissions, EntryKind::File { data })
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        let path = normalise(path)?;
        if target.is_empty() || target.contains('\0') {
            return Err(CpioError::InvalidPath {
                path,
                reason: "symlink target is empty or contains NUL",
            });
        }
        self.insert(
            path,
            0o777,
            EntryKind::Symlink {
                target: target.to_owned(),
            },
        )
    }

    pub fn char_device(
        &mut self,
        path: &str,
        permissions: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        let path = normalise(path)?;
        self.insert(path, permissions, EntryKind::CharDevice { major, minor })
    }

    /// Adds `path` as a hard link to the regular file `target` (which may be added later;
    /// the link is checked when the archive is serialised).
    pub fn hard_link(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        let path = normalise(path)?;
        let target = normalise(target)?;
        self.insert(path, 0, EntryKind::HardLink { target })
    }

    pub fn contains(&self, path: &str) -> bool {
        normalise(path).is_ok_and(|p| self.entries.contains_key(&p))
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        normalise(path).ok().and_then(|p| self.entries.get(&p))
    }

    /// Entries in emission order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    fn insert(&mut self, path: String, permissions: u32, kind: EntryKind) -> Result<(), CpioError> {
        if self.entries.contains_key(&path) {
            return Err(CpioError::Duplicate { path });
        }
        self.ensure_parents(&path)?;
        self.entries.insert(
            path,
            Entry {
                permissions: permissions & PERMISSION_BITS,
                kind,
            },
        );
        Ok(())
    }

    fn ensure_parents(&mut self, path: &str) -> Result<(), CpioError> {
        let mut end = 0;
        while let Some(offset) = path[end..].find('/') {
            let parent = &path[..end + offset];
            match self.entries.get(parent) {
                Some(Entry {
                    kind: EntryKind::Directory,
                    ..
                }) => {}
                Some(_) => {
                    return Err(CpioError::ParentNotDirectory {
                        path: path.to_owned(),
                        parent: parent.to_owned(),
                    })
                }
                None => {
                    self.entries.insert(
                        parent.to_owned(),
                        Entry {
                            permissions: 0o755,
                            kind: EntryKind::Directory,
                        },
                    );
                }
            }
            end += offset + 1;
        }
        Ok(())
    }

    /// Serialises the archive as newc cpio (uncompressed).
    pub fn to_newc(&self) -> Result<Vec<u8>, CpioError> {
        let links = self.link_sets()?;
        let mut out = Vec::new();
        let mut next_ino: u32 = 1;
        // Inode assigned to each hard-link set, keyed by the target file's path.
        let mut set_inode: BTreeMap<&str, u32> = BTreeMap::new();

        for (path, entry) in &self.entries {
            let header = match &entry.kind {
                EntryKind::Directory => Header::simple(S_IFDIR, entry.permissions, 2),
                EntryKind::Symlink { target } => {
                    Header::with_body(S_IFLNK, 0o777, 1, target.as_bytes())
                }
                EntryKind::CharDevice { major, minor } => Header {
                    rdev: (*major, *minor),
                    ..Header::simple(S_IFCHR, entry.permissions, 1)
                },
                EntryKind::File { .. } | EntryKind::HardLink { .. } => {
                    let set_key = link_set_key(path, entry);
                    let set = &links[set_key];
                    let (permissions, data) = self.regular_file(set_key);
                    let nlink = set.len() as u32;
                    let body: &[u8] = if set.last().map(String::as_str) == Some(path.as_str()) {
                        data
                    } else {
                        &[]
                    };
                    let mut header = Header::with_body(S_IFREG, permissions, nlink, body);
                    if nlink > 1 {
                        // Members of a link set share the inode of the set's first member.
                        let ino = *set_inode.entry(set_key).or_insert_with(|| {
                            let ino = next_ino;
                            next_ino += 1;
                            ino
                        });
                        header.ino = Some(ino);
                    }
                    header
                }
            };
            let ino = header.ino.unwrap_or_else(|| {
                let ino = next_ino;
                next_ino += 1;
                ino
            });
            header.write(&mut out, ino, path)?;
        }
        Header::simple(0, 0, 1).write(&mut out, 0, TRAILER_NAME)?;
        Ok(out)
    }

    /// Groups every regular file with the hard links that name it, members sorted by path.
    fn link_sets(&self) -> Result<BTreeMap<&str, Vec<String>>, CpioError> {
        let mut sets: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (path, entry) in &self.entries {
            match &entry.kind {
                EntryKind::File { .. } => {
                    sets.entry(path.as_str()).or_default().insert(path.clone());
                }
                EntryKind::HardLink { target } => {
                    let is_file = matches!(
                        self.entries.get(target),
                        Some(Entry {
                            kind: EntryKind::File { .. },
                            ..
                        })
                    );
                    if !is_file {
                        return Err(CpioError::BadHardLinkTarget {
                            path: path.clone(),
                            target: target.clone(),
                        });
                    }
                    sets.entry(target.as_str())
                        .or_default()
                        .insert(path.clone());
                }
                _ => {}
            }
        }
        Ok(sets
            .into_iter()
            .map(|(k, v)| (k, v.into_iter().collect()))
            .collect())
    }

    /// Permissions and data of the regular file at `path`. Only called with keys produced by
    /// `link_sets`, which guarantees the entry exists and is a `File`.
    fn regular_file(&self, path: &str) -> (u32, &[u8]) {
        match self.entries.get(path) {
            Some(Entry {
                permissions,
                kind: EntryKind::File { data },
            }) => (*permissions, data),
            _ => (0, &[]),
        }
    }
}

/// The path of the regular file whose link set `entry` (at `path`) belongs to.
fn link_set_key<'a>(path: &'a str, entry: &'a Entry) -> &'a str {
    match &entry.kind {
        EntryKind::HardLink { target } => target,
        _ => path,
    }
}

struct Header<'a> {
    mode: u32,
    nlink: u32,
    body: &'a [u8],
    rdev: (u32, u32),
    ino: Option<u32>,
}

impl<'a> Header<'a> {
    fn simple(file_type: u32, permissions: u32, nlink: u32) -> Self {
        Self::with_body(file_type, permissions, nlink, &[])
    }

    fn with_body(file_type: u32, permissions: u32, nlink: u32, body: &'a [u8]) -> Self {
        Header {
            mode: file_type | (permissions & PERMISSION_BITS),
            nlink,
            body,
            rdev: (0, 0),
            ino: None,
        }
    }

    fn write(&self, out: &mut Vec<u8>, ino: u32, name: &str) -> Result<(), CpioError> {
        let namesize = name.len() as u64 + 1;
        let filesize = self.body.len() as u64;
        if filesize > MAX_FIELD {
            return Err(CpioError::TooLarge {
                path: name.to_owned(),
                size: filesize,
            });
        }
        out.extend_from_slice(NEWC_MAGIC);
        let fields = [
            u64::from(ino),
            u64::from(self.mode),
            0, // uid
            0, // gid
            u64::from(self.nlink),
            u64::from(FIXED_MTIME),
            filesize,
            0, // devmajor (of the archived filesystem; meaningless here)
            0, // devminor
            u64::from(self.rdev.0),
            u64::from(self.rdev.1),
            namesize,
            0, // check (only used by the crc variant 070702)
        ];
        for field in fields {
            out.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad4(out);
        out.extend_from_slice(self.body);
        pad4(out);
        Ok(())
    }
}

fn pad4(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(4), 0);
}

/// Validates a path and strips one leading `/` (archive paths are relative).
fn normalise(path: &str) -> Result<String, CpioError> {
    let invalid = |reason| CpioError::InvalidPath {
        path: path.to_owned(),
        reason,
    };
    let relative = path.strip_prefix('/').unwrap_or(path);
    if relative.is_empty() {
        return Err(invalid("empty path (the archive root is implicit)"));
    }
    if relative.len() >= MAX_PATH_LEN {
        return Err(invalid("path too long"));
    }
    if relative.contains('\0') {
        return Err(invalid("contains NUL"));
    }
    if relative == TRAILER_NAME {
        return Err(invalid("reserved trailer name"));
    }
    for component in relative.split('/') {
        match component {
            "" => return Err(invalid("empty component")),
            "." | ".." => return Err(invalid("`.` or `..` component")),
            _ => {}
        }
    }
    Ok(relative.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders newc bytes as one line per header/name/body chunk, so golden data is reviewable.
    fn hexless_view(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).replace('\0', "~")
    }

    #[test]
    fn golden_bytes_for_every_entry_kind() {
        let mut a = Archive::new();
        a.file("etc/motd", 0o644, b"hello\n".to_vec()).unwrap();
        a.symlink("bin/sh", "busybox").unwrap();
        a.file("bin/busybox", 0o755, b"BB".to_vec()).unwrap();
        a.hard_link("bin/ash", "bin/busybox").unwrap();
        a.char_device("dev/console", 0o600, 5, 1).unwrap();
        let bytes = a.to_newc().unwrap();

        // Fields: magic ino mode uid gid nlink mtime filesize devmaj devmin rdevmaj rdevmin
        // namesize check, then name + NUL padded to 4 (110-byte header), then body padded to 4.
        let expected = concat!(
            // bin: implicit parent directory 040755, inode 1
            "070701",
            "00000001",
            "000041ed",
            "00000000",
            "00000000",
            "00000002",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000004",
            "00000000",
            "bin~~~",
            // bin/ash: first member of the busybox link set (0100755, nlink 2), no body
            "070701",
            "00000002",
            "000081ed",
            "00000000",
            "00000000",
            "00000002",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000008",
            "00000000",
            "bin/ash~~~",
            // bin/busybox: last member of the set, same inode, carries the 2-byte body
            "070701",
            "00000002",
            "000081ed",
            "00000000",
            "00000000",
            "00000002",
            "00000000",
            "00000002",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "0000000c",
            "00000000",
            "bin/busybox~~~",
            "BB~~",
            // bin/sh -> busybox (0120777), body is the target
            "070701",
            "00000003",
            "0000a1ff",
            "00000000",
            "00000000",
            "00000001",
            "00000000",
            "00000007",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000007",
            "00000000",
            "bin/sh~~~~",
            "busybox~",
            // dev
            "070701",
            "00000004",
            "000041ed",
            "00000000",
            "00000000",
            "00000002",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000004",
            "00000000",
            "dev~~~",
            // dev/console: char device 5:1, 020600
            "070701",
            "00000005",
            "00002180",
            "00000000",
            "00000000",
            "00000001",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000005",
            "00000001",
            "0000000c",
            "00000000",
            "dev/console~~~",
            // etc
            "070701",
            "00000006",
            "000041ed",
            "00000000",
            "00000000",
            "00000002",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000004",
            "00000000",
            "etc~~~",
            // etc/motd (0100644), 6-byte body
            "070701",
            "00000007",
            "000081a4",
            "00000000",
            "00000000",
            "00000001",
            "00000000",
            "00000006",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000009",
            "00000000",
            "etc/motd~~",
            "hello\n~~",
            // trailer: everything zero but nlink 1 and namesize 11
            "070701",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000001",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "0000000b",
            "00000000",
            "TRAILER!!!~~~~",
        );
        assert_eq!(hexless_view(&bytes), expected);
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn symlink_mode_is_fixed() {
        let mut a = Archive::new();
        a.symlink("a", "b").unwrap();
        let bytes = a.to_newc().unwrap();
        // mode field follows magic + ino
        assert_eq!(&bytes[14..22], b"0000a1ff");
    }

    #[test]
    fn output_is_independent_of_insertion_order() {
        let mut a = Archive::new();
        a.file("z/file", 0o644, b"1".to_vec()).unwrap();
        a.dir("a", 0o700).unwrap();
        a.symlink("m", "z/file").unwrap();
        let mut b = Archive::new();
        b.symlink("m", "z/file").unwrap();
        b.dir("a", 0o700).unwrap();
        b.file("z/file", 0o644, b"1".to_vec()).unwrap();
        assert_eq!(a.to_newc().unwrap(), b.to_newc().unwrap());
    }

    #[test]
    fn parents_precede_children_even_with_tricky_names() {
        let mut a = Archive::new();
        a.file("a-b", 0o644, vec![]).unwrap();
        a.file("a/b", 0o644, vec![]).unwrap();
        a.file("a.c", 0o644, vec![]).unwrap();
        let order: Vec<&str> = a.entries().map(|(p, _)| p).collect();
        assert_eq!(order, ["a", "a-b", "a.c", "a/b"]);
    }

    #[test]
    fn rejects_bad_paths_and_conflicts() {
        let mut a = Archive::new();
        for bad in ["", "/", "a//b", "a/../b", "./a", "x\0y", "TRAILER!!!"] {
            assert!(
                matches!(
                    a.file(bad, 0o644, vec![]),
                    Err(CpioError::InvalidPath { .. })
                ),
                "{bad:?} accepted"
            );
        }
        a.file("f", 0o644, vec![]).unwrap();
        assert!(matches!(
            a.file("/f", 0o644, vec![]),
            Err(CpioError::Duplicate { .. })
        ));
        assert!(matches!(
            a.file("f/g", 0o644, vec![]),
            Err(CpioError::ParentNotDirectory { .. })
        ));
        a.dir("d", 0o755).unwrap();
        a.dir("d", 0o755).unwrap();
        assert!(matches!(
            a.dir("d", 0o700),
            Err(CpioError::Duplicate { .. })
        ));
        a.hard_link("l", "d").unwrap();
        assert!(matches!(
            a.to_newc(),
            Err(CpioError::BadHardLinkTarget { .. })
        ));
    }

    #[test]
    fn empty_archive_is_just_the_trailer() {
        let bytes = Archive::new().to_newc().unwrap();
        assert_eq!(bytes.len(), 112 + 12);
        assert!(hexless_view(&bytes).ends_with("TRAILER!!!~~~~"));
    }

    /// GNU cpio is the oracle: it must list and extract what we write, with the hard link
    /// sharing an inode and the symlink and data intact.
    #[test]
    fn gnu_cpio_extracts_our_archive() {
        use std::os::unix::fs::MetadataExt;
        if std::process::Command::new("cpio")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("skipping: GNU cpio is not installed");
            return;
        }
        let mut a = Archive::new();
        a.file("bin/busybox", 0o755, b"multi-call".to_vec())
            .unwrap();
        a.hard_link("bin/ash", "bin/busybox").unwrap();
        a.hard_link("sbin/init", "bin/busybox").unwrap();
        a.symlink("bin/sh", "busybox").unwrap();
        a.file("etc/odd-size", 0o600, vec![7u8; 5]).unwrap();
        a.dir("empty", 0o700).unwrap();
        let bytes = a.to_newc().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-i", "-d", "-m", "--no-absolute-filenames", "--quiet"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        assert!(child.wait().unwrap().success());

        let root = dir.path();
        assert_eq!(
            std::fs::read(root.join("bin/busybox")).unwrap(),
            b"multi-call"
        );
        let ino = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
        assert_eq!(ino("bin/ash"), ino("bin/busybox"));
        assert_eq!(ino("sbin/init"), ino("bin/busybox"));
        assert_eq!(
            std::fs::metadata(root.join("bin/busybox")).unwrap().nlink(),
            3
        );
        assert_eq!(
            std::fs::read_link(root.join("bin/sh")).unwrap(),
            std::path::Path::new("busybox")
        );
        assert_eq!(std::fs::read(root.join("etc/odd-size")).unwrap(), [7u8; 5]);
        let mode = std::fs::metadata(root.join("empty")).unwrap().mode();
        assert_eq!(mode & 0o7777, 0o700);
    }
}
