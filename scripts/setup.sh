#!/usr/bin/env bash
# Installs what the README's commands need on a fresh machine and checks the rest.
# Rust (cargo, rustfmt, clippy), Go and Python come with the machine; Debian packages are
# installed when missing; the control plane is built from Go modules (e2e/scripts/build-bins.sh).
set -euo pipefail
step() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

missing=()
for tool in cargo go python3; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "setup: ${missing[*]} not found; install Rust (rustup), Go >= 1.26 and Python 3 first" >&2
  exit 1
fi
# The toolchain pinned by rust-toolchain.toml. The machine image ships rustup's `stable`; when
# that is the pinned version it is linked under the pinned name, so that rustup needs no
# download (this machine reaches package registries only, not the Rust distribution server).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
pinned="$(sed -n 's/^channel = "\(.*\)"$/\1/p' "$root/rust-toolchain.toml")"
if command -v rustup >/dev/null && ! rustup toolchain list | grep -q "^$pinned-"; then
  host="$(rustc +stable -vV | sed -n 's/^host: //p')"
  if [[ "$(rustc +stable --version)" == "rustc $pinned "* ]]; then
    step "linking the machine's stable toolchain as $pinned-$host"
    ln -s "$(rustc +stable --print sysroot)" "${RUSTUP_HOME:-$HOME/.rustup}/toolchains/$pinned-$host"
  else
    step "installing Rust $pinned (rust-toolchain.toml)"
    rustup toolchain install "$pinned" --profile minimal --component rustfmt,clippy
  fi
fi
cargo fmt --version >/dev/null 2>&1 || { echo "setup: rustfmt missing: rustup component add rustfmt" >&2; exit 1; }
cargo clippy --version >/dev/null 2>&1 || { echo "setup: clippy missing: rustup component add clippy" >&2; exit 1; }

# Debian packages: command -> package.
declare -A debian=([openssl]=openssl [lua5.4]=lua5.4 [curl]=curl [setsid]=util-linux [redis-server]=redis-server [ip]=iproute2 [nft]=nftables)
# Headless Chromium for the sidecar's chooser-page screenshot test; chromedriver (Selenium
# drives the browser of e2e/tests/browser_sessions.rs) and certutil (its profile trusts the
# test's CAs through an NSS database, never by ignoring certificate errors).
debian+=([chromium]=chromium [chromedriver]=chromium-driver [certutil]=libnss3-tools)
debian+=([buildah]=buildah [skopeo]=skopeo [umoci]=umoci [bwrap]=bubblewrap [jq]=jq [rsync]=rsync [file]=file [objcopy]=binutils [update-ca-certificates]=ca-certificates)
need=()
for tool in "${!debian[@]}"; do
  command -v "$tool" >/dev/null || need+=("${debian[$tool]}")
done
if ((${#need[@]})); then
  step "installing Debian packages: ${need[*]}"
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
step "tools present"

# Cargo tools `make test` runs, each pinned by version and installed with `cargo install
# --locked` into a cache outside the repository (skipped when that version is there).
tools="${SCOPEGATE_CACHE:-$HOME/.cache/scopegate}/tools"
CARGO_DENY_VERSION=0.20.2
install_tool() { # crate version
  if ! cargo install --list --root "$tools" | grep -qx "$1 v$2:"; then
    step "installing $1 $2 into $tools (a one-time build)"
    # A throwaway target dir: CARGO_TARGET_DIR is the workspace's.
    env -u CARGO_TARGET_DIR cargo install --quiet --locked --force --root "$tools" \
      --version "$2" "$1"
  fi
}
install_tool cargo-deny "$CARGO_DENY_VERSION"

# Python tools the tests use as independent peers (JOSE libraries, OAuth clients), in a venv
# outside the repository, rebuilt when the requirements change.
venv="${SCOPEGATE_CACHE:-$HOME/.cache/scopegate}/venv"
req="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/requirements-test.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ ! -x $venv/bin/python || ! -f $stamp || "$(cat "$stamp")" != "$want" ]]; then
  step "installing Python test peers into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  echo "$want" >"$stamp"
fi

# The OpenID provider the sidecar's upstream tests run as the Google stand-in (npm
# oidc-provider, pinned with its lock file), installed outside the repository.
idp="${SCOPEGATE_CACHE:-$HOME/.cache/scopegate}/idp"
idp_src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/sidecar/tests/idp"
command -v npm >/dev/null || { echo "setup: npm not found; install Node.js 20 and npm" >&2; exit 1; }
if ! cmp -s "$idp_src/package-lock.json" "$idp/package-lock.json" || [[ ! -d $idp/node_modules/oidc-provider ]]; then
  step "installing the test OpenID provider into $idp"
  mkdir -p "$idp"
  cp "$idp_src/package.json" "$idp_src/package-lock.json" "$idp/"
  (cd "$idp" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

# Swagger UI (npm swagger-ui-dist, pinned with its lock file) for the CLI's `openapi export`
# check in headless Chromium, installed outside the repository. Install scripts stay off:
# the only one is a usage-analytics ping.
swagger="${SCOPEGATE_CACHE:-$HOME/.cache/scopegate}/swagger-ui"
swagger_src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/cli/tests/swagger"
if ! cmp -s "$swagger_src/package-lock.json" "$swagger/package-lock.json" || [[ ! -f $swagger/node_modules/swagger-ui-dist/swagger-ui-bundle.js ]]; then
  step "installing Swagger UI into $swagger"
  mkdir -p "$swagger"
  cp "$swagger_src/package.json" "$swagger_src/package-lock.json" "$swagger/"
  (cd "$swagger" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
fi
