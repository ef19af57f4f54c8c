//! Writes a NoCloud seed ISO for quick inspection:
//! `cargo run -p vireo-cloudinit --example seed-iso -- OUT.iso HOSTNAME [USER-DATA-FILE]`.

use vireo_cloudinit::{render_seed, IsoTimestamp, SeedInput};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: seed-iso OUT.iso HOSTNAME [USER-DATA-FILE]".into());
    }
    let user_data = match args.get(3) {
        Some(path) => Some(std::fs::read_to_string(path)?),
        None => None,
    };
    let input = SeedInput {
        instance_id: format!("iid-{}", args[2]),
        hostname: args[2].clone(),
        user_data,
        ..SeedInput::default()
    };
    let files = render_seed(&input)?;
    let iso = files.to_iso(IsoTimestamp::from_unix(1_700_000_000)?)?;
    std::fs::write(&args[1], iso)?;
    Ok(())
}
