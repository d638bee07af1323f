#!/usr/bin/env bash
# Runs the api crate's fuzz targets (the GraphQL request entry) for a bounded
# time each (default 60 s); graph/fuzz/fuzz.sh does the work.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
exec "$here/../../graph/fuzz/fuzz.sh" "${1:-60}" "$here/.."
