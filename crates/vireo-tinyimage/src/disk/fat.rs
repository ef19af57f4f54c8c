//! A FAT16 file system image writer for a small, fixed set of files (Microsoft's FAT
//! specification, "FAT: General Overview of On-Disk Format"). It exists so that an EFI system
//! partition can be produced without loop devices, mounts or external tools.
//!
//! Scope and invariants:
//! - Short (8.3) names only, no long-name entries: every path component must be a valid 8.3
//!   name of letters, digits, `_` and `-`, with the base name and the extension each in one
//!   case. An all-lowercase part is stored upper case with the Windows NT "lower case" flags
//!   (byte 12) set, which Linux, GRUB and EDK2 honour when listing; lookups are
//!   case-insensitive everywhere.
//! - Deterministic: directory entries sorted by name, clusters allocated in depth-first
//!   order, every timestamp the FAT epoch (1980-01-01 00:00), volume ID and label from the
//!   caller.
//! - The cluster count always lies in FAT16's range (4085..=65524): the type a reader derives
//!   from the geometry is the type written. Sizes and counts are checked before any
//!   allocation larger than the requested volume.

use std::collections::BTreeMap;

const SECTOR: usize = 512;
const DIR_ENTRY: usize = 32;
const RESERVED_SECTORS: u32 = 1;
const FAT_COUNT: u32 = 2;
const ROOT_ENTRIES: u32 = 512;
const ROOT_DIR_SECTORS: u32 = ROOT_ENTRIES * DIR_ENTRY as u32 / SECTOR as u32;
const MEDIA_FIXED: u8 = 0xf8;
/// FAT16 cluster-count bounds (a smaller count is FAT12, a larger one FAT32).
pub const MIN_CLUSTERS: u32 = 4085;
pub const MAX_CLUSTERS: u32 = 65524;
/// Largest cluster (32 KiB) readers universally accept.
const MAX_SECTORS_PER_CLUSTER: u32 = 64;
const END_OF_CHAIN: u16 = 0xffff;

const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_VOLUME_ID: u8 = 0x08;
const NT_LOWER_BASE: u8 = 0x08;
const NT_LOWER_EXT: u8 = 0x10;
/// 1980-01-01 in FAT date encoding (years since 1980 << 9 | month << 5 | day).
const FAT_EPOCH_DATE: u16 = (1 << 5) | 1;

/// Volume parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatParams {
    /// Size of the volume in 512-byte sectors.
    pub total_sectors: u32,
    /// Sectors before the volume on its disk (the partition's first LBA).
    pub hidden_sectors: u32,
    pub volume_id: u32,
    /// Up to 11 characters, stored upper case; also written as the root's volume-label entry.
    pub label: String,
}

/// A file to store; directories are implied by the paths (`EFI/BOOT/BOOTX64.EFI`).
#[derive(Debug, Clone, Copy)]
pub struct FatFile<'a> {
    pub path: &'a str,
    pub data: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FatError {
    #[error("{total_sectors} sectors cannot hold a FAT16 volume (needs {MIN_CLUSTERS}..={MAX_CLUSTERS} clusters of at most 32 KiB)")]
    Geometry { total_sectors: u32 },
    #[error("{path:?}: {reason}")]
    BadPath { path: String, reason: &'static str },
    #[error("{path:?} conflicts with another file or directory of the same 8.3 name")]
    Duplicate { path: String },
    #[error("{path:?} is {len} bytes, more than a FAT file can hold")]
    FileTooLarge { path: String, len: usize },
    #[error("the root directory holds at most {} entries", ROOT_ENTRIES - 1)]
    RootDirectoryFull,
    #[error("the files need {needed} clusters, the volume has {available}")]
    NoSpace { needed: u64, available: u64 },
    #[error("volume label {0:?} is not up to 11 characters of A-Z, 0-9, '_', '-' and space")]
    BadLabel(String),
}

/// Geometry derived from the volume size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub sectors_per_cluster: u32,
    pub fat_sectors: u32,
    pub clusters: u32,
}

