#!/usr/bin/env bash
# Build the kvbench CPU *test* image on this machine, with no registry image:
#
#   1. a Debian bookworm base root filesystem, made with debootstrap from the Debian mirror
#      (python3 + venv), imported into podman as localhost/kvbench-base:bookworm;
#   2. a wheelhouse of kvbench's pinned dependencies, downloaded with this machine's pip
#      (torch is the CPU wheel; PyPI's default torch would be a multi-GB CUDA build);
#   3. `podman build -f containers/Dockerfile` - the same Dockerfile as the GPU image - with
#      BASE_IMAGE=that base, pip offline from the wheelhouse, no network: localhost/kvbench:cpu;
#   4. an Apptainer sandbox exported from it (root filesystem + /.singularity.d/env with the
#      image's ENV lines, as `apptainer build` writes them), which tests/standins/apptainer runs.
#
# Everything lands in $KVBENCH_IMAGE_DIR (default /var/tmp/kvbench-images), outside the git tree,
# and podman's own storage (/var/lib/containers). Steps whose output exists are skipped; --force
# rebuilds the image (not the base), --clean removes everything this script made.
#
# The GPU production image is built elsewhere with docker/podman + apptainer: containers/README.md.
#
# Usage: scripts/build-images.sh [--force] [--clean]     (root; needs install-system-deps.sh)
# Prints the sandbox path on stdout as its last line; progress and timings go to stderr.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
DIR=${KVBENCH_IMAGE_DIR:-/var/tmp/kvbench-images}
IMAGE=${KVBENCH_TEST_IMAGE:-localhost/kvbench:cpu}
BASE_IMAGE=localhost/kvbench-base:bookworm
STORE=${KVBENCH_APPTAINER_STORE:-$DIR/sandboxes}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# The torch the test image gets: the CPU wheel this machine's pip resolves (see DESIGN.md).
TORCH_VERSION=${KVBENCH_TORCH_VERSION:-2.13.0}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3

log() { echo "build-images: $*" >&2; }
die() { echo "build-images: ERROR: $*" >&2; exit 1; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.0f s", b - a }'; }

FORCE=0
for arg in "$@"; do
    case $arg in
        --force) FORCE=1 ;;
        --clean)
            podman rmi -f "$IMAGE" "$BASE_IMAGE" >/dev/null 2>&1 || true
            rm -rf "$DIR"
            log "removed $DIR and the podman images $IMAGE, $BASE_IMAGE"
            exit 0 ;;
        *) die "unknown argument $arg (use --force or --clean)" ;;
    esac
done

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and podman's rootful storage need it)"
for tool in debootstrap podman runc bwrap; do
    command -v "$tool" >/dev/null || die "'$tool' not found: run scripts/install-system-deps.sh"
done
mkdir -p "$DIR" "$STORE"
t_all=$(now)

