# Pinned versions of the local control plane's binaries. Sourced by the other scripts.
# Changing a version builds into a new cache directory; old ones can be deleted by hand.
K8S_VERSION="${K8S_VERSION:-1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-3.7.3}"
HELM_VERSION="${HELM_VERSION:-3.22.0}"
CLI_UTILS_VERSION="${CLI_UTILS_VERSION:-0.37.2}"
SCOPEGATE_CACHE="${SCOPEGATE_CACHE:-$HOME/.cache/scopegate}"
E2E_BIN_CACHE="${E2E_BIN_CACHE:-$SCOPEGATE_CACHE/e2e-bins}"
K8S_BIN="$E2E_BIN_CACHE/k8s-v$K8S_VERSION"
ETCD_BIN="$E2E_BIN_CACHE/etcd-v$ETCD_VERSION"
HELM_BIN="$E2E_BIN_CACHE/helm-v$HELM_VERSION"
# The main.go is part of the key: a changed tool builds anew.
KSTATUS_BIN="$E2E_BIN_CACHE/kstatus-v$CLI_UTILS_VERSION-$(cksum <"$(dirname "${BASH_SOURCE[0]}")/../tools/kstatus/main.go" | cut -d' ' -f1)"
export GOWORK=off GOTOOLCHAIN="${GOTOOLCHAIN:-local}" GOFLAGS="${GOFLAGS:-}"
