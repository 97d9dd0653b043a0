#!/usr/bin/env bash
# Builds the release images of scopegate-operator and scopegate-sidecar without a Docker daemon:
#   1. static glibc binaries (crt-static, explicit --target) with the dependency list embedded
#      by `cargo auditable`, built from a snapshot of the sources in a private mount namespace
#      where the snapshot, target dir, CARGO_HOME, toolchain and cargo tools sit at fixed paths
#      under /scopegate, so that the bytes depend neither on where the checkout lives nor on
#      $HOME, $SCOPEGATE_CACHE or $CARGO_HOME;
#   2. FROM-scratch OCI images built by buildah as root with vfs storage, fixed timestamps and
#      no history, written as oci-archive files; each image is built twice in fresh storage
#      and the two digests must agree;
#   3. a CycloneDX SBOM per image, SHA256SUMS, RELEASE-NOTES.md and release.json.
#
#   images/build.sh [--rev REV] [--out DIR]
#
# Without --rev the working tree is built (tracked and untracked, not ignored files); with it,
# the commit REV. Output goes to $SCOPEGATE_CACHE/images unless --out or IMAGES_OUT says.
set -euo pipefail
# shellcheck source=images/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

rev=""
while (($#)); do
  case $1 in
    --rev) rev=$2; shift 2 ;;
    --out) IMAGES_OUT=$2; shift 2 ;;
    *) images_die "unknown argument $1 (usage: images/build.sh [--rev REV] [--out DIR])" ;;
  esac
done
started=$SECONDS
images_require buildah cargo rustc file git jq ldd readelf rsync sha256sum dpkg-query unshare mount
[[ $(id -u) -eq 0 ]] || images_die "buildah runs as root here (vfs storage, no daemon); run as root"
root="$IMAGES_ROOT"
here="$root/images"
mkdir -p "$IMAGES_OUT" "$IMAGES_TOOLS"
IMAGES_OUT="$(cd "$IMAGES_OUT" && pwd)"

# --- cargo tools, pinned --------------------------------------------------------------------
install_tool() { # crate version
  if ! cargo install --list --root "$IMAGES_TOOLS" | grep -qx "$1 v$2:"; then
    images_step "installing $1 $2 into $IMAGES_TOOLS"
    # A throwaway target dir: the Makefile's CARGO_TARGET_DIR is for the workspace.
    env -u CARGO_TARGET_DIR cargo install --quiet --locked --force --root "$IMAGES_TOOLS" \
      --version "$2" "$1"
  fi
}
install_tool cargo-auditable "$CARGO_AUDITABLE_VERSION"
install_tool cargo-cyclonedx "$CARGO_CYCLONEDX_VERSION"
export PATH="$IMAGES_TOOLS/bin:$PATH"

# --- source snapshot ------------------------------------------------------------------------
commit="$(git -C "$root" rev-parse --verify "${rev:-HEAD}^{commit}")"
revision=$commit
# The snapshot's staging copy and the buildah stores, removed however the script ends.
tmp="$(mktemp -d "${TMPDIR:-/tmp}/scopegate-images-build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
stage="$tmp/src"
mkdir "$stage"
if [[ -n $rev ]]; then
  git -C "$root" archive --format=tar "$commit" | tar -x -C "$stage"
else
  [[ -z "$(git -C "$root" status --porcelain --untracked-files=normal)" ]] || revision="$commit-dirty"
  (cd "$root" && git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [[ -e $f || -L $f ]] && printf '%s\0' "$f"; done \
    | rsync -a --from0 --files-from=- ./ "$stage/")
fi
# Only changed files get a new mtime, so cargo rebuilds only what changed.
rsync -rlp --checksum --delete "$stage/" "$IMAGES_SRC/"
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct "$commit")}"
created="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
images_step "sources of $revision (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH, $created) in $IMAGES_SRC"

