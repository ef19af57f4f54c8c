//! Chooses the UI bundle `vireod` embeds (`ui.rs`, via `VIREO_UI_DIST`).
//!
//! Invariant: `cargo build` works on a fresh clone. When `ui/dist/index.html` exists (after
//! `npm run build` in `ui/`, which scripts/run.sh and scripts/test.sh do), that folder is
//! embedded; otherwise a one-page placeholder in `OUT_DIR` saying how to build the UI is. The
//! source tree is never written to. Cargo re-runs this script (and so re-embeds) whenever
//! anything under `ui/dist` changes.

use std::path::PathBuf;

const PLACEHOLDER: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Vireo</title></head>\n<body><main><h1>Vireo UI not built</h1>\n<p>This vireod was compiled before the browser UI was built. Run <code>npm ci &amp;&amp; npm run build</code> in <code>ui/</code> (scripts/run.sh does this), then rebuild vireod.</p>\n<p>The REST API under <code>/v1</code> works without it.</p></main></body></html>\n";

fn main() {
    let manifest = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let dist = manifest.join("../../ui/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    println!("cargo:rerun-if-changed=build.rs");
    let chosen = if dist.join("index.html").is_file() {
        dist.canonicalize().unwrap_or(dist)
    } else {
        let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
            .join("ui-placeholder");
        std::fs::create_dir_all(&out).expect("creating the UI placeholder folder in OUT_DIR");
        std::fs::write(out.join("index.html"), PLACEHOLDER).expect("writing the UI placeholder");
        out
    };
    println!("cargo:rustc-env=VIREO_UI_DIST={}", chosen.display());
}
