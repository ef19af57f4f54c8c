#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit, engine (fakes), real-QEMU and
# end-to-end tests. Installs what is missing first. Used by CI (.ci/run) unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh

echo "== UI bundle (embedded by vireod, so before any cargo build; browser tests use ui/node_modules)"
bash scripts/ui.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== fuzz targets compile (run them with: cargo +nightly fuzz run TARGET, from fuzz/)"
cargo check --quiet --manifest-path fuzz/Cargo.toml

echo "== build binaries (end-to-end tests run them)"
cargo build --workspace --bins --quiet

# Guest artefacts built by tests are cached here across runs (Debian packages, tiny image).
export VIREO_TEST_CACHE=${VIREO_TEST_CACHE:-/var/cache/vireo-test}
mkdir -p "$VIREO_TEST_CACHE"

echo "== tiny guest: Debian packages into the cache (daemons under test run in network namespaces without a route to the mirror)"
tiny_out=$(mktemp -d)
cargo run -q -p vireo-tinyimage --example build_tiny -- "$VIREO_TEST_CACHE/tiny" "$tiny_out" >/dev/null
rm -rf "$tiny_out"

echo "== tests"
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --workspace --no-fail-fast --profile ci
else
  cargo test --workspace --no-fail-fast
fi