# --- static binaries, built at fixed paths --------------------------------------------------
# cargo sees only fixed paths, whatever $HOME, $SCOPEGATE_CACHE or $CARGO_HOME are: each cargo
# run happens in a private mount namespace (unshare --mount; the mounts vanish with it) where a
# tmpfs on /scopegate carries bind mounts of the source snapshot (/scopegate/src), the target
# dir (/scopegate/target), $CARGO_HOME with the registry sources (/scopegate/cargo), the Rust
# toolchain's sysroot (/scopegate/toolchain, read-only) and the pinned cargo tools
# (/scopegate/tools, read-only), in a clean environment (HOME, PATH and CARGO_HOME fixed too).
# RUSTFLAGS name only those paths, and cargo hashes RUSTFLAGS into the workspace crates' object
# file names (which ThinLTO's promoted symbols carry), so the bytes do not depend on the host's.
fixed=/scopegate
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
mkdir -p "$cargo_home" "$IMAGES_TARGET_DIR"
# The toolchain cargo would pick for the sources (rustup: rust-toolchain files, RUSTUP_TOOLCHAIN).
sysroot="$(cd "$IMAGES_SRC" && rustc --print sysroot)"
[[ -x $sysroot/bin/cargo && -x $sysroot/bin/rustc ]] || images_die "no cargo and rustc in $sysroot"
# The only trace on the host: the empty mount point.
mkdir -p "$fixed"
# Paths are also remapped, to shorter ones, so that the binary names no /scopegate/… directory
# (panic locations and C assertions alike); symbols are kept for readable backtraces, debug info
# is not. The flags are passed here only: with an explicit --target they reach neither build
# scripts nor proc macros, and no cargo config outside this script sees them.
prefix_map=("$fixed/src=/scopegate" "$fixed/cargo=/cargo" "$fixed/target=/target")
rustflags="-C target-feature=+crt-static -C debuginfo=0"
cflags=""
for map in "${prefix_map[@]}"; do
  rustflags+=" --remap-path-prefix=$map"
  cflags+=" -ffile-prefix-map=$map"
done
fixed_env=(
  HOME="$fixed/home" CARGO_HOME="$fixed/cargo" CARGO_TARGET_DIR="$fixed/target"
  PATH="$fixed/tools/bin:$fixed/toolchain/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
  RUSTC="$fixed/toolchain/bin/rustc" RUSTFLAGS="$rustflags"
  CFLAGS_x86_64_unknown_linux_gnu="${cflags# }" CXXFLAGS_x86_64_unknown_linux_gnu="${cflags# }"
  CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=debuginfo CARGO_INCREMENTAL=0
  TZ=UTC LC_ALL=C
  # For gcc's __DATE__ and __TIME__. A constant, not the commit time: the cc crate reruns build
  # scripts (aws-lc-sys and all above it) when it changes, and the binaries do not need it.
  SOURCE_DATE_EPOCH=0
)
# Passed through, none of them a path: proxies and cargo's network and registry settings (a
# fresh machine downloads the crates), the terminal, make's jobserver.
while IFS= read -r name; do
  fixed_env+=("$name=${!name}")
done < <(compgen -e | grep -E -e '^((https?|ftp|no|all)_proxy|(HTTPS?|FTP|NO|ALL)_PROXY)$' \
  -e '^CARGO_(HTTP|NET|REGISTRY|REGISTRIES|TERM)_[A-Z0-9_]+$' \
  -e '^(TERM|MAKEFLAGS|MFLAGS|CARGO_MAKEFLAGS|CARGO_BUILD_JOBS)$' || true)

