# Shared settings for the project's scripts; sourced, not run.
#
# DATASTREAM_TOOLS   where test tools (Python venv, …) are installed; default ~/.cache/datastream
# CARGO_TARGET_DIR   one build directory shared by every checkout; default $DATASTREAM_TOOLS/target
# CARGO_INCREMENTAL  default 0: the scripts build each checkout once, so incremental caches (tens
#                    of GB for the test binaries of several checkouts) would only fill the disk

set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DATASTREAM_TOOLS="${DATASTREAM_TOOLS:-$HOME/.cache/datastream}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$DATASTREAM_TOOLS/target}"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export DATASTREAM_TEST_VENV="$DATASTREAM_TOOLS/venv"
mkdir -p "$DATASTREAM_TOOLS"

step() { printf '\n==> %s\n' "$*"; }

# need_apt PKG...: installs the Debian packages that are missing (apt-get update once first).
APT_UPDATED=0
need_apt() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  step "apt-get install ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ "$APT_UPDATED" -eq 0 ]; then
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
    APT_UPDATED=1
  fi
  local log="$DATASTREAM_TOOLS/apt.log"
  if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    return 1
  fi
}
