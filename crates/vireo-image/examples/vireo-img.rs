//! Development driver for the image engine (the real CLI is `vireo image …`).
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let r = match args.get(1).map(String::as_str) {
        Some("create") => {
            let fmt = vireo_image::Format::from_qemu_name(&args[2]).expect("format");
            let size: u64 = args[4].parse().expect("size");
            vireo_image::ops::create(
                std::path::Path::new(&args[3]),
                fmt,
                size,
                args.get(5).map(std::path::Path::new),
            )
        }
        _ => {
            eprintln!("usage: vireo-img create FMT PATH SIZE [BACKING]");
            std::process::exit(2);
        }
    };
    if let Err(e) = r {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