# in_fixed_paths COMMAND...: runs COMMAND in /scopegate/src of a private mount namespace.
in_fixed_paths() {
  # shellcheck disable=SC2016 # expanded by the inner shell
  unshare --mount --propagation private -- bash -euo pipefail -c '
    fixed=$1 src=$2 target=$3 cargo=$4 toolchain=$5 tools=$6; shift 6
    mount -t tmpfs -o mode=0755 scopegate-fixed "$fixed"
    mkdir "$fixed"/{src,target,cargo,toolchain,tools,home}
    mount --bind "$src" "$fixed/src"
    mount --bind "$target" "$fixed/target"
    mount --bind "$cargo" "$fixed/cargo"
    mount --bind "$toolchain" "$fixed/toolchain"
    mount -o remount,bind,ro "$fixed/toolchain"
    mount --bind "$tools" "$fixed/tools"
    mount -o remount,bind,ro "$fixed/tools"
    cd "$fixed/src"
    exec env -i "$@"' in-fixed-paths \
    "$fixed" "$IMAGES_SRC" "$IMAGES_TARGET_DIR" "$cargo_home" "$sysroot" "$IMAGES_TOOLS" \
    "${fixed_env[@]}" "$@"
}

bin_dir="$IMAGES_TARGET_DIR/$IMAGES_TRIPLE/release"
for bin in "${IMAGES_BINARIES[@]}"; do
  images_step "cargo auditable build --release --target $IMAGES_TRIPLE -p $bin (static, in $fixed)"
  t=$SECONDS
  # One package per invocation: features are unified as in `cargo build -p $bin`.
  in_fixed_paths cargo auditable build --release --locked --target "$IMAGES_TRIPLE" \
    -p "$bin" --bin "$bin"
  images_step "$bin built in $((SECONDS - t))s"
done