# ---- podman settings for this sandbox --------------------------------------------------------
# This machine runs cgroup v1 + v2 "hybrid", which crun (podman's default runtime) refuses, and
# its root lacks CAP_SYS_RESOURCE, so the runtime may not raise rlimits: podman's defaults
# (nofile 1048576, nproc above what conmon has) fail with "setrlimit: Operation not permitted".
# So: runc, and limits no higher than ours. A private containers.conf keeps this from touching
# the machine's /etc/containers.
nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=1048576
nproc=$(ulimit -Hu); { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
export CONTAINERS_CONF=$DIR/containers.conf
cat > "$CONTAINERS_CONF" <<EOF
# written by scripts/build-images.sh for this machine's sandbox (see the comment there)
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF

# ---- 1. base root filesystem -----------------------------------------------------------------
if podman image exists "$BASE_IMAGE" && [ -f "$DIR/base.done" ]; then
    log "base $BASE_IMAGE exists (remove with --clean to remake)"
else
    t=$(now)
    rm -rf "$DIR/base-rootfs"
    # minbase + python3 and venv is all the Dockerfile needs (passwd, for useradd, is in minbase).
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$DIR/base-rootfs" "$MIRROR" > "$DIR/debootstrap.log" 2>&1 \
        || die "debootstrap failed; see $DIR/debootstrap.log"
    chroot "$DIR/base-rootfs" apt-get clean
    rm -rf "$DIR/base-rootfs"/var/lib/apt/lists/* "$DIR/base-rootfs"/var/cache/apt/*.bin
    tar -C "$DIR/base-rootfs" -c . | podman import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$DIR/base-rootfs"
    touch "$DIR/base.done"
    log "base $BASE_IMAGE made with debootstrap in $(took "$t")"
fi

# ---- 2. wheelhouse -----------------------------------------------------------------------------
WHEELS=$DIR/wheelhouse
reqs_hash=$(cat "$REPO/containers/requirements.txt" "$REPO/pyproject.toml" | sha256sum | cut -c1-16)
if [ -f "$WHEELS/.done-$reqs_hash-$TORCH_VERSION" ]; then
    log "wheelhouse up to date"
else
    t=$(now)
    rm -rf "$WHEELS"; mkdir -p "$WHEELS"
    # The build backend too (pyproject's [build-system] requires), since pip builds kvbench in an
    # isolated environment and the image build has no index to fetch it from.
    backend=$("$PYTHON" - "$REPO/pyproject.toml" <<'PY'
import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"]))
PY
)
    # cp311 manylinux wheels, to match Debian bookworm's python3 (3.11).
    mapfile -t backend_reqs <<<"$backend"
    "$PYTHON" -m pip download --quiet --dest "$WHEELS" --only-binary=:all: \
        --python-version 3.11 --implementation cp --abi cp311 \
        "torch==$TORCH_VERSION" -r "$REPO/containers/requirements.txt" "${backend_reqs[@]}" \
        2> >(grep -v "^WARNING: Location" >&2) \
        || die "pip download failed"
    ls "$WHEELS"/torch-"$TORCH_VERSION"+cpu-*.whl >/dev/null 2>&1 \
        || log "WARNING: the torch wheel is not a +cpu build; the image will be large"
    touch "$WHEELS/.done-$reqs_hash-$TORCH_VERSION"
    log "wheelhouse ($(du -sh "$WHEELS" | cut -f1)) in $(took "$t")"
fi

# ---- 3. the image, from containers/Dockerfile ----------------------------------------------------
# A small build context with only what the Dockerfile copies, so the build neither reads .venv,
# .git or results/ nor depends on the repository's .dockerignore.
CTX=$DIR/context
rm -rf "$CTX"; mkdir -p "$CTX/containers"
cp "$REPO/pyproject.toml" "$CTX/"
if [ -f "$REPO/README.md" ]; then cp "$REPO/README.md" "$CTX/"; else echo "# kvbench" > "$CTX/README.md"; fi
cp "$REPO/containers/Dockerfile" "$REPO/containers/requirements.txt" "$CTX/containers/"
tar -C "$REPO" --exclude=__pycache__ --exclude='*.pyc' -c kvbench | tar -C "$CTX" -x
GIT_COMMIT=$(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo "")
src_hash=$( (cd "$CTX" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16)
stamp="$reqs_hash-$src_hash-$GIT_COMMIT"

if [ "$FORCE" = 0 ] && podman image exists "$IMAGE" \
   && [ "$(podman image inspect --format '{{ index .Labels "kvbench.build-stamp" }}' "$IMAGE")" = "$stamp" ]; then
    log "image $IMAGE is up to date"
else
    t=$(now)
    podman build --quiet --network none --layers \
        --volume "$WHEELS:/wheels:ro" \
        --build-arg BASE_IMAGE="$BASE_IMAGE" \
        --build-arg TORCH_VERSION="$TORCH_VERSION" \
        --build-arg IMAGE_NAME="$IMAGE" \
        --build-arg GIT_COMMIT="$GIT_COMMIT" \
        --build-arg PIP_NO_INDEX=1 \
        --build-arg PIP_FIND_LINKS=/wheels \
        --label kvbench.build-stamp="$stamp" \
        -f "$CTX/containers/Dockerfile" -t "$IMAGE" "$CTX" > "$DIR/build.log" 2>&1 \
        || { tail -30 "$DIR/build.log" >&2; die "podman build failed; full log in $DIR/build.log"; }
    # Drop the previous build's image (now untagged, >1 GB); layers this one uses are kept.
    podman image prune --force >/dev/null
    log "image $IMAGE built in $(took "$t")"
fi

# ---- 4. Apptainer sandbox --------------------------------------------------------------------------
SANDBOX=$STORE/$(echo "$IMAGE" | sed 's|^[a-z-]*://||; s|[/:@]|_|g')
image_id=$(podman image inspect --format '{{.Id}}' "$IMAGE")
if [ -f "$SANDBOX/.singularity.d/kvbench-image-id" ] \
   && [ "$(cat "$SANDBOX/.singularity.d/kvbench-image-id")" = "$image_id" ]; then
    log "sandbox $SANDBOX is up to date"
else
    t=$(now)
    tmp=$SANDBOX.tmp.$$
    rm -rf "$tmp"; mkdir -p "$tmp"
    cid=$(podman create "$IMAGE")
    podman export "$cid" | tar -C "$tmp" -x
    podman rm "$cid" >/dev/null
    mkdir -p "$tmp/.singularity.d/env" "$tmp/.singularity.d/libs"
    # The image's ENV, as `apptainer build` turns Docker ENV into a script sourced at start.
    podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" |
        "$PYTHON" -c '
import shlex, sys
for line in sys.stdin.read().splitlines():
    if "=" in line:
        k, v = line.split("=", 1)
        print(f"export {k}={shlex.quote(v)}")
' > "$tmp/.singularity.d/env/10-docker2singularity.sh"
    # `apptainer run` runs the image's CMD.
    cmd=$(podman image inspect --format '{{range .Config.Cmd}}{{.}} {{end}}' "$IMAGE")
    printf '#!/bin/sh\nif [ $# -gt 0 ]; then exec "$@"; fi\nexec %s\n' "$cmd" > "$tmp/.singularity.d/runscript"
    chmod 0755 "$tmp/.singularity.d/runscript"
    echo "$image_id" > "$tmp/.singularity.d/kvbench-image-id"
    rm -rf "$SANDBOX"; mv "$tmp" "$SANDBOX"
    log "sandbox exported to $SANDBOX ($(du -sh "$SANDBOX" | cut -f1)) in $(took "$t")"
fi

log "done in $(took "$t_all"): podman image $IMAGE, apptainer sandbox $SANDBOX (docker://$IMAGE)"
echo "$SANDBOX"
