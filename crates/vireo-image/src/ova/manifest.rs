//! OVA manifests (`.mf`): parsing, the digests of archive members, and checking one against
//! the other.
//!
//! Invariants: a manifest line names a member through [`tar::safe_name`] and carries a
//! lowercase hex digest of exactly its algorithm's length; verification requires every listed
//! member to exist with a matching digest and every member but `.mf`/`.cert` to be listed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::Path;

use sha1::Digest as _;

use super::{bad, tar};
use crate::error::ImageError;

/// Digest algorithms a manifest may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum DigestAlgorithm {
    Sha1,
    Sha256,
    Sha512,
}

/// One manifest line: `SHA256(disk1.vmdk)= 0123…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    pub algorithm: DigestAlgorithm,
    pub file: String,
    /// Lowercase hex.
    pub digest: String,
}

/// Parses a manifest (pure). Blank lines are ignored; anything else must be an entry.
pub fn parse_manifest(text: &str) -> Result<Vec<ManifestEntry>, ImageError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let malformed = || bad(format!("manifest line {} is not ALG(file)= digest", i + 1));
        let open = line.find('(').ok_or_else(malformed)?;
        let close = line.rfind(")=").ok_or_else(malformed)?;
        if close < open {
            return Err(malformed());
        }
        let algorithm = match line[..open].trim().to_ascii_uppercase().as_str() {
            "SHA1" => DigestAlgorithm::Sha1,
            "SHA256" => DigestAlgorithm::Sha256,
            "SHA512" => DigestAlgorithm::Sha512,
            other => {
                return Err(ImageError::Unsupported {
                    format: "ova",
                    detail: format!("manifest digest algorithm {other}"),
                })
            }
        };
        let file = tar::safe_name(&line[open + 1..close])?;
        let digest = line[close + 2..].trim().to_ascii_lowercase();
        let expected_len = match algorithm {
            DigestAlgorithm::Sha1 => 40,
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha512 => 128,
        };
        if digest.len() != expected_len || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("manifest digest for {file} is malformed")));
        }
        out.push(ManifestEntry {
            algorithm,
            file,
            digest,
        });
    }
    Ok(out)
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// All three digests of a stream, computed together.
#[derive(Debug, Default, Clone)]
pub(super) struct Hashes {
    sha1: sha1::Sha1,
    sha256: sha2::Sha256,
    sha512: sha2::Sha512,
}

impl Hashes {
    pub(super) fn update(&mut self, data: &[u8]) {
        self.sha1.update(data);
        self.sha256.update(data);
        self.sha512.update(data);
    }

    pub(super) fn finish(self) -> BTreeMap<DigestAlgorithm, String> {
        BTreeMap::from([
            (DigestAlgorithm::Sha1, hex(&self.sha1.finalize())),
            (DigestAlgorithm::Sha256, hex(&self.sha256.finalize())),
            (DigestAlgorithm::Sha512, hex(&self.sha512.finalize())),
        ])
    }
}

/// How the manifest check went.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum ManifestStatus {
    /// Every member matched the digests listed (algorithms used).
    Verified { algorithms: Vec<DigestAlgorithm> },
    /// The package has no manifest.
    Absent,
}

/// Digests of every archive member by name (all algorithms of [`Hashes`]).
pub(super) type MemberDigests = BTreeMap<String, BTreeMap<DigestAlgorithm, String>>;

/// Checks the members' digests against the manifest, if the package has one.
pub(super) fn verify_members(
    manifest: Option<&[ManifestEntry]>,
    digests: &MemberDigests,
) -> Result<ManifestStatus, ImageError> {
    Ok(match manifest {
        None => ManifestStatus::Absent,
        Some(entries) => {
            let mut algorithms = BTreeSet::new();
            let mut listed = BTreeSet::new();
            for e in entries {
                let actual = digests.get(&e.file).ok_or_else(|| {
                    bad(format!(
                        "manifest lists {}, which the archive does not hold",
                        e.file
                    ))
                })?;
                if actual.get(&e.algorithm) != Some(&e.digest) {
                    return Err(bad(format!(
                        "{:?} digest of {} does not match the manifest",
                        e.algorithm, e.file
                    )));
                }
                algorithms.insert(e.algorithm);
                listed.insert(e.file.as_str());
            }
            for name in digests.keys() {
                let lower = name.to_ascii_lowercase();
                if !lower.ends_with(".mf")
                    && !lower.ends_with(".cert")
                    && !listed.contains(name.as_str())
                {
                    return Err(bad(format!("member {name} is not covered by the manifest")));
                }
            }
            ManifestStatus::Verified {
                algorithms: algorithms.into_iter().collect(),
            }
        }
    })
}

/// Size and SHA-256 digest (lowercase hex) of a file.
pub(super) fn sha256_file(path: &Path) -> Result<(u64, String), ImageError> {
    let mut f =
        File::open(path).map_err(|e| ImageError::io(format!("opening {}", path.display()), e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| ImageError::io(format!("reading {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex(&h.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_lines() {
        let m = parse_manifest(&format!(
            "SHA256(vm.ovf)= {}\nSHA1(disk 1.vmdk)={}\n\nsha512(x)= {}\n",
            "a".repeat(64),
            "B".repeat(40),
            "c".repeat(128)
        ))
        .unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].file, "disk 1.vmdk");
        assert_eq!(m[1].digest, "b".repeat(40));
        assert_eq!(m[2].algorithm, DigestAlgorithm::Sha512);
        for bad in [
            "garbage",
            "MD5(x)= 00",
            "SHA1(x)= 123",
            &format!("SHA256(../x)= {}", "a".repeat(64)),
            &format!("SHA256(x)= {}", "z".repeat(64)),
        ] {
            assert!(parse_manifest(bad).is_err(), "{bad}");
        }
    }
}
