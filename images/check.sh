#!/usr/bin/env bash
# The image checks of the README's test command, without a container daemon:
#   1. images/build.sh (warm: cargo reuses its target dir; each image is built twice in fresh
#      storage and the digests must agree);
#   2. per image: the manifest digest, the config (entrypoint, user 65532, no shell, fixed
#      created time, no history, labels), the unpacked root filesystem (exactly the binary, the
#      CA bundle and nsswitch.conf; the binary static and carrying its dependency list), the
#      SBOM against that list;
#   3. images/run-checks.sh in a private network namespace: the binaries run from the unpacked
#      roots as uid 65532 with no capabilities and a read-only root.
#   images/check.sh [--no-build | --rev REV]     (--rev: build the commit REV, not the working tree)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=images/lib.sh
source "$here/lib.sh"
fail() { printf 'images check FAILED: %s\n' "$*" >&2; exit 1; }
build=1
if [[ ${1:-} == --no-build ]]; then build=0; shift; fi
images_require skopeo umoci bwrap jq unshare setpriv ip curl python3 file readelf objcopy openssl
started=$SECONDS
((build == 0)) || bash "$here/build.sh" "$@"

release="$IMAGES_OUT/release.json"
[[ -f $release ]] || fail "$release missing: run images/build.sh"
version="$(jq -r .version "$release")"
work="$(mktemp -d "${TMPDIR:-/tmp}/scopegate-images-check.XXXXXX")"
chmod 0755 "$work" # the sandboxed uid reads the unpacked roots below it
trap 'rm -rf "$work"' EXIT

