//! SSH public keys as cloud-init's `ssh_authorized_keys` takes them: one `authorized_keys`
//! line each, `[options] keytype base64-blob [comment]`.
//!
//! Invariant: an accepted key is one line of at most [`MAX_SSH_KEY_BYTES`] whose blob is valid
//! base64 and starts with the SSH wire encoding (u32 length + name) of the key type written
//! before it, so typos, truncated pastes and private keys are caught before a guest boots.

use base64::Engine as _;

/// Longest accepted key line (a 16384-bit RSA key is about 2.8 KiB; certificates are larger).
pub const MAX_SSH_KEY_BYTES: usize = 16 * 1024;

/// Key types OpenSSH accepts in `authorized_keys`, including certificate forms.
const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ssh-dss",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-ed25519-cert-v01@openssh.com",
    "ssh-rsa-cert-v01@openssh.com",
    "ssh-dss-cert-v01@openssh.com",
    "ecdsa-sha2-nistp256-cert-v01@openssh.com",
    "ecdsa-sha2-nistp384-cert-v01@openssh.com",
    "ecdsa-sha2-nistp521-cert-v01@openssh.com",
    "sk-ssh-ed25519-cert-v01@openssh.com",
    "sk-ecdsa-sha2-nistp256-cert-v01@openssh.com",
];

/// Why a string is not an SSH public key line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshKeyError {
    #[error("key is empty")]
    Empty,
    #[error("key spans several lines (give one key per entry)")]
    MultiLine,
    #[error("key is {size} bytes, more than {MAX_SSH_KEY_BYTES}")]
    TooLong { size: usize },
    #[error("looks like a private key; give the public key (the .pub file)")]
    PrivateKey,
    #[error("no known key type (ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256, …) followed by a base64 key blob")]
    NotAKey,
}

/// Validates one key line; returns it with surrounding whitespace removed.
pub fn validate_ssh_key(line: &str) -> Result<String, SshKeyError> {
    let key = line.trim();
    if key.is_empty() {
        return Err(SshKeyError::Empty);
    }
    if key.len() > MAX_SSH_KEY_BYTES {
        return Err(SshKeyError::TooLong { size: key.len() });
    }
    if key.contains("PRIVATE KEY") {
        return Err(SshKeyError::PrivateKey);
    }
    if key.contains(['\n', '\r']) {
        return Err(SshKeyError::MultiLine);
    }
    // Options before the key type may contain quoted spaces, so scan every token pair.
    let tokens: Vec<&str> = key.split_ascii_whitespace().collect();
    let found = tokens
        .windows(2)
        .any(|pair| KEY_TYPES.contains(&pair[0]) && blob_matches_type(pair[1], pair[0]));
    if found {
        Ok(key.to_string())
    } else {
        Err(SshKeyError::NotAKey)
    }
}

fn blob_matches_type(blob: &str, key_type: &str) -> bool {
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(blob) else {
        return false;
    };
    let Some(len) = bytes.get(..4) else {
        return false;
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    len == key_type.len() && bytes.get(4..4 + len) == Some(key_type.as_bytes())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A syntactically valid key line of `key_type` (the key material is a fixed pattern).
    pub(crate) fn fake_key(key_type: &str, comment: &str) -> String {
        let mut blob = (key_type.len() as u32).to_be_bytes().to_vec();
        blob.extend_from_slice(key_type.as_bytes());
        blob.extend_from_slice(&32u32.to_be_bytes());
        blob.extend((0u8..32).map(|i| i.wrapping_mul(37)));
        let b64 = base64::engine::general_purpose::STANDARD.encode(blob);
        format!("{key_type} {b64} {comment}")
    }

    #[test]
    fn accepts_keys_with_options_and_comments() {
        let k = fake_key("ssh-ed25519", "alice@laptop");
        assert_eq!(validate_ssh_key(&format!("  {k}\n")).unwrap(), k);
        let with_opts = format!("no-pty,command=\"echo a b\" {k}");
        assert!(validate_ssh_key(&with_opts).is_ok());
        assert!(validate_ssh_key(&fake_key("ecdsa-sha2-nistp256", "")).is_ok());
    }

    #[test]
    fn rejects_non_keys() {
        let k = fake_key("ssh-ed25519", "x");
        assert_eq!(validate_ssh_key("   "), Err(SshKeyError::Empty));
        assert_eq!(
            validate_ssh_key(&format!("{k}\n{k}")),
            Err(SshKeyError::MultiLine)
        );
        // Type and blob disagree.
        let swapped = k.replacen("ssh-ed25519", "ssh-rsa", 1);
        assert_eq!(validate_ssh_key(&swapped), Err(SshKeyError::NotAKey));
        // Truncated paste.
        assert_eq!(validate_ssh_key(&k[..30]), Err(SshKeyError::NotAKey));
        assert_eq!(
            validate_ssh_key("-----BEGIN OPENSSH PRIVATE KEY-----"),
            Err(SshKeyError::PrivateKey)
        );
        assert_eq!(validate_ssh_key("hello world"), Err(SshKeyError::NotAKey));
    }
}