check_static() { # binary
  local bin=$1 kind
  kind="$(file -b "$bin")"
  [[ $kind == *"statically linked"* || $kind == *"static-pie linked"* ]] \
    || images_die "$bin is not static: $kind"
  # Outputs are read whole before matching: `producer | grep -q` under pipefail fails at
  # random when grep exits before the producer has written everything (SIGPIPE).
  local program_headers dynamic sections linked
  program_headers="$(readelf -lW "$bin")"
  dynamic="$(readelf -dW "$bin")"
  sections="$(readelf -SW "$bin")"
  linked="$(ldd "$bin" 2>&1 || true)"
  [[ $program_headers != *'Requesting program interpreter'* ]] \
    || images_die "$bin has a program interpreter"
  [[ $dynamic != *'(NEEDED)'* ]] || images_die "$bin needs shared libraries"
  [[ $linked == *'not a dynamic executable'* || $linked == *'statically linked'* ]] \
    || images_die "ldd finds shared libraries in $bin: $linked"
  [[ $sections == *' .dep-v0 '* ]] || images_die "$bin has no cargo-auditable .dep-v0 section"
  local paths=("$HOME/" "$IMAGES_SRC" "$IMAGES_TARGET_DIR" "$cargo_home/" "$sysroot/") dir
  for dir in src target cargo toolchain tools home; do paths+=("$fixed/$dir/"); done
  ! grep -aqF "${paths[@]/#/-e}" "$bin" \
    || images_die "$bin embeds a build path: $(grep -aoF "${paths[@]/#/-e}" "$bin" | head -1)"
}

# --- images ---------------------------------------------------------------------------------
version="$(cd "$IMAGES_SRC" && cargo metadata --no-deps --format-version 1 --locked \
  | jq -r '.packages[] | select(.name == "scopegate-sidecar") | .version')"
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[[ -s $ca_bundle ]] || images_die "$ca_bundle missing: apt-get install ca-certificates"
ca_version="$(dpkg-query -W -f='${Version}' ca-certificates)"

# Builds one image in fresh vfs storage and writes it as an oci-archive; prints the digest.
build_image() { # component context archive
  local component=$1 context=$2 archive=$3 store
  store="$(mktemp -d "$tmp/buildah.XXXXXX")"
  local buildah=(buildah --root "$store/root" --runroot "$store/run" --storage-driver vfs)
  local tag="localhost/scopegate/$component:$version"
  "${buildah[@]}" build --quiet --file "$here/$component.Containerfile" --format oci \
    --isolation chroot --pull=false --timestamp "$SOURCE_DATE_EPOCH" --omit-history \
    --identity-label=false --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
    --build-arg "CREATED=$created" --tag "$tag" "$context" >/dev/null
  rm -f "$archive"
  "${buildah[@]}" push --quiet --digestfile "$store/digest" "$tag" "oci-archive:$archive:$version"
  cat "$store/digest"
  "${buildah[@]}" rmi --all --force >/dev/null 2>&1 || true
  rm -rf "$store"
}

mkdir -p "$IMAGES_OUT/bin" "$IMAGES_OUT/context"
rm -f "$IMAGES_OUT/release.json.tmp"
for bin in "${IMAGES_BINARIES[@]}"; do
  component="${IMAGES_COMPONENT[$bin]}"
  install -m 0755 "$bin_dir/$bin" "$IMAGES_OUT/bin/$bin"
  check_static "$IMAGES_OUT/bin/$bin"
  context="$IMAGES_OUT/context/$bin"
  rm -rf "$context" && mkdir -p "$context"
  install -m 0755 "$IMAGES_OUT/bin/$bin" "$context/$bin"
  install -m 0644 "$ca_bundle" "$context/ca-certificates.crt"
  install -m 0644 "$here/nsswitch.conf" "$context/nsswitch.conf"
  archive="$IMAGES_OUT/$bin.oci.tar"
  t=$SECONDS
  digest="$(build_image "$component" "$context" "$archive")"
  again="$(build_image "$component" "$context" "$archive.again")"
  # The manifest digest covers the config and every layer; the archive's own tar headers carry
  # the time of the push, so the .tar files themselves are not compared.
  [[ $digest == "$again" ]] || images_die "$bin: two builds gave $digest and $again (not reproducible)"
  [[ $digest =~ ^sha256:[0-9a-f]{64}$ ]] || images_die "$bin: buildah gave no digest ($digest)"
  rm -f "$archive.again"
  images_step "$bin image $digest (built twice, same digest, $((SECONDS - t))s)"

  images_step "CycloneDX SBOM of $bin"
  # At the fixed paths too: the SBOM's references to workspace packages carry their path.
  in_fixed_paths cargo cyclonedx --quiet --manifest-path "$fixed/src/$component/Cargo.toml" \
    --format json --spec-version 1.5 --target "$IMAGES_TRIPLE" --override-filename "$bin.cdx"
  mv "$IMAGES_SRC/$component/$bin.cdx.json" "$IMAGES_OUT/$bin.cdx.json"
  jq -n --arg bin "$bin" --arg component "$component" --arg digest "$digest" \
    --arg archive "$bin.oci.tar" --arg sbom "$bin.cdx.json" \
    --arg binary_sha256 "$(sha256sum "$IMAGES_OUT/bin/$bin" | cut -d' ' -f1)" \
    --argjson binary_bytes "$(stat -c %s "$IMAGES_OUT/bin/$bin")" \
    --argjson archive_bytes "$(stat -c %s "$archive")" \
    --arg repository "scopegate/$component" \
    '{binary: $bin, component: $component, repository: $repository, digest: $digest,
      archive: $archive, archive_bytes: $archive_bytes, sbom: $sbom,
      binary_sha256: $binary_sha256, binary_bytes: $binary_bytes}' >>"$IMAGES_OUT/release.json.tmp"
done