impl Geometry {
    /// The smallest cluster size that keeps the cluster count within FAT16's maximum, with
    /// FATs just large enough for that count.
    pub fn for_volume(total_sectors: u32) -> Result<Geometry, FatError> {
        let fixed = RESERVED_SECTORS + ROOT_DIR_SECTORS;
        let mut spc = 1;
        while spc <= MAX_SECTORS_PER_CLUSTER {
            // The FAT size depends on the cluster count, which depends on the FAT size:
            // iterate from below; the sequence grows monotonically and stops at the first
            // size that covers its own cluster count.
            let mut fat_sectors = 1u64;
            let clusters = loop {
                let used = u64::from(fixed) + u64::from(FAT_COUNT) * fat_sectors;
                let clusters = u64::from(total_sectors).saturating_sub(used) / u64::from(spc);
                let needed = ((clusters + 2) * 2).div_ceil(SECTOR as u64);
                if needed <= fat_sectors {
                    break clusters;
                }
                fat_sectors = needed;
            };
            if clusters <= u64::from(MAX_CLUSTERS) {
                if clusters < u64::from(MIN_CLUSTERS) {
                    break;
                }
                // Both fit: clusters <= 65524, so fat_sectors <= 257.
                return Ok(Geometry {
                    sectors_per_cluster: spc,
                    fat_sectors: fat_sectors as u32,
                    clusters: clusters as u32,
                });
            }
            spc *= 2;
        }
        Err(FatError::Geometry { total_sectors })
    }

    fn cluster_bytes(&self) -> usize {
        self.sectors_per_cluster as usize * SECTOR
    }

    fn data_start_sector(&self) -> u32 {
        RESERVED_SECTORS + FAT_COUNT * self.fat_sectors + ROOT_DIR_SECTORS
    }
}

/// A name as stored in a directory entry plus its NT case flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct ShortName {
    stored: [u8; 11],
    nt_flags: u8,
}

fn short_name(component: &str, path: &str) -> Result<ShortName, FatError> {
    let bad = |reason| FatError::BadPath {
        path: path.to_owned(),
        reason,
    };
    let (base, ext) = match component.split_once('.') {
        Some((b, e)) => (b, e),
        None => (component, ""),
    };
    if base.is_empty() || base.len() > 8 || ext.len() > 3 || ext.contains('.') {
        return Err(bad("each component must be an 8.3 name"));
    }
    let mut stored = [b' '; 11];
    let mut nt_flags = 0;
    let (base_slot, ext_slot) = stored.split_at_mut(8);
    for (part, slot, lower_flag) in [
        (base, base_slot, NT_LOWER_BASE),
        (ext, ext_slot, NT_LOWER_EXT),
    ] {
        if !part
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        {
            return Err(bad("names may only use letters, digits, '_' and '-'"));
        }
        let has_lower = part.bytes().any(|c| c.is_ascii_lowercase());
        let has_upper = part.bytes().any(|c| c.is_ascii_uppercase());
        if has_lower && has_upper {
            return Err(bad("base name and extension must each be in one case"));
        }
        if has_lower {
            nt_flags |= lower_flag;
        }
        for (dst, src) in slot.iter_mut().zip(part.bytes()) {
            *dst = src.to_ascii_uppercase();
        }
    }
    Ok(ShortName { stored, nt_flags })
}

#[derive(Debug)]
enum NodeKind<'a> {
    /// Children by stored name (sorted, unique).
    Dir(BTreeMap<[u8; 11], usize>),
    File(&'a [u8]),
}

#[derive(Debug)]
struct Node<'a> {
    name: ShortName,
    kind: NodeKind<'a>,
    parent: usize,
    first_cluster: u16,
    clusters: u32,
}

