#!/usr/bin/env bash
# Stop the local SLURM cluster that slurm/start.sh started: cancel the jobs in
# its partition, then SIGTERM each daemon by the pid file start.sh recorded
# (slurmd, slurmctld, slurmdbd, mariadbd, munged) and wait for it to exit.
# Never kills by process name; a pid is signalled only if /proc says it is
# still the expected daemon.  Idempotent: with nothing running it just exits 0.
# Leaves configs, state and the database under $COLLAPSE_SLURM_DIR in place
# (delete that directory for a clean slate).
set -euo pipefail

BASE=${COLLAPSE_SLURM_DIR:-/tmp/collapse-slurm}
PARTITION=debug
WAIT=${COLLAPSE_SLURM_STOP_TIMEOUT:-20}
export PATH=$PATH:/usr/sbin:/sbin

log() { echo "collapse-slurm: $*" >&2; }

# is_proc PID COMM: PID is a live (non-zombie) process named COMM.
is_proc() {
    local pid=$1 comm=$2
    [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] || return 1
    [[ $(awk '/^State:/{print $2}' "/proc/$pid/status" 2>/dev/null) != Z ]]
}

# live_pid FILE COMM: print the pid in FILE if it is a live process named COMM.
live_pid() {
    local f=$1 comm=$2 pid
    pid=$({ tr -dc '0-9' <"$f"; } 2>/dev/null) || return 1
    is_proc "$pid" "$comm" || return 1
    echo "$pid"
}

# stop_daemon FILE COMM: SIGTERM the pid recorded in FILE, wait up to $WAIT s
# for that process to go (daemons remove their own pid file before they are
# fully gone, so watch the pid, not the file), then SIGKILL it.
stop_daemon() {
    local f=$1 comm=$2 pid i
    if ! pid=$(live_pid "$f" "$comm"); then
        rm -f "$f"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < WAIT * 10; i++)); do
        is_proc "$pid" "$comm" || break
        sleep 0.1
    done
    if is_proc "$pid" "$comm"; then
        log "$comm (pid $pid) ignored SIGTERM for ${WAIT}s: sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            is_proc "$pid" "$comm" || break
            sleep 0.1
        done
    fi
    rm -f "$f"
    STOPPED+=("$pid:$comm")
    log "stopped $comm (pid $pid)"
}
STOPPED=()

# 1. Cancel jobs first: stopping slurmd would leave running job steps orphaned.
if live_pid "$BASE/run/slurmctld.pid" slurmctld >/dev/null && command -v scancel >/dev/null; then
    if timeout 10 scancel --partition="$PARTITION" 2>/dev/null; then
        # bounded wait for the jobs to leave the node
        for ((i = 0; i < 100; i++)); do
            [[ -z $(timeout 5 squeue -h -p "$PARTITION" -t RUNNING,COMPLETING,SUSPENDED -o %i 2>/dev/null) ]] && break
            sleep 0.1
        done
    fi
    # let slurmctld hand the final job records to slurmdbd (else they wait in
    # its state dir until the next start and sacct does not show them)
    for ((i = 0; i < 50; i++)); do
        q=$(timeout 5 sdiag 2>/dev/null | awk -F: '/DBD Agent queue size/{gsub(/ /,"",$2); print $2}') || q=""
        [[ -z $q || $q == 0 ]] && break
        sleep 0.1
    done
fi

# 2. Daemons, reverse start order.
stop_daemon "$BASE/run/slurmd.pid" slurmd
stop_daemon "$BASE/run/slurmctld.pid" slurmctld
stop_daemon "$BASE/run/slurmdbd.pid" slurmdbd
stop_daemon "$BASE/mysql/mariadbd.pid" mariadbd
stop_daemon "$BASE/munge/munged.pid" munged   # absent when start.sh reused a foreign munged

# 3. The exited daemons stay zombies until PID 1 reaps them (1-2 s where PID 1
# is not an init system); wait (bounded) so that ps right after this is clean.
for ((i = 0; i < 50; i++)); do
    left=0
    for entry in "${STOPPED[@]}"; do
        [[ $(cat "/proc/${entry%%:*}/comm" 2>/dev/null) == "${entry#*:}" ]] && left=1
    done
    ((left)) || break
    sleep 0.1
done

log "stopped (base dir $BASE)"