# --- release notes --------------------------------------------------------------------------
rustc_version="$("$sysroot/bin/rustc" -V)"
buildah_version="$(buildah --version)"
jq -s --arg version "$version" --arg revision "$revision" --arg commit "$commit" \
  --arg sde "$SOURCE_DATE_EPOCH" --arg created "$created" --arg rustc "$rustc_version" \
  --arg buildah "$buildah_version" --arg ca "$ca_version" --arg triple "$IMAGES_TRIPLE" \
  --arg auditable "$CARGO_AUDITABLE_VERSION" --arg cyclonedx "$CARGO_CYCLONEDX_VERSION" \
  '{version: $version, revision: $revision, commit: $commit, source_date_epoch: ($sde | tonumber),
    created: $created, target: $triple, rustc: $rustc, buildah: $buildah,
    ca_certificates: $ca, cargo_auditable: $auditable, cargo_cyclonedx: $cyclonedx,
    images: .}' "$IMAGES_OUT/release.json.tmp" >"$IMAGES_OUT/release.json"
rm -f "$IMAGES_OUT/release.json.tmp"
(cd "$IMAGES_OUT" && sha256sum ./*.oci.tar ./*.cdx.json bin/* | sed 's# \./# #' >SHA256SUMS)

# shellcheck disable=SC2016 # backquotes are Markdown
{
  printf '# scopegate %s images\n\n' "$version"
  printf 'Built from `%s` (SOURCE_DATE_EPOCH %s, %s) for `%s`.\n' "$revision" "$SOURCE_DATE_EPOCH" "$created" "$IMAGES_TRIPLE"
  [[ $revision != *-dirty ]] || printf '\n**Built from a working tree with uncommitted changes: not a release.**\n'
  printf '\n| Image | Digest | Archive | Binary SHA-256 | Binary |\n|---|---|---|---|---|\n'
  V="$version" jq -r '.images[] | "| `\(.repository):\(env.V)` | `\(.digest)` | `\(.archive)` (\(.archive_bytes / 1048576 * 10 | round / 10) MiB) | `\(.binary_sha256)` | \(.binary_bytes / 1048576 * 10 | round / 10) MiB |"' \
    "$IMAGES_OUT/release.json"
  printf '\nEach image: `FROM scratch`, the static binary at `/usr/local/bin/<name>`, Debian'"'"'s CA bundle\n'
  printf '(ca-certificates %s) and `/etc/nsswitch.conf` (`hosts: files dns`); `USER 65532:65532`;\n' "$ca_version"
  printf 'no shell. SBOMs (CycloneDX 1.5): `scopegate-operator.cdx.json`, `scopegate-sidecar.cdx.json`;\n'
  printf 'the binaries also carry their dependency list (`cargo auditable`, section `.dep-v0`).\n'
  printf '\n## Chart values (pull by digest)\n\n```yaml\n'
  V="$version" jq -r '.images[] | select(.component == "operator") | "image:\n  repository: REGISTRY/\(.repository)\n  tag: \"\(env.V)\"\n  digest: \(.digest)"' "$IMAGES_OUT/release.json"
  V="$version" jq -r '.images[] | select(.component == "sidecar") | "sidecar:\n  image:\n    repository: REGISTRY/\(.repository)\n    tag: \"\(env.V)\"\n    digest: \(.digest)"' "$IMAGES_OUT/release.json"
  printf '```\n\n## Toolchain\n\n'
  printf -- '- %s, cargo-auditable %s, cargo-cyclonedx %s\n' "$rustc_version" "$CARGO_AUDITABLE_VERSION" "$CARGO_CYCLONEDX_VERSION"
  printf -- '- %s (vfs storage, `--timestamp %s --omit-history --identity-label=false`)\n' "$buildah_version" "$SOURCE_DATE_EPOCH"
  printf '\n## SHA256SUMS\n\n```\n'
  cat "$IMAGES_OUT/SHA256SUMS"
  printf '```\n'
} >"$IMAGES_OUT/RELEASE-NOTES.md"

images_step "done in $((SECONDS - started))s: $IMAGES_OUT (RELEASE-NOTES.md, release.json)"
jq -r '.images[] | "  \(.archive)  \(.digest)"' "$IMAGES_OUT/release.json"
