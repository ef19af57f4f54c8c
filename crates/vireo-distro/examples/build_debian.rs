//! Builds the Debian image outside the daemon and prints the timing:
//! `cargo run -p vireo-distro --example build_debian -- OUT_DIR [CACHE_DIR]`
//! (as root; CACHE_DIR defaults to `/var/cache/vireo-test/debian`).

use std::path::PathBuf;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or_else(|| anyhow::anyhow!("usage: build_debian OUT_DIR [CACHE_DIR]"))?,
    );
    let cache = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/vireo-test/debian"));
    let started = Instant::now();
    let progress = |line: &str| eprintln!("[{:6.1}s] {line}", started.elapsed().as_secs_f64());
    let mut opts = vireo_distro::BuildOptions::new(cache, out);
    opts.progress = Some(&progress);
    let image = vireo_distro::build_debian(&opts)?;
    println!("{}", serde_json::to_string_pretty(&image)?);
    eprintln!("total {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
