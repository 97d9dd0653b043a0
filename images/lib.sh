# shellcheck shell=bash disable=SC2034
# Settings shared by images/build.sh, images/check.sh and images/run-checks.sh. Sourced.
# Everything lives under $SCOPEGATE_CACHE so that a CI clone reuses it.
# A failing command inside $(...) fails the script too.
shopt -s inherit_errexit
IMAGES_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCOPEGATE_CACHE="${SCOPEGATE_CACHE:-$HOME/.cache/scopegate}"
# Cargo tools pinned by version, installed with `cargo install --locked` on first use.
IMAGES_TOOLS="$SCOPEGATE_CACHE/tools"
CARGO_AUDITABLE_VERSION=0.7.7
CARGO_CYCLONEDX_VERSION=0.5.9
# The release build's own target dir, source snapshot and output (archives, SBOMs, notes).
IMAGES_TARGET_DIR="${IMAGES_TARGET_DIR:-$SCOPEGATE_CACHE/images-target}"
IMAGES_SRC="${IMAGES_SRC:-$SCOPEGATE_CACHE/images-src}"
IMAGES_OUT="${IMAGES_OUT:-$SCOPEGATE_CACHE/images}"
IMAGES_TRIPLE=x86_64-unknown-linux-gnu
# Binary name -> Containerfile stem and default repository (charts/scopegate/values.yaml).
IMAGES_BINARIES=(scopegate-operator scopegate-sidecar)
declare -A IMAGES_COMPONENT=([scopegate-operator]=operator [scopegate-sidecar]=sidecar)
# The rootless user of both images (the chart's runAsUser).
IMAGES_UID=65532

images_step() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
images_die() { printf 'images: %s\n' "$*" >&2; exit 1; }

images_require() {
  local tool missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  ((${#missing[@]} == 0)) || images_die "${missing[*]} not found: run scripts/setup.sh (Debian packages)"
}
