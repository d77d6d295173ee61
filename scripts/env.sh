# Shared settings for the project's scripts; sourced, not run.
#
# DATASTREAM_TOOLS   where test tools (Python venv, …) are installed; default ~/.cache/datastream
# CARGO_TARGET_DIR   one build directory shared by every checkout; default $DATASTREAM_TOOLS/target

set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DATASTREAM_TOOLS="${DATASTREAM_TOOLS:-$HOME/.cache/datastream}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$DATASTREAM_TOOLS/target}"
export DATASTREAM_TEST_VENV="$DATASTREAM_TOOLS/venv"
mkdir -p "$DATASTREAM_TOOLS"

step() { printf '\n==> %s\n' "$*"; }