/// Builds the directory tree (index 0 is the root).
fn tree<'a>(files: &[FatFile<'a>]) -> Result<Vec<Node<'a>>, FatError> {
    let mut nodes = vec![Node {
        name: ShortName {
            stored: [b' '; 11],
            nt_flags: 0,
        },
        kind: NodeKind::Dir(BTreeMap::new()),
        parent: 0,
        first_cluster: 0,
        clusters: 0,
    }];
    for file in files {
        if u32::try_from(file.data.len()).is_err() {
            return Err(FatError::FileTooLarge {
                path: file.path.to_owned(),
                len: file.data.len(),
            });
        }
        let components: Vec<&str> = file.path.split('/').collect();
        let (last, dirs) = components.split_last().ok_or_else(|| FatError::BadPath {
            path: file.path.to_owned(),
            reason: "empty path",
        })?;
        let mut at = 0;
        for component in dirs {
            let name = short_name(component, file.path)?;
            at = match child(&nodes, at, &name) {
                Some(i) if matches!(nodes[i].kind, NodeKind::Dir(_)) => i,
                Some(_) => {
                    return Err(FatError::Duplicate {
                        path: file.path.to_owned(),
                    })
                }
                None => add_child(&mut nodes, at, name, NodeKind::Dir(BTreeMap::new())),
            };
        }
        let name = short_name(last, file.path)?;
        if child(&nodes, at, &name).is_some() {
            return Err(FatError::Duplicate {
                path: file.path.to_owned(),
            });
        }
        add_child(&mut nodes, at, name, NodeKind::File(file.data));
    }
    Ok(nodes)
}

fn child(nodes: &[Node], dir: usize, name: &ShortName) -> Option<usize> {
    match &nodes[dir].kind {
        NodeKind::Dir(children) => children.get(&name.stored).copied(),
        NodeKind::File(_) => None,
    }
}

fn add_child<'a>(
    nodes: &mut Vec<Node<'a>>,
    dir: usize,
    name: ShortName,
    kind: NodeKind<'a>,
) -> usize {
    let index = nodes.len();
    nodes.push(Node {
        name,
        kind,
        parent: dir,
        first_cluster: 0,
        clusters: 0,
    });
    if let NodeKind::Dir(children) = &mut nodes[dir].kind {
        children.insert(name.stored, index);
    }
    index
}

/// Node indices in depth-first order, children by name.
fn depth_first(nodes: &[Node]) -> Vec<usize> {
    let mut order = Vec::with_capacity(nodes.len());
    let mut stack = vec![0];
    while let Some(i) = stack.pop() {
        order.push(i);
        if let NodeKind::Dir(children) = &nodes[i].kind {
            stack.extend(children.values().rev());
        }
    }
    order
}

fn label_bytes(label: &str) -> Result<[u8; 11], FatError> {
    let ok = label.len() <= 11
        && label
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b' ');
    if !ok {
        return Err(FatError::BadLabel(label.to_owned()));
    }
    let mut out = [b' '; 11];
    for (dst, src) in out.iter_mut().zip(label.bytes()) {
        *dst = src.to_ascii_uppercase();
    }
    Ok(out)
}

