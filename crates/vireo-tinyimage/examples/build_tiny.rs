//! Builds the tiny image and prints its description and the build time.
//!
//! `cargo run -p vireo-tinyimage --example build_tiny -- [CACHE_DIR] [OUT_DIR]`
//! (defaults: `/var/cache/vireo-test/tiny` and `./tiny-out`).

use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let cache_dir = args
        .next()
        .unwrap_or_else(|| "/var/cache/vireo-test/tiny".into());
    let out_dir = args.next().unwrap_or_else(|| "tiny-out".into());
    let progress = |line: &str| eprintln!("  {line}");
    let started = Instant::now();
    let image = vireo_tinyimage::build(&vireo_tinyimage::BuildOptions {
        cache_dir: cache_dir.into(),
        out_dir: out_dir.into(),
        progress: Some(&progress),
    })?;
    let elapsed = started.elapsed();
    println!("{}", serde_json::to_string_pretty(&image)?);
    eprintln!(
        "built in {:.2} s; initrd {} KiB",
        elapsed.as_secs_f64(),
        image.initrd_bytes / 1024
    );
    Ok(())
}
