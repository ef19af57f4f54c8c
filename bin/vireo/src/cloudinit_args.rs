//! cloud-init and Ignition options of `vm create` and `vm edit`: files are read here and sent
//! as text; the daemon validates them (YAML/JSON, sizes, keys).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use vireo_api::vms::CloudInitConfig;

/// Largest file the CLI reads for these options (the daemon allows 1 MiB; a little slack
/// lets it report the precise error).
const MAX_FILE: u64 = 2 << 20;

#[derive(Debug, Clone, Default, Args)]
pub struct CloudInitArgs {
    /// cloud-init user-data file (#cloud-config YAML, a script, MIME multipart…).
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<PathBuf>,
    /// File of SSH public keys for the default user, one per line (repeatable).
    #[arg(long = "ssh-key", value_name = "FILE")]
    pub ssh_keys: Vec<PathBuf>,
    /// Guest host name [default: the VM's name]
    #[arg(long)]
    pub hostname: Option<String>,
    /// cloud-init network-config file (v1/v2) [default: DHCP on every NIC]
    #[arg(long, value_name = "FILE")]
    pub network_config: Option<PathBuf>,
    /// cloud-init vendor-data file.
    #[arg(long, value_name = "FILE")]
    pub vendor_data: Option<PathBuf>,
}

pub fn read_text(path: &Path, what: &str) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read {what} file {}", path.display()))?;
    if meta.len() > MAX_FILE {
        anyhow::bail!(
            "{what} file {} is {} bytes; at most 1 MiB is accepted",
            path.display(),
            meta.len()
        );
    }
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {what} file {} as UTF-8 text", path.display()))
}

impl CloudInitArgs {
    fn any(&self) -> bool {
        self.user_data.is_some()
            || !self.ssh_keys.is_empty()
            || self.hostname.is_some()
            || self.network_config.is_some()
            || self.vendor_data.is_some()
    }

    /// The settings, when any option was given.
    pub fn config(&self) -> anyhow::Result<Option<CloudInitConfig>> {
        if !self.any() {
            return Ok(None);
        }
        let opt =
            |p: &Option<PathBuf>, what: &str| p.as_deref().map(|p| read_text(p, what)).transpose();
        let mut keys = Vec::new();
        for f in &self.ssh_keys {
            let text = read_text(f, "SSH key")?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
        }
        Ok(Some(CloudInitConfig {
            user_data: opt(&self.user_data, "user-data")?,
            ssh_authorized_keys: keys,
            hostname: self.hostname.clone(),
            network_config: opt(&self.network_config, "network-config")?,
            vendor_data: opt(&self.vendor_data, "vendor-data")?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_files_and_keys() {
        let t = tempfile::tempdir().unwrap();
        let ud = t.path().join("ud");
        std::fs::write(&ud, "#cloud-config\nhostname: x\n").unwrap();
        let keys = t.path().join("keys");
        std::fs::write(&keys, "# mine\nssh-ed25519 AAAA a@b\n\nssh-rsa BBBB c@d\n").unwrap();
        let args = CloudInitArgs {
            user_data: Some(ud),
            ssh_keys: vec![keys],
            ..Default::default()
        };
        let cfg = args.config().unwrap().unwrap();
        assert_eq!(
            cfg.ssh_authorized_keys,
            ["ssh-ed25519 AAAA a@b", "ssh-rsa BBBB c@d"]
        );
        assert!(cfg.user_data.unwrap().starts_with("#cloud-config"));
        assert!(CloudInitArgs::default().config().unwrap().is_none());
        let missing = CloudInitArgs {
            user_data: Some(t.path().join("nope")),
            ..Default::default()
        };
        assert!(missing.config().is_err());
    }
}
