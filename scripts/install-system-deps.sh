#!/usr/bin/env bash
# Install the Debian packages that the SLURM and container tests need. Idempotent and quick when
# everything is already there (no `apt-get update` then). Run as root; CI calls it.
#
#   slurm-wlm munge   a real single-node SLURM (scripts/slurm-up.sh / slurm-down.sh)
#   bubblewrap        the container runtime under the apptainer stand-in (tests/standins/apptainer)
#   debootstrap       a Debian base root filesystem made from the Debian mirror, since no
#                     registry image (docker.io, ghcr.io, ...) can be pulled here
#   podman runc       builds containers/Dockerfile on that base (scripts/build-images.sh);
#                     runc because crun refuses this machine's hybrid cgroup v1/v2 setup
#
# Not installed: docker.io (its daemon does not run in this sandbox) and apptainer (not in
# Debian bookworm; its releases come from GitHub, which is not reachable).
#
# Usage: scripts/install-system-deps.sh [--check]   (--check: exit 1 if something is missing)
set -euo pipefail

PACKAGES=(slurm-wlm munge bubblewrap debootstrap podman runc)

missing=()
for p in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-system-deps: all present (${PACKAGES[*]})" >&2
    exit 0
fi
if [ "${1:-}" = --check ]; then
    echo "install-system-deps: missing: ${missing[*]}" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-system-deps: ERROR: missing ${missing[*]} and not root; run as root" >&2
    exit 1
fi
command -v apt-get >/dev/null || { echo "install-system-deps: ERROR: no apt-get (not Debian?)" >&2; exit 1; }

echo "install-system-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# The machine has no init system that starts services: installing slurm/munge starts nothing,
# and policy-rc.d keeps it that way where there is one (slurm-up.sh starts the daemons itself).
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; made_policy=1
fi
trap '[ "$made_policy" = 1 ] && rm -f "$policy"' EXIT

apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
echo "install-system-deps: done" >&2
