//! GRUB for the tiny disk: the shared `grub.cfg` (pure) and the two boot images made with
//! `grub-mkimage` from Debian's `grub-pc-bin` (i386-pc) and `grub-efi-amd64-bin`
//! (x86_64-efi) module directories.
//!
//! Invariants:
//! - Both images are self-contained: every module the configuration needs is built in, so the
//!   disk carries no module directory and nothing is loaded at boot but `grub.cfg`, the
//!   kernel and the initramfs.
//! - Both images use the same prefix directory on the EFI system partition, so they read the
//!   same `grub.cfg`: the EFI image finds the partition it was loaded from, the BIOS image
//!   names it relative to the boot drive (`(,gpt2)`).
//! - `grub-mkimage` output depends only on its inputs (checked by the disk tests), so the disk
//!   is reproducible for a given GRUB package.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Modules built into both images: GPT and FAT access, the `linux`/`initrd`/`boot` commands,
/// normal mode (reads `grub.cfg`, runs menu entries) and the serial terminal.
const COMMON_MODULES: [&str; 8] = [
    "part_gpt", "fat", "normal", "linux", "boot", "serial", "terminal", "echo",
];
/// BIOS disk access, which the EFI image gets from the firmware instead.
const BIOS_ONLY_MODULES: [&str; 1] = ["biosdisk"];

/// GRUB's platform directories under the library directory (`/usr/lib/grub`).
pub const BIOS_PLATFORM: &str = "i386-pc";
pub const EFI_PLATFORM: &str = "x86_64-efi";

#[derive(Debug, thiserror::Error)]
pub enum GrubError {
    #[error("GRUB platform directory {dir} is missing (install the Debian package {package})")]
    MissingPlatform { dir: PathBuf, package: &'static str },
    #[error("cannot run {program} (install the Debian package grub-common)")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{argv} failed ({status}): {stderr}")]
    Failed {
        argv: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel command line {0:?} has characters grub.cfg would interpret")]
    UnsafeCmdline(String),
}

/// What the BIOS and UEFI boot paths need from GRUB.
#[derive(Debug, Clone)]
pub struct GrubImages {
    /// `boot.img`: the MBR boot sector template.
    pub boot_img: Vec<u8>,
    /// `core.img` for i386-pc, unpatched.
    pub core_img: Vec<u8>,
    /// The x86_64-efi application for `\EFI\BOOT\BOOTX64.EFI`.
    pub efi_app: Vec<u8>,
    /// `grub-mkimage --version`, e.g. `grub-mkimage (GRUB) 2.06-13+deb12u2`.
    pub version: String,
}

/// Where the configuration, kernel and initramfs live on the EFI system partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootFiles<'a> {
    /// Directory holding `grub.cfg` (GRUB's prefix), absolute, e.g. `/vireo`.
    pub prefix_dir: &'a str,
    pub kernel: &'a str,
    pub initrd: &'a str,
    /// GPT partition number of the EFI system partition (1-based).
    pub esp_partition: u32,
}

/// The `grub.cfg` both platforms read: serial terminal, no menu, boot at once; prints one
/// line naming the platform so a console log shows which firmware path booted.
///
/// Under OVMF without a display device GRUB's `linux` prints "error: no suitable video mode
/// found. Booting in blind mode" and boots normally: the kernel uses the serial console, and
/// no `gfxpayload` setting avoids the message when the firmware has no graphics output.
pub fn config(files: &BootFiles, cmdline: &str) -> Result<String, GrubError> {
    // GRUB's script syntax would expand or split these; the tiny cmdline never has them.
    let unsafe_char = |c: char| "\"'\\$;&|<>{}#`\n\r\t".contains(c) || c.is_control();
    if cmdline.chars().any(unsafe_char) {
        return Err(GrubError::UnsafeCmdline(cmdline.to_owned()));
    }
    Ok(format!(
        "\
# Vireo tiny guest: shared by the BIOS (i386-pc) and UEFI (x86_64-efi) GRUB images.
serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1
terminal_input serial
terminal_output serial
set timeout=0
set timeout_style=hidden
set default=0

menuentry \"Vireo tiny guest\" {{
\techo \"vireo-tiny-disk: GRUB (${{grub_platform}}) loading {kernel}\"
\tlinux {kernel} {cmdline}
\tinitrd {initrd}
}}
",
        kernel = files.kernel,
        initrd = files.initrd,
    ))
}

