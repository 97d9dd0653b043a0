#!/usr/bin/env bash
# Stops everything cluster-up.sh started in directory $1 (by recorded PID, never by name)
# and removes the directory. Safe to run twice.
set -uo pipefail
D="${1:?usage: cluster-down.sh DIR [--keep]}"
[[ -d $D ]] || exit 0
for name in operator kube-controller-manager kube-apiserver etcd; do
  pidfile="$D/$name.pid"
  [[ -f $pidfile ]] || continue
  pid="$(cat "$pidfile")"
  # Each component runs in its own session (setsid): signal the whole group.
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pidfile"
done
if [[ ${2:-} != --keep ]]; then rm -rf "$D"; fi
