#!/usr/bin/env bash
# Stop the single-node test SLURM started by scripts/slurm-up.sh and leave the machine clean:
# cancel jobs, stop slurmd, slurmctld and the munged we started, remove the config files this
# script family wrote (only if they carry its marker) and the state directory.
# Safe to run when nothing is running.
set -uo pipefail

STATE=${KVBENCH_SLURM_STATE:-/var/tmp/kvbench-slurm}
CONF_DIR=/etc/slurm
MARKER="# written by kvbench scripts/slurm-up.sh"

log() { echo "slurm-down: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "ERROR: must run as root"; exit 1; }

ours=0
[ -f "$CONF_DIR/slurm.conf" ] && grep -qF "$MARKER" "$CONF_DIR/slurm.conf" && ours=1
if [ "$ours" = 0 ] && [ ! -d "$STATE" ]; then
    log "nothing to stop (no config or state of slurm-up.sh)"
    exit 0
fi

# Cancel jobs first so job steps do not outlive slurmd (linuxproc tracks them by parent pid).
if [ "$ours" = 1 ] && command -v scancel >/dev/null; then
    timeout 10 scancel --full --quiet --user=root 2>/dev/null || true
fi

# Stop a daemon by the pid in its pid file: TERM, wait, then KILL. Only processes whose
# command name matches are signalled, so a recycled pid is never hit.
stop_pidfile() {
    local name=$1 pidfile=$2 pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile" 2>/dev/null)
    if [ -n "$pid" ] && [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = "$name" ]; then
        kill -TERM "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && { log "$name ($pid) ignored TERM; killing"; kill -KILL "$pid"; }
    fi
    rm -f "$pidfile"
}
stop_pidfile slurmd "$STATE/run/slurmd.pid"
stop_pidfile slurmctld "$STATE/run/slurmctld.pid"

# slurmstepd processes of cancelled jobs normally exit with slurmd. Any left over are step
# daemons of this cluster's jobs (this script only gets here when slurm-up.sh's cluster exists).
for pid in $(pgrep -x slurmstepd 2>/dev/null); do
    kill -KILL "$pid" 2>/dev/null || true
done

# munged: only if slurm-up.sh started it (it may have found one already running).
if [ -f "$STATE/run/munged.ours" ]; then
    stop_pidfile munged /run/munge/munged.pid
fi

if [ "$ours" = 1 ]; then
    rm -f "$CONF_DIR/slurm.conf"
    grep -qF "$MARKER" "$CONF_DIR/gres.conf" 2>/dev/null && rm -f "$CONF_DIR/gres.conf"
fi
rm -rf "$STATE"

left=$(pgrep -x 'slurmctld|slurmd|slurmstepd' 2>/dev/null | tr '\n' ' ')
if [ -n "$left" ]; then
    log "WARNING: slurm processes still running: $left"
    exit 1
fi
log "stopped; state $STATE removed"
