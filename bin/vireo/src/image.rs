//! `vireo image …`: daemon-side images (build, list, show, delete) next to the local
//! disk-image tools of image_local.rs (info, convert, create, check, compare, map), which
//! need no daemon and are flattened into the same noun.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use vireo_api::images::BuildImageRequest;
use vireo_types::Name;

use crate::output::OutputFormat;
use crate::{image_local, parse_duration, print, progress, GlobalArgs};

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Build an image on the daemon with a builder (`tiny`: the built-in minimal guest;
    /// `tiny-disk`: the same on a bootable disk; `debian`: a Debian cloud image).
    Build {
        builder: Name,
        /// Name to register the image under [default: the builder's name]
        #[arg(long)]
        name: Option<Name>,
        /// `debian`: the Debian release to install [default: bookworm]
        #[arg(long)]
        release: Option<String>,
        /// `debian`: virtual disk size, e.g. 4GiB [default: 4GiB]
        #[arg(long, value_parser = crate::vm::parse_mib, value_name = "SIZE")]
        size: Option<u64>,
        /// `debian`: extra Debian packages to install (comma-separated or repeated)
        #[arg(long, value_delimiter = ',', value_name = "PKG,…")]
        packages: Vec<String>,
        /// Return at once with the operation instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the build.
        #[arg(long = "wait-timeout", value_parser = parse_duration, default_value = "30m")]
        wait_timeout: Duration,
    },
    /// List the daemon's images.
    #[command(alias = "ls")]
    List,
    /// Show one of the daemon's images.
    Show { name: Name },
    /// Delete one of the daemon's images.
    #[command(alias = "rm")]
    Delete {
        name: Name,
        #[arg(long)]
        no_wait: bool,
        #[arg(long = "wait-timeout", value_parser = parse_duration, default_value = "10m")]
        wait_timeout: Duration,
    },
    /// Import an OVA package (VMware, VirtualBox…) as a new VM — the package is verified, its
    /// disks are converted to qcow2 and its virtual hardware is mapped — or any other disk
    /// image (qcow2, raw, VMDK, VHD, VHDX; recognised by content) as a new image.
    Import {
        /// The .ova package or disk image file.
        file: std::path::PathBuf,
        /// Name of the new VM or image [default: derived from the file name]
        #[arg(long)]
        name: Option<Name>,
        /// Start the VM once imported (OVA packages).
        #[arg(long)]
        start: bool,
        /// Firmware VMs made from an imported disk image boot with [default: bios]
        #[arg(long, value_enum)]
        firmware: Option<crate::vm::FirmwareArg>,
        #[arg(long)]
        no_wait: bool,
        #[arg(long = "wait-timeout", value_parser = parse_duration, default_value = "60m")]
        wait_timeout: Duration,
    },
    /// Download a disk image as a qcow2 file.
    Export {
        name: Name,
        /// Where to write the .qcow2 file.
        out: std::path::PathBuf,
    },
    #[command(flatten)]
    Local(image_local::ImageLocalCmd),
}

/// Whether `path` is meant as an OVA package: named `*.ova`, or starting like a tar archive
/// ("ustar" at offset 257). The daemon checks the content either way.
fn looks_like_ova(path: &std::path::Path) -> anyhow::Result<bool> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("ova"))
    {
        return Ok(true);
    }
    use std::io::Read;
    let mut head = [0u8; 262];
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let n = f.read(&mut head).unwrap_or(0);
    Ok(n == head.len() && &head[257..262] == b"ustar")
}

/// A VM name from a file name: lowercase, other characters become '-', starts with a letter.
pub fn name_from_file(path: &std::path::Path) -> anyhow::Result<Name> {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let mut out = String::new();
    for c in stem.chars() {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if !(c == '-' && (out.is_empty() || out.ends_with('-'))) {
            out.push(c);
        }
    }
    let mut out: String = out.trim_matches('-').chars().take(63).collect();
    if !out.starts_with(|c: char| c.is_ascii_lowercase()) {
        out = format!("vm-{out}").chars().take(63).collect();
    }
    let out = out.trim_end_matches('-').to_string();
    Name::new(out.clone()).with_context(|| {
        format!(
            "cannot derive a VM name from {}; pass --name",
            path.display()
        )
    })
}