fn dir_entry(name: [u8; 11], nt_flags: u8, attr: u8, cluster: u16, size: u32) -> [u8; DIR_ENTRY] {
    let mut e = [0u8; DIR_ENTRY];
    e[0..11].copy_from_slice(&name);
    e[11] = attr;
    e[12] = nt_flags;
    // Creation time 0 (13..16), creation and access dates at the FAT epoch.
    e[16..18].copy_from_slice(&FAT_EPOCH_DATE.to_le_bytes());
    e[18..20].copy_from_slice(&FAT_EPOCH_DATE.to_le_bytes());
    // 20..22: high cluster word, always 0 on FAT16; 22..24: write time 0.
    e[24..26].copy_from_slice(&FAT_EPOCH_DATE.to_le_bytes());
    e[26..28].copy_from_slice(&cluster.to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// Formats a volume holding `files`; returns the whole volume (`total_sectors` × 512 bytes).
pub fn format(params: &FatParams, files: &[FatFile<'_>]) -> Result<Vec<u8>, FatError> {
    let geometry = Geometry::for_volume(params.total_sectors)?;
    let label = label_bytes(&params.label)?;
    let mut nodes = tree(files)?;
    let order = depth_first(&nodes);
    let cluster_bytes = geometry.cluster_bytes();

    // Allocate clusters in depth-first order (the root lives in its fixed region).
    let mut next: u64 = 2;
    for &i in &order[1..] {
        let bytes = match &nodes[i].kind {
            NodeKind::Dir(children) => (2 + children.len()) * DIR_ENTRY,
            NodeKind::File(data) => data.len(),
        };
        let clusters = bytes.div_ceil(cluster_bytes) as u64;
        if clusters > 0 {
            if next + clusters > u64::from(geometry.clusters) + 2 {
                let needed = order[1..]
                    .iter()
                    .map(|&j| match &nodes[j].kind {
                        NodeKind::Dir(c) => ((2 + c.len()) * DIR_ENTRY).div_ceil(cluster_bytes),
                        NodeKind::File(d) => d.len().div_ceil(cluster_bytes),
                    } as u64)
                    .sum();
                return Err(FatError::NoSpace {
                    needed,
                    available: geometry.clusters.into(),
                });
            }
            // In range: next + clusters <= clusters + 2 <= 65526 fits a u16.
            nodes[i].first_cluster = next as u16;
            nodes[i].clusters = clusters as u32;
            next += clusters;
        }
    }
    let root_children = match &nodes[0].kind {
        NodeKind::Dir(c) => c.len(),
        NodeKind::File(_) => 0,
    };
    if root_children + 1 > ROOT_ENTRIES as usize {
        return Err(FatError::RootDirectoryFull);
    }

    let mut volume = vec![0u8; params.total_sectors as usize * SECTOR];
    write_boot_sector(&mut volume[..SECTOR], params, &geometry, label);

    // FAT: media descriptor, clean-shutdown entry, then one chain per node.
    let mut fat = vec![0u8; geometry.fat_sectors as usize * SECTOR];
    let mut set = |cluster: u32, value: u16| {
        let at = cluster as usize * 2;
        fat[at..at + 2].copy_from_slice(&value.to_le_bytes());
    };
    set(0, 0xff00 | u16::from(MEDIA_FIXED));
    set(1, 0xffff);
    for node in &nodes {
        let first = u32::from(node.first_cluster);
        for c in first..first + node.clusters {
            let last = c + 1 == first + node.clusters;
            // Cluster numbers are below 65526, so `c + 1` fits a u16.
            set(c, if last { END_OF_CHAIN } else { (c + 1) as u16 });
        }
    }
    for copy in 0..FAT_COUNT {
        let at = (RESERVED_SECTORS + copy * geometry.fat_sectors) as usize * SECTOR;
        volume[at..at + fat.len()].copy_from_slice(&fat);
    }

    let cluster_offset = |c: u16| {
        (geometry.data_start_sector() as usize * SECTOR) + (usize::from(c) - 2) * cluster_bytes
    };
    for &i in &order {
        let node = &nodes[i];
        match &node.kind {
            NodeKind::File(data) => {
                if node.clusters > 0 {
                    let at = cluster_offset(node.first_cluster);
                    volume[at..at + data.len()].copy_from_slice(data);
                }
            }
            NodeKind::Dir(children) => {
                let mut entries: Vec<[u8; DIR_ENTRY]> = Vec::with_capacity(children.len() + 2);
                if i == 0 {
                    entries.push(dir_entry(label, 0, ATTR_VOLUME_ID, 0, 0));
                } else {
                    let mut dot = [b' '; 11];
                    dot[0] = b'.';
                    entries.push(dir_entry(dot, 0, ATTR_DIRECTORY, node.first_cluster, 0));
                    dot[1] = b'.';
                    // ".." of a directory in the root points at cluster 0.
                    let parent_cluster = nodes[node.parent].first_cluster;
                    entries.push(dir_entry(dot, 0, ATTR_DIRECTORY, parent_cluster, 0));
                }
                for &c in children.values() {
                    let child = &nodes[c];
                    let (attr, size) = match &child.kind {
                        NodeKind::Dir(_) => (ATTR_DIRECTORY, 0),
                        // Checked in `tree`: every file length fits a u32.
                        NodeKind::File(d) => (0, d.len() as u32),
                    };
                    entries.push(dir_entry(
                        child.name.stored,
                        child.name.nt_flags,
                        attr,
                        child.first_cluster,
                        size,
                    ));
                }
                let at = if i == 0 {
                    (RESERVED_SECTORS + FAT_COUNT * geometry.fat_sectors) as usize * SECTOR
                } else {
                    cluster_offset(node.first_cluster)
                };
                for (k, e) in entries.iter().enumerate() {
                    volume[at + k * DIR_ENTRY..at + (k + 1) * DIR_ENTRY].copy_from_slice(e);
                }
            }
        }
    }
    Ok(volume)
}

fn write_boot_sector(s: &mut [u8], params: &FatParams, g: &Geometry, label: [u8; 11]) {
    s[0..3].copy_from_slice(&[0xeb, 0x3c, 0x90]); // jmp short to 0x3e, nop
    s[3..11].copy_from_slice(b"VIREO1.0");
    s[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    // Geometry values are bounded: spc <= 64, fat sectors <= 257.
    s[13] = g.sectors_per_cluster as u8;
    s[14..16].copy_from_slice(&(RESERVED_SECTORS as u16).to_le_bytes());
    s[16] = FAT_COUNT as u8;
    s[17..19].copy_from_slice(&(ROOT_ENTRIES as u16).to_le_bytes());
    let (small, large) = match u16::try_from(params.total_sectors) {
        Ok(n) => (n, 0),
        Err(_) => (0, params.total_sectors),
    };
    s[19..21].copy_from_slice(&small.to_le_bytes());
    s[21] = MEDIA_FIXED;
    s[22..24].copy_from_slice(&(g.fat_sectors as u16).to_le_bytes());
    s[24..26].copy_from_slice(&63u16.to_le_bytes()); // nominal CHS geometry, unused by LBA readers
    s[26..28].copy_from_slice(&255u16.to_le_bytes());
    s[28..32].copy_from_slice(&params.hidden_sectors.to_le_bytes());
    s[32..36].copy_from_slice(&large.to_le_bytes());
    s[36] = 0x80; // drive number: hard disk
    s[38] = 0x29; // extended boot signature: the next three fields are valid
    s[39..43].copy_from_slice(&params.volume_id.to_le_bytes());
    s[43..54].copy_from_slice(&label);
    s[54..62].copy_from_slice(b"FAT16   ");
    // Not a bootable volume: the code halts if anything ever jumps here.
    s[62..65].copy_from_slice(&[0xf4, 0xeb, 0xfd]); // hlt; jmp $-1
    s[510] = 0x55;
    s[511] = 0xaa;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn params(total_sectors: u32) -> FatParams {
        FatParams {
            total_sectors,
            hidden_sectors: 4096,
            volume_id: 0x1234_abcd,
            label: "VIREO-ESP".into(),
        }
    }

    #[test]
    fn geometry_stays_in_fat16_range() {
        for total in [32768u32, 40_000, 65535, 65536, 131_072, 1 << 20, 4_000_000] {
            let g = Geometry::for_volume(total).unwrap();
            assert!(
                (MIN_CLUSTERS..=MAX_CLUSTERS).contains(&g.clusters),
                "{total}: {g:?}"
            );
            // The FATs cover every cluster, and the data region fits the volume.
            assert!(g.fat_sectors as usize * SECTOR >= (g.clusters as usize + 2) * 2);
            assert!(
                g.data_start_sector() + g.clusters * g.sectors_per_cluster <= total,
                "{total}: {g:?}"
            );
        }
        assert_eq!(Geometry::for_volume(32768).unwrap().sectors_per_cluster, 1);
        assert!(Geometry::for_volume(4000).is_err());
        assert!(Geometry::for_volume(u32::MAX).is_err());
    }

    #[test]
    fn names_are_8_3_with_case_flags() {
        let n = short_name("bootx64.efi", "p").unwrap();
        assert_eq!(&n.stored, b"BOOTX64 EFI");
        assert_eq!(n.nt_flags, NT_LOWER_BASE | NT_LOWER_EXT);
        let n = short_name("GRUB.cfg", "p").unwrap();
        assert_eq!((&n.stored, n.nt_flags), (b"GRUB    CFG", NT_LOWER_EXT));
        let n = short_name("EFI", "p").unwrap();
        assert_eq!((&n.stored, n.nt_flags), (b"EFI        ", 0));
        for bad in [
            "",
            "toolongname",
            "a.b.c",
            "a.long",
            "Mixed",
            "sp ace",
            ".x",
            "é",
        ] {
            assert!(short_name(bad, "p").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_inputs_are_refused() {
        let p = params(32768);
        let data = [1u8; 10];
        let f = |path| FatFile { path, data: &data };
        assert!(matches!(
            format(&p, &[f("a/b"), f("a")]),
            Err(FatError::Duplicate { .. })
        ));
        assert!(matches!(
            format(&p, &[f("a"), f("a/b")]),
            Err(FatError::Duplicate { .. })
        ));
        assert!(matches!(
            format(&p, &[f("x.y"), f("X.Y")]),
            Err(FatError::Duplicate { .. })
        ));
        assert!(matches!(
            format(&p, &[f("a//b")]),
            Err(FatError::BadPath { .. })
        ));
        assert!(matches!(
            format(&p, &[f("/a")]),
            Err(FatError::BadPath { .. })
        ));
        let big = vec![0u8; 17 << 20];
        assert!(matches!(
            format(
                &p,
                &[FatFile {
                    path: "big",
                    data: &big
                }]
            ),
            Err(FatError::NoSpace { .. })
        ));
        let mut bad_label = params(32768);
        bad_label.label = "label.too.long".into();
        assert!(matches!(
            format(&bad_label, &[]),
            Err(FatError::BadLabel(_))
        ));
        let names: Vec<String> = (0..512).map(|i| format!("f{i}")).collect();
        let many: Vec<FatFile> = names.iter().map(|n| f(n)).collect();
        assert!(matches!(
            format(&p, &many),
            Err(FatError::RootDirectoryFull)
        ));
        assert!(format(&p, &many[..511]).is_ok());
    }

    #[test]
    fn layout_is_deterministic_and_sorted() {
        let a = [7u8; 3000];
        let files = [
            FatFile {
                path: "zz/b.txt",
                data: &a,
            },
            FatFile {
                path: "zz/a.txt",
                data: b"",
            },
            FatFile {
                path: "AA",
                data: b"x",
            },
        ];
        let img = format(&params(32768), &files).unwrap();
        let mut reversed = files;
        reversed.reverse();
        assert_eq!(img, format(&params(32768), &reversed).unwrap());

        let g = Geometry::for_volume(32768).unwrap();
        let root = (1 + 2 * g.fat_sectors as usize) * SECTOR;
        let entry = |at: usize| &img[at..at + DIR_ENTRY];
        assert_eq!(&entry(root)[..12], b"VIREO-ESP  \x08");
        assert_eq!(&entry(root + 32)[..11], b"AA         ");
        assert_eq!(&entry(root + 64)[..12], b"ZZ         \x10");
        assert_eq!(entry(root + 96)[0], 0, "end of directory");
        // AA gets cluster 2, ZZ cluster 3, its children a.txt (empty: cluster 0), b.txt 4..=9.
        let cluster = |e: &[u8]| u16::from_le_bytes([e[26], e[27]]);
        assert_eq!(cluster(entry(root + 32)), 2);
        assert_eq!(cluster(entry(root + 64)), 3);
        let zz = g.data_start_sector() as usize * SECTOR + SECTOR;
        assert_eq!(&entry(zz)[..11], b".          ");
        assert_eq!(cluster(entry(zz)), 3);
        assert_eq!(&entry(zz + 32)[..11], b"..         ");
        assert_eq!(cluster(entry(zz + 32)), 0);
        assert_eq!(&entry(zz + 64)[..13], b"A       TXT\x00\x18");
        assert_eq!(cluster(entry(zz + 64)), 0);
        assert_eq!(cluster(entry(zz + 96)), 4);
        assert_eq!(&entry(zz + 96)[28..32], &3000u32.to_le_bytes());
        let fat_entry =
            |c: usize| u16::from_le_bytes([img[SECTOR + 2 * c], img[SECTOR + 2 * c + 1]]);
        assert_eq!(fat_entry(0), 0xfff8);
        assert_eq!((fat_entry(2), fat_entry(3)), (0xffff, 0xffff));
        assert_eq!(
            (4..10).map(fat_entry).collect::<Vec<_>>(),
            [5, 6, 7, 8, 9, 0xffff]
        );
        assert_eq!(fat_entry(10), 0);
        // Second FAT is a copy of the first.
        let fat_len = g.fat_sectors as usize * SECTOR;
        assert_eq!(
            img[SECTOR..SECTOR + fat_len],
            img[SECTOR + fat_len..SECTOR + 2 * fat_len]
        );
    }

    fn run(cmd: &mut Command) -> String {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("running {cmd:?}: {e} (install dosfstools and mtools)"));
        assert!(
            out.status.success(),
            "{cmd:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// dosfstools' checker and mtools (independent FAT implementations) accept the volume
    /// and read back the same names and contents.
    #[test]
    fn fsck_and_mtools_read_the_volume() {
        let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let files = [
            FatFile {
                path: "EFI/BOOT/BOOTX64.EFI",
                data: &big,
            },
            FatFile {
                path: "vireo/grub.cfg",
                data: b"set timeout=0\n",
            },
            FatFile {
                path: "vireo/empty",
                data: b"",
            },
        ];
        // Two sizes: 16-bit and 32-bit total-sector fields, different cluster sizes.
        for total in [40_000u32, 300_000] {
            let dir = tempfile::tempdir().unwrap();
            let img = dir.path().join("esp.img");
            std::fs::write(&img, format(&params(total), &files).unwrap()).unwrap();

            let fsck = run(Command::new("fsck.fat").arg("-n").arg("-v").arg(&img));
            assert!(fsck.contains("2 FATs, 16 bit entries"), "{fsck}");
            assert!(fsck.contains(" 7 files,"), "{fsck}");

            let i = img.to_str().unwrap();
            let listing = run(Command::new("mdir").args(["-i", i, "-/", "-b", "::/"]));
            let mut lines: Vec<&str> = listing.lines().collect();
            lines.sort();
            assert_eq!(
                lines,
                [
                    "::/EFI/",
                    "::/EFI/BOOT/",
                    "::/EFI/BOOT/BOOTX64.EFI",
                    "::/vireo/",
                    "::/vireo/empty",
                    "::/vireo/grub.cfg"
                ],
                "{listing}"
            );
            let back = dir.path().join("back.efi");
            run(Command::new("mcopy")
                .args(["-n", "-i", i, "::/EFI/BOOT/BOOTX64.EFI"])
                .arg(&back));
            assert_eq!(std::fs::read(&back).unwrap(), big);
            let cfg = run(Command::new("mtype").args(["-i", i, "::/vireo/grub.cfg"]));
            assert_eq!(cfg, "set timeout=0\n");
            let info = run(Command::new("minfo").args(["-i", i, "::"]));
            assert!(info.contains("VIREO-ESP"), "{info}");
        }
    }
}