check_image() { # binary
  local bin=$1 entry archive digest dir rootfs
  entry="$(jq -c --arg bin "$bin" '.images[] | select(.binary == $bin)' "$release")"
  archive="$IMAGES_OUT/$(jq -r .archive <<<"$entry")"
  digest="$(jq -r .digest <<<"$entry")"
  dir="$work/$bin"
  rootfs="$dir/rootfs"
  mkdir -p "$dir"
  images_step "checking $bin ($digest)"

  # The manifest: its digest is the one in the release notes, one gzip layer.
  skopeo inspect --raw "oci-archive:$archive" >"$dir/manifest.json"
  [[ "sha256:$(sha256sum <"$dir/manifest.json" | cut -d' ' -f1)" == "$digest" ]] \
    || fail "$bin: the archive's manifest is not $digest"
  jq -e '.mediaType == "application/vnd.oci.image.manifest.v1+json" and (.layers | length) >= 1
      and all(.layers[]; .mediaType == "application/vnd.oci.image.layer.v1.tar+gzip")' \
    "$dir/manifest.json" >/dev/null || fail "$bin: unexpected manifest $(cat "$dir/manifest.json")"

  # The config: what a runtime reads.
  skopeo inspect --config "oci-archive:$archive" >"$dir/config.json"
  jq -e --arg bin "$bin" --arg version "$version" --arg created "$(jq -r .created "$release")" \
    --arg revision "$(jq -r .revision "$release")" --arg uid "$IMAGES_UID" '
      .os == "linux" and .architecture == "amd64"
      and .config.User == "\($uid):\($uid)"
      and .config.Entrypoint == ["/usr/local/bin/\($bin)"]
      and (.config.Cmd // []) == []
      and ((.config.WorkingDir // "") | IN("", "/"))
      and (.config.Env | index("SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt")) != null
      and .created == $created
      and (.history // []) == []
      and (.config.Labels | keys) == (["created", "description", "licenses", "revision",
            "source", "title", "version"] | map("org.opencontainers.image." + .))
      and .config.Labels["org.opencontainers.image.title"] == $bin
      and .config.Labels["org.opencontainers.image.version"] == $version
      and .config.Labels["org.opencontainers.image.revision"] == $revision
      and .config.Labels["org.opencontainers.image.created"] == $created' \
    "$dir/config.json" >/dev/null || fail "$bin: unexpected image config $(jq -c .config "$dir/config.json")"
  images_step "  config: entrypoint /usr/local/bin/$bin, user $IMAGES_UID:$IMAGES_UID, created $(jq -r .created "$dir/config.json"), no history, OCI labels only"

  # Unpack as a runtime would, from a copy made as the README publishes: same digest.
  skopeo copy --quiet --preserve-digests "oci-archive:$archive" "oci:$dir/layout:$version"
  [[ "sha256:$(skopeo inspect --raw "oci:$dir/layout:$version" | sha256sum | cut -d' ' -f1)" == "$digest" ]] \
    || fail "$bin: skopeo copy changed the manifest digest"
  umoci raw unpack --image "$dir/layout:$version" "$rootfs"
  local listing expected
  listing="$(cd "$rootfs" && find . -mindepth 1 -printf '%y %m %U:%G %p\n' | sort -k4)"
  expected="d 755 0:0 ./etc
d 755 0:0 ./etc/ssl
d 755 0:0 ./etc/ssl/certs
f 644 0:0 ./etc/nsswitch.conf
f 644 0:0 ./etc/ssl/certs/ca-certificates.crt
d 755 0:0 ./usr
d 755 0:0 ./usr/local
d 755 0:0 ./usr/local/bin
f 755 0:0 ./usr/local/bin/$bin"
  [[ $listing == "$(sort -k4 <<<"$expected")" ]] \
    || fail "$bin: unexpected root filesystem:"$'\n'"$listing"
  if find "$rootfs" -name sh -o -name bash -o -name dash -o -name ash -o -name busybox | grep -q .; then
    fail "$bin: a shell is in the image"
  fi
  cmp -s "$rootfs/etc/nsswitch.conf" "$here/nsswitch.conf" || fail "$bin: nsswitch.conf differs"
  grep -qx 'hosts: files dns' "$rootfs/etc/nsswitch.conf" || fail "$bin: nsswitch.conf lacks hosts: files dns"
  local certs
  certs="$(grep -c 'BEGIN CERTIFICATE' "$rootfs/etc/ssl/certs/ca-certificates.crt")"
  ((certs > 50)) || fail "$bin: the CA bundle has only $certs certificates"
  openssl x509 -noout -in "$rootfs/etc/ssl/certs/ca-certificates.crt" || fail "$bin: the CA bundle does not parse"
  images_step "  root filesystem: the binary, a CA bundle ($certs certificates) and nsswitch.conf; no shell"

  # The binary: the one in the release notes, static, with its dependency list.
  local exe="$rootfs/usr/local/bin/$bin" kind
  [[ "$(sha256sum <"$exe" | cut -d' ' -f1)" == "$(jq -r .binary_sha256 <<<"$entry")" ]] \
    || fail "$bin: the binary in the image is not the one in the release notes"
  kind="$(file -b "$exe")"
  [[ $kind == *"statically linked"* || $kind == *"static-pie linked"* ]] || fail "$bin: $kind"
  [[ $(readelf -lW "$exe") != *'program interpreter'* ]] || fail "$bin: has a program interpreter"
  objcopy --dump-section ".dep-v0=$dir/dep-v0.zlib" "$exe" "$dir/objcopy.out"
  python3 -c 'import sys, zlib; sys.stdout.buffer.write(zlib.decompress(open(sys.argv[1], "rb").read()))' \
    "$dir/dep-v0.zlib" >"$dir/dep-v0.json"
  jq -e --arg bin "$bin" '[.packages[] | select(.root)] | length == 1 and .[0].name == $bin' \
    "$dir/dep-v0.json" >/dev/null || fail "$bin: the embedded dependency list has no root $bin"
  if [[ $bin == scopegate-sidecar ]] && jq -e '.packages[] | select(.name | test("^(k8s-openapi|kube)"))' \
    "$dir/dep-v0.json" >/dev/null; then
    fail "$bin: the sidecar links Kubernetes crates"
  fi
  local deps
  deps="$(jq '[.packages[] | select((.kind // "runtime") == "runtime")] | length' "$dir/dep-v0.json")"
  images_step "  binary: SHA-256 as released, $kind, .dep-v0 lists $deps runtime packages"

  # The SBOM names every package the binary says it was built from.
  local sbom missing
  sbom="$IMAGES_OUT/$(jq -r .sbom <<<"$entry")"
  jq -e --arg bin "$bin" '.bomFormat == "CycloneDX" and .specVersion == "1.5"
      and .metadata.component.name == $bin' "$sbom" >/dev/null || fail "$bin: unexpected SBOM header"
  missing="$(jq -r --slurpfile sbom "$sbom" '
      ([$sbom[0] | .. | objects | select(has("purl")) | "\(.name)@\(.version)"] | unique) as $listed
      | .packages[] | select((.kind // "runtime") == "runtime" and (.root | not))
      | "\(.name)@\(.version)" | select(. as $p | $listed | index($p) | not)' "$dir/dep-v0.json")"
  [[ -z $missing ]] || fail "$bin: packages in the binary but not in the SBOM: $missing"
  images_step "  SBOM: CycloneDX 1.5, covers all $deps runtime packages of the binary"
}

for bin in "${IMAGES_BINARIES[@]}"; do
  check_image "$bin"
done

images_step "running the images (uid $IMAGES_UID, no capabilities, read-only root, private loopback)"
unshare --net -- bash "$here/run-checks.sh" "$work" "$version"
images_step "image checks passed in $((SECONDS - started))s"