pub async fn run(global: &GlobalArgs, cmd: ImageCmd) -> anyhow::Result<u8> {
    let format = global.output();
    match cmd {
        ImageCmd::Build {
            builder,
            name,
            release,
            size,
            packages,
            no_wait,
            wait_timeout,
        } => {
            let client = global.client()?;
            let registered = name.clone().unwrap_or_else(|| builder.clone());
            let request = BuildImageRequest {
                builder: builder.clone(),
                name,
                release,
                size_mib: size,
                packages,
            };
            let op = client.build_image(&request).await.with_context(|| {
                format!("cannot build image {registered} with builder {builder}")
            })?;
            if no_wait {
                print(format, &op)?;
                return Ok(0);
            }
            progress::wait_operation(&client, &op, wait_timeout)
                .await
                .with_context(|| {
                    format!("cannot build image {registered} with builder {builder}")
                })?;
            let image = client
                .get_image(registered.as_str())
                .await
                .with_context(|| format!("cannot read image {registered} back"))?;
            print(format, &image)?;
            Ok(0)
        }
        ImageCmd::List => {
            let images = global
                .client()?
                .list_images()
                .await
                .context("cannot list images")?;
            print(format, images.as_slice())?;
            Ok(0)
        }
        ImageCmd::Show { name } => {
            let image = global
                .client()?
                .get_image(name.as_str())
                .await
                .with_context(|| format!("cannot show image {name}"))?;
            print(format, &image)?;
            Ok(0)
        }
        ImageCmd::Delete {
            name,
            no_wait,
            wait_timeout,
        } => {
            let client = global.client()?;
            let op = client
                .delete_image(name.as_str())
                .await
                .with_context(|| format!("cannot delete image {name}"))?;
            if no_wait {
                print(format, &op)?;
                return Ok(0);
            }
            let op = progress::wait_operation(&client, &op, wait_timeout)
                .await
                .with_context(|| format!("cannot delete image {name}"))?;
            match format {
                OutputFormat::Table => println!("Image {name} deleted."),
                _ => print(format, &op)?,
            }
            Ok(0)
        }
        // main() runs these before starting the async runtime; this arm only keeps the match
        // total should that ever change.
        ImageCmd::Export { name, out } => {
            let client = global.client()?;
            client
                .export_image(name.as_str(), &out)
                .await
                .with_context(|| format!("cannot export image {name} to {}", out.display()))?;
            if format == OutputFormat::Table {
                println!("Image {name} written to {}.", out.display());
            }
            Ok(0)
        }
        ImageCmd::Import {
            file,
            name,
            start,
            firmware,
            no_wait,
            wait_timeout,
        } => {
            let client = global.client()?;
            let name = match name {
                Some(n) => n,
                None => name_from_file(&file)?,
            };
            if !looks_like_ova(&file)? {
                let what = || format!("cannot import {} as image {name}", file.display());
                let op = client
                    .import_image(
                        &file,
                        name.as_str(),
                        firmware.map(vireo_types::Firmware::from),
                    )
                    .await
                    .with_context(what)?;
                if no_wait {
                    print(format, &op)?;
                    return Ok(0);
                }
                progress::wait_operation(&client, &op, wait_timeout)
                    .await
                    .with_context(what)?;
                let image = client.get_image(name.as_str()).await.with_context(what)?;
                print(format, &image)?;
                return Ok(0);
            }
            let op = client
                .import_ova(&file, name.as_str(), start)
                .await
                .with_context(|| format!("cannot import {} as VM {name}", file.display()))?;
            if no_wait {
                print(format, &op)?;
                return Ok(0);
            }
            progress::wait_operation(&client, &op, wait_timeout)
                .await
                .with_context(|| format!("cannot import {} as VM {name}", file.display()))?;
            let vm = client
                .get_vm(name.as_str())
                .await
                .with_context(|| format!("cannot read VM {name} back"))?;
            print(format, &vm)?;
            Ok(0)
        }
        ImageCmd::Local(cmd) => {
            let code = tokio::task::spawn_blocking(move || image_local::run(cmd))
                .await
                .context("the local image command panicked")??;
            Ok(u8::try_from(code).unwrap_or(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::name_from_file;
    use std::path::Path;

    #[test]
    fn derives_vm_names_from_files() {
        assert_eq!(
            name_from_file(Path::new("/x/Web Server 01.ova"))
                .unwrap()
                .as_str(),
            "web-server-01"
        );
        assert_eq!(
            name_from_file(Path::new("2024_backup.OVA"))
                .unwrap()
                .as_str(),
            "vm-2024-backup"
        );
        assert_eq!(
            name_from_file(Path::new("--a--.ova")).unwrap().as_str(),
            "a"
        );
    }
}
