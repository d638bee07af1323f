#!/usr/bin/env bash
# Runs a crate's fuzz targets, each for a bounded time (default 60 s;
# `fuzz.sh 300` for five minutes), from the small checked-in seed corpus.
# The crate is this one (graph) unless a crate directory is given second
# (api/fuzz/fuzz.sh passes its own).
# The working corpus lives under target/ (not committed); a crash is saved in
# fuzz/artifacts/ and should become a regression test in the crate.
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain, or
# stable with RUSTC_BOOTSTRAP=1 (set here when no nightly is installed).
set -euo pipefail
seconds=${1:-60}
crate=$(cd "${2:-$(dirname "${BASH_SOURCE[0]}")/..}" && pwd)
cd "$crate"
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi
for target in $(cargo "${toolchain[@]}" fuzz list --fuzz-dir fuzz); do
  corpus="$crate/../target/fuzz-corpus/$(basename "$crate")/$target"
  mkdir -p "$corpus"
  echo "--- fuzzing $target for ${seconds}s"
  cargo "${toolchain[@]}" fuzz run --fuzz-dir fuzz "$target" "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -max_len=8192 -timeout=10
done
