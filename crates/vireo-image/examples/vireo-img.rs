//! Stand-alone driver for the local image commands (`vireo image …` without the rest of the
//! CLI): it compiles the CLI's own `image_local` module, so both behave identically.
//! Used by `bench/convert` and for manual testing.

#[path = "../../../bin/vireo/src/image_local.rs"]
mod image_local;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "vireo-img", about = "Vireo local image tools")]
struct Cli {
    #[command(subcommand)]
    cmd: image_local::ImageLocalCmd,
}

fn main() {
    let cli = Cli::parse();
    match image_local::run(cli.cmd) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