/// Builds both images with `grub-mkimage` from the platform directories in `lib_dir`.
pub fn make_images(lib_dir: &Path, files: &BootFiles) -> Result<GrubImages, GrubError> {
    let bios_dir = platform_dir(lib_dir, BIOS_PLATFORM, "grub-pc-bin")?;
    let efi_dir = platform_dir(lib_dir, EFI_PLATFORM, "grub-efi-amd64-bin")?;
    let work = tempfile::tempdir().map_err(|source| GrubError::Io {
        path: std::env::temp_dir(),
        source,
    })?;

    let bios_modules: Vec<&str> = BIOS_ONLY_MODULES
        .iter()
        .chain(&COMMON_MODULES)
        .copied()
        .collect();
    let bios_prefix = format!("(,gpt{}){}", files.esp_partition, files.prefix_dir);
    let core_img = mkimage(
        &bios_dir,
        BIOS_PLATFORM,
        &bios_prefix,
        &bios_modules,
        &work.path().join("core.img"),
    )?;
    let efi_app = mkimage(
        &efi_dir,
        EFI_PLATFORM,
        files.prefix_dir,
        &COMMON_MODULES,
        &work.path().join("grubx64.efi"),
    )?;
    let boot_path = bios_dir.join("boot.img");
    let boot_img = std::fs::read(&boot_path).map_err(|source| GrubError::Io {
        path: boot_path,
        source,
    })?;
    let version = run(Command::new("grub-mkimage").arg("--version"))?;
    Ok(GrubImages {
        boot_img,
        core_img,
        efi_app,
        version: String::from_utf8_lossy(&version).trim().to_owned(),
    })
}

fn platform_dir(
    lib_dir: &Path,
    platform: &str,
    package: &'static str,
) -> Result<PathBuf, GrubError> {
    let dir = lib_dir.join(platform);
    if dir.join("moddep.lst").is_file() {
        Ok(dir)
    } else {
        Err(GrubError::MissingPlatform { dir, package })
    }
}

fn mkimage(
    dir: &Path,
    format: &str,
    prefix: &str,
    modules: &[&str],
    out: &Path,
) -> Result<Vec<u8>, GrubError> {
    let mut cmd = Command::new("grub-mkimage");
    cmd.arg("--directory")
        .arg(dir)
        .args(["--format", format, "--prefix", prefix, "--output"])
        .arg(out)
        .args(modules);
    run(&mut cmd)?;
    std::fs::read(out).map_err(|source| GrubError::Io {
        path: out.to_owned(),
        source,
    })
}

fn run(cmd: &mut Command) -> Result<Vec<u8>, GrubError> {
    tracing::debug!(?cmd, "running");
    let output = cmd
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| GrubError::Spawn {
            program: "grub-mkimage",
            source,
        })?;
    if !output.status.success() {
        return Err(GrubError::Failed {
            argv: format!("{cmd:?}"),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILES: BootFiles = BootFiles {
        prefix_dir: "/vireo",
        kernel: "/vireo/vmlinuz",
        initrd: "/vireo/initrd.img",
        esp_partition: 2,
    };

    #[test]
    fn config_matches_golden() {
        let cfg = config(&FILES, "console=ttyS0 quiet panic=-1").unwrap();
        assert_eq!(cfg, include_str!("golden/grub.cfg"));
    }

    #[test]
    fn config_refuses_script_syntax_in_the_cmdline() {
        for bad in ["a;b", "x=$y", "q=\"", "a\nb", "{x}", "a\\b"] {
            assert!(
                matches!(config(&FILES, bad), Err(GrubError::UnsafeCmdline(_))),
                "{bad:?}"
            );
        }
        assert!(config(&FILES, "console=ttyS0,115200n8 root=/dev/vda1 ro").is_ok());
    }

    #[test]
    fn missing_platform_names_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let err = make_images(dir.path(), &FILES).unwrap_err();
        assert!(
            matches!(
                &err,
                GrubError::MissingPlatform {
                    package: "grub-pc-bin",
                    ..
                }
            ),
            "{err}"
        );
    }

    /// Needs grub-common, grub-pc-bin and grub-efi-amd64-bin (build dependencies of the disk).
    #[test]
    fn images_are_reproducible_and_shaped_as_expected() {
        let lib = Path::new(crate::disk::GRUB_LIB_DIR);
        let a = make_images(lib, &FILES).unwrap();
        let b = make_images(lib, &FILES).unwrap();
        assert_eq!(a.core_img, b.core_img);
        assert_eq!(a.efi_app, b.efi_app);
        assert!(a.version.contains("GRUB"), "{}", a.version);
        assert_eq!(a.boot_img.len(), 512);
        assert_eq!(&a.efi_app[..2], b"MZ");
        // The EFI image stores its prefix verbatim (the i386-pc one is LZMA-compressed).
        let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        assert!(has(&a.efi_app, b"/vireo\0"));
        assert!(a.core_img.len() > 512 && a.core_img.len() < 1 << 20);
    }
}
