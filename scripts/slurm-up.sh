#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine, for tests.
#
#   sudo scripts/slurm-up.sh          # start (or confirm running); prints the time it took
#   scripts/slurm-down.sh             # stop it and remove what this script wrote
#
# What it makes: munged + slurmctld + slurmd, all on localhost, all as root; no accounting
# (no slurmdbd), no cgroups (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none), one
# partition `debug` (default) with one node named after this host, sized from `slurmd -C`,
# carrying one fake GPU (gres gpu:1 with no device file) so that `--gpus=1`/`--gres=gpu:1`
# requests are scheduled as on a real GPU node. Nothing is mocked: sbatch/srun/squeue are real.
#
# State (spool, logs, pid files) lives in $KVBENCH_SLURM_STATE (default /var/tmp/kvbench-slurm).
# The config goes to /etc/slurm/slurm.conf because every client (sbatch, squeue, the Snakemake
# executor's calls, srun inside jobs) looks there without any environment variable; the file
# carries a marker line so slurm-down.sh removes only a config this script wrote, and this
# script refuses to overwrite a foreign one.
#
# Idempotent: if the cluster is already up and answers, it only re-checks it.
# Needs: root, and the packages from scripts/install-system-deps.sh (slurm-wlm, munge).
set -euo pipefail

STATE=${KVBENCH_SLURM_STATE:-/var/tmp/kvbench-slurm}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
GRES_CONF=$CONF_DIR/gres.conf
MARKER="# written by kvbench scripts/slurm-up.sh"
PARTITION=${KVBENCH_SLURM_PARTITION:-debug}
TIMEOUT=${KVBENCH_SLURM_TIMEOUT:-60}   # seconds to wait for the node to become idle

t0=$(date +%s.%N)
die() { echo "slurm-up: ERROR: $*" >&2; exit 1; }
log() { echo "slurm-up: $*" >&2; }

[ "$(id -u)" = 0 ] || die "must run as root (slurmd and munged need it)"
for tool in munged slurmctld slurmd sinfo srun scontrol; do
    command -v "$tool" >/dev/null || die "'$tool' not found: run scripts/install-system-deps.sh first"
done

NODE=$(hostname -s)

# ---- already up? ------------------------------------------------------------------------------
# A node running jobs (mix, alloc, completing) is up too: tearing it down would kill another
# test's jobs (make test runs the SLURM and container files on two workers at once).
if [ -f "$CONF" ] && grep -qF "$MARKER" "$CONF"; then
    state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null)
    case "$state" in
        mix|alloc|comp) log "already running (node $NODE $state: busy with jobs)"; exit 0 ;;
        idle) if timeout 20 srun -N1 -n1 -t 1 hostname >/dev/null 2>&1; then
                  log "already running (node $NODE idle, srun works)"; exit 0
              fi ;;
    esac
fi

if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script; refusing to overwrite a real SLURM config"
fi

# Half-started or stale: clear it out so we start from a known state.
if [ -f "$CONF" ] || [ -d "$STATE" ]; then
    log "stale state found; stopping leftovers first"
    "$(dirname "$0")/slurm-down.sh" >/dev/null 2>&1 || true
fi

mkdir -p "$STATE"/{ctld,spool,log,run} "$CONF_DIR"

# ---- munge: SLURM authenticates every RPC with it ----------------------------------------------
# Debian's package creates /etc/munge/munge.key at install time; make one if it is missing.
# munged refuses to run as root, so it runs as the `munge` user the package created.
if [ ! -s /etc/munge/munge.key ]; then
    log "creating munge key"
    install -d -o munge -g munge -m 0700 /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
fi
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged || die "munged did not start (see /var/log/munge/munged.log)"
    touch "$STATE/run/munged.ours"      # slurm-down.sh stops munged only if we started it
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || die "munge does not round-trip a credential"
fi

# ---- slurm.conf ---------------------------------------------------------------------------------
# Size the node from what slurmd detects, so jobs asking for the machine's cores/memory fit.
# RealMemory is lowered by 5% because slurmd drains a node whose configured memory exceeds
# what it sees, and the free memory reported at boot can wobble.
read -r CPUS SOCKETS CORES THREADS MEM < <(slurmd -C | awk '
    /^NodeName/ { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
    END { print v["CPUs"], v["SocketsPerBoard"], v["CoresPerSocket"], v["ThreadsPerCore"], v["RealMemory"] }')
[ -n "${MEM:-}" ] || die "could not read the node's size from 'slurmd -C'"
MEM=$(( MEM * 95 / 100 ))

cat > "$CONF" <<EOF
$MARKER
# Single-node test cluster. Remove with scripts/slurm-down.sh.
ClusterName=kvbench
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: the test machine is a VM/container where cgroup delegation is not guaranteed.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# Cores, memory and GPUs are consumable, as on the GPU clusters the profile targets.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
# No accounting: no slurmdbd. Clients must use squeue, not sacct, for job state.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# A node that was down when the controller restarted comes back by itself.
ReturnToService=2
MpiDefault=none
SchedulerType=sched/backfill
# Short timeouts so a test that breaks something does not hang for minutes.
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
# Keep finished jobs in slurmctld's memory for an hour: with no accounting, squeue/scontrol are
# the only record of a job, and Snakemake's squeue status checks and the tests read it there.
MinJobAge=3600
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS SocketsPerBoard=$SOCKETS CoresPerSocket=$CORES ThreadsPerCore=$THREADS RealMemory=$MEM Gres=gpu:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF

# A fake GPU backed by /dev/null. gres/gpu wants a device file per GPU (with only Count=1 slurmd
# reports 0 GPUs and the node goes INVAL); /dev/null exists everywhere and opening it is harmless.
# This exercises the plumbing we care about: --gpus/--gres requests are accepted, the job gets
# CUDA_VISIBLE_DEVICES, and the one GPU limits how many jobs run on the node at once.
cat > "$GRES_CONF" <<EOF
$MARKER
AutoDetect=off
NodeName=$NODE Name=gpu File=/dev/null
EOF

# ---- daemons ------------------------------------------------------------------------------------
# -i: ignore stale state; the state dir was just emptied anyway. Both daemonize themselves.
slurmctld -i || die "slurmctld failed to start; see $STATE/log/slurmctld.log"
slurmd || die "slurmd failed to start; see $STATE/log/slurmd.log"

# ---- wait until usable --------------------------------------------------------------------------
deadline=$(( $(date +%s) + TIMEOUT ))
state=""
while :; do
    state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
    [ "$state" = idle ] && break
    # A node that registered as down/drained (e.g. a size mismatch) will not recover by waiting.
    case "$state" in
        drain*|down*|fail*|inval*)
            reason=$(sinfo -h -n "$NODE" -o %E 2>/dev/null || true)
            die "node $NODE is '$state' (reason: $reason); see $STATE/log/slurmd.log" ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
        die "node $NODE not idle after ${TIMEOUT}s (state '${state:-no answer}'); logs in $STATE/log/"
    fi
    sleep 0.5
done

out=$(timeout 30 srun -N1 -n1 -t 1 hostname 2>&1) || die "'srun hostname' failed: $out"
out=$(timeout 30 srun -N1 -n1 -t 1 --gpus=1 hostname 2>&1) || die "'srun --gpus=1 hostname' failed: $out"

t1=$(date +%s.%N)
log "up: node $NODE idle in partition $PARTITION (CPUs=$CPUS RealMemory=${MEM}MB gpu:1), state in $STATE"
awk -v a="$t0" -v b="$t1" 'BEGIN { printf "slurm-up: took %.1f s\n", b - a }' >&2
