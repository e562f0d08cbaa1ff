#!/usr/bin/env bash
# Install (if needed) and start a real single-node SLURM cluster on localhost:
# munged, a private mariadbd, slurmdbd, slurmctld and slurmd, all started by
# this script and recorded in pid files under $COLLAPSE_SLURM_DIR.
# slurm/stop.sh stops exactly those daemons.
#
# Needs root and a Debian/Ubuntu system (apt-get).  Writes /etc/slurm/slurm.conf
# and /etc/slurm/slurmdbd.conf (so plain sbatch/squeue/sacct and submitit work
# in any later process without extra environment) and /etc/munge/munge.key if
# it is missing.  Meant for throwaway machines: CI, containers, test VMs.
#
# Environment:
#   COLLAPSE_SLURM_DIR      base dir for configs, state, logs, pids, database
#                           (default /tmp/collapse-slurm)
#   COLLAPSE_SLURM_CPUS     CPUs the node advertises (default 8; may exceed
#                           the real count)
#   COLLAPSE_SLURM_GPUS     GPUs the node advertises as GRES (default 4):
#                           placeholders, not devices; jobs asking for GPUs
#                           schedule as on a site and see no GPU
#   COLLAPSE_SLURM_TIMEOUT  seconds to wait for the cluster to be ready (60)
#   COLLAPSE_SLURM_CLUSTER  cluster name (default collapse)
#   COLLAPSE_SLURM_FORCE_CONF=1  overwrite an /etc/slurm/slurm.conf that this
#                           script did not write (the old one is kept as .bak)
set -euo pipefail

T0=$(date +%s.%N)

BASE=${COLLAPSE_SLURM_DIR:-/tmp/collapse-slurm}
NCPUS=${COLLAPSE_SLURM_CPUS:-8}
NGPUS=${COLLAPSE_SLURM_GPUS:-4}
TIMEOUT=${COLLAPSE_SLURM_TIMEOUT:-60}
CLUSTER=${COLLAPSE_SLURM_CLUSTER:-collapse}
PARTITION=debug
ETC=/etc/slurm
MARKER="# Written by collapse slurm/start.sh"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() { echo "collapse-slurm: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (starts daemons, writes /etc/slurm)"
[[ $NCPUS =~ ^[1-9][0-9]*$ ]] || die "COLLAPSE_SLURM_CPUS must be a positive integer, got '$NCPUS'"
[[ $NGPUS =~ ^[0-9]+$ ]] || die "COLLAPSE_SLURM_GPUS must be an integer >= 0, got '$NGPUS'"
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "COLLAPSE_SLURM_TIMEOUT must be a positive integer (seconds), got '$TIMEOUT'"

# ---------------------------------------------------------------- packages
have_all_packages() {
    local c
    for c in slurmctld slurmd slurmdbd sbatch sacct sacctmgr munged munge mariadbd mariadb-install-db mariadb-admin; do
        PATH=$PATH:/usr/sbin:/sbin command -v "$c" >/dev/null 2>&1 || return 1
    done
}

if ! have_all_packages; then
    command -v apt-get >/dev/null || die "SLURM is not installed and apt-get is not available"
    log "installing slurm, munge, slurmdbd, mariadb (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge slurmdbd mariadb-server >/dev/null
    have_all_packages || die "packages installed but some commands are still missing"
    T_INSTALL=$(date +%s.%N)
    log "packages installed in $(awk -v a="$T0" -v b="$T_INSTALL" 'BEGIN{printf "%.1f", b-a}') s"
fi
export PATH=$PATH:/usr/sbin:/sbin

# ---------------------------------------------------------------- helpers
# Daemons, in start order.  The pid files live in the base dir.
MUNGE_PID=$BASE/munge/munged.pid
MYSQL_PID=$BASE/mysql/mariadbd.pid
DBD_PID=$BASE/run/slurmdbd.pid
CTLD_PID=$BASE/run/slurmctld.pid
SLURMD_PID=$BASE/run/slurmd.pid
MYSQL_SOCK=$BASE/mysql/mysqld.sock

# pid_alive FILE COMM: the pid in FILE is a live process whose name is COMM
# (guards against a stale pid file whose pid was reused by something else).
pid_alive() {
    local f=$1 comm=$2 pid
    pid=$({ tr -dc '0-9' <"$f"; } 2>/dev/null) || return 1
    [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] || return 1
    # a zombie is not alive
    [[ $(awk '/^State:/{print $2}' "/proc/$pid/status" 2>/dev/null) != Z ]]
}

elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

dump_logs() {
    local f
    for f in "$BASE"/log/*.log "$BASE"/munge/munged.log; do
        [[ -f $f ]] || continue
        echo "----- tail of $f" >&2
        tail -n 20 "$f" >&2
    done
}

fail() { log "ERROR: $*"; dump_logs; log "stop what was started with: bash $HERE/stop.sh"; exit 1; }

# wait_for SECONDS WHAT CMD...: poll CMD every 0.1 s until it succeeds.
wait_for() {
    local secs=$1 what=$2; shift 2
    local deadline
    deadline=$(awk -v t="$(date +%s.%N)" -v s="$secs" 'BEGIN{printf "%.3f", t+s}')
    until "$@" >/dev/null 2>&1; do
        if awk -v t="$(date +%s.%N)" -v d="$deadline" 'BEGIN{exit !(t>d)}'; then
            fail "timed out after ${secs}s waiting for $what"
        fi
        sleep 0.1
    done
}

# ---------------------------------------------------------------- already up?
all_alive() {
    { pid_alive "$MUNGE_PID" munged || munge_external; } &&
        pid_alive "$MYSQL_PID" mariadbd && pid_alive "$DBD_PID" slurmdbd &&
        pid_alive "$CTLD_PID" slurmctld && pid_alive "$SLURMD_PID" slurmd
}
munge_external() { [[ -f $BASE/munge/external ]] && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
any_alive() {
    pid_alive "$MUNGE_PID" munged || pid_alive "$MYSQL_PID" mariadbd || pid_alive "$DBD_PID" slurmdbd ||
        pid_alive "$CTLD_PID" slurmctld || pid_alive "$SLURMD_PID" slurmd
}

if all_alive 2>/dev/null && timeout 5 sinfo -h >/dev/null 2>&1; then
    log "already running (base dir $BASE)"
    echo "collapse-slurm: ready (already running) in $(elapsed) s"
    exit 0
fi
if any_alive 2>/dev/null; then
    log "a previous start is only partly running: stopping it first"
    bash "$HERE/stop.sh" || fail "$HERE/stop.sh failed"
fi

# ---------------------------------------------------------------- layout
mkdir -p "$BASE"/{etc,run,log,state/ctld,state/slurmd,munge,mysql}
chmod 0755 "$BASE" "$BASE"/run "$BASE"/log "$BASE"/mysql
rm -f "$BASE"/munge/external

# ---------------------------------------------------------------- munge
# munged refuses to run as root; key must be owned by munge, mode 0400.
getent passwd munge >/dev/null || die "user munge missing (is the munge package installed?)"
mkdir -p /etc/munge /run/munge
chown munge:munge /etc/munge /run/munge
chmod 0700 /etc/munge
chmod 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
chown munge:munge "$BASE/munge"
chmod 0700 "$BASE/munge"

if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    # Someone else's munged already serves the default socket: use it, and
    # leave it alone on stop (no pid file of ours).
    log "using the munged that is already running (not started by us)"
    touch "$BASE/munge/external"
else
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock 2>/dev/null || true
    runuser -u munge -- /usr/sbin/munged \
        --pid-file="$MUNGE_PID" \
        --log-file="$BASE/munge/munged.log" \
        --seed-file="$BASE/munge/munged.seed" \
        || fail "munged did not start"
    wait_for 10 "munged" bash -c 'munge -n | unmunge'
fi

# ---------------------------------------------------------------- mariadb
# Private instance: own datadir and socket, no TCP.  mariadbd does not
# daemonize, so detach it with setsid -f.
MYSQL_DATA=$BASE/mysql/data
getent passwd mysql >/dev/null || die "user mysql missing (is mariadb-server installed?)"
chown mysql:mysql "$BASE/mysql"
if [[ ! -d $MYSQL_DATA/mysql ]]; then
    rm -rf "$MYSQL_DATA"
    mariadb-install-db --no-defaults --datadir="$MYSQL_DATA" --user=mysql \
        --auth-root-authentication-method=socket --skip-test-db \
        >"$BASE/log/mariadb-install.log" 2>&1 || fail "mariadb-install-db failed (see $BASE/log/mariadb-install.log)"
fi
touch "$BASE/log/mariadb.log"
chown mysql:mysql "$BASE/log/mariadb.log"
rm -f "$MYSQL_SOCK"
setsid -f /usr/sbin/mariadbd --no-defaults \
    --datadir="$MYSQL_DATA" --socket="$MYSQL_SOCK" --pid-file="$MYSQL_PID" \
    --skip-networking --user=mysql --log-error="$BASE/log/mariadb.log" \
    --innodb-buffer-pool-size=64M --innodb-log-file-size=16M \
    --innodb-lock-wait-timeout=900 --skip-log-bin --performance-schema=OFF \
    </dev/null >>"$BASE/log/mariadb.log" 2>&1
wait_for 30 "mariadbd" mariadb-admin --no-defaults --socket="$MYSQL_SOCK" -uroot ping

# ---------------------------------------------------------------- configs
HOST=$(hostname -s)
NODE_LINE=$(slurmd -C 2>/dev/null | head -n 1) || true
REALMEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")
REALCPUS=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$NODE_LINE")
[[ -n $REALMEM ]] || REALMEM=$(awk '/MemTotal/{printf "%d", $2/1024}' /proc/meminfo)
[[ -n $REALCPUS ]] || REALCPUS=$(nproc)

GRES_LINE=""
(( NGPUS > 0 )) && GRES_LINE="Gres=gpu:$NGPUS"
cat >"$BASE/etc/slurm.conf" <<EOF
$MARKER ($BASE/etc/slurm.conf is a copy).
# Node: $HOST, real CPUs=$REALCPUS RealMemory=$REALMEM; advertises CPUs=$NCPUS.
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
AuthInfo=cred_expire=5
CredType=cred/munge
StateSaveLocation=$BASE/state/ctld
SlurmdSpoolDir=$BASE/state/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1
MinJobAge=300
KillWait=5
MailProg=/bin/true
InactiveLimit=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobCompType=jobcomp/none
GresTypes=gpu
AccountingStorageTRES=gres/gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$NCPUS RealMemory=$REALMEM ${GRES_LINE} State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

# Placeholder GPUs: slurmd ignores a gpu GRES without File= ("file-less GPU"), so each one is an empty
# regular file under $BASE/dev, never a device: jobs asking for GPUs schedule exactly as on a site
# (SLURM sets CUDA_VISIBLE_DEVICES) and find no GPU there, which is what the canary must catch.
mkdir -p "$BASE/dev"
{
    echo "$MARKER ($BASE/etc/gres.conf is a copy)."
    echo "AutoDetect=off"
    for ((i = 0; i < NGPUS; i++)); do
        : >"$BASE/dev/gpu$i"
        echo "NodeName=$HOST Name=gpu File=$BASE/dev/gpu$i"
    done
} >"$BASE/etc/gres.conf"

cat >"$BASE/etc/slurmdbd.conf" <<EOF
$MARKER ($BASE/etc/slurmdbd.conf is a copy).
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$DBD_PID
LogFile=$BASE/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
chmod 0600 "$BASE/etc/slurmdbd.conf"

mkdir -p "$ETC"
if [[ -e $ETC/slurm.conf ]] && ! grep -qF "$MARKER" "$ETC/slurm.conf"; then
    if [[ ${COLLAPSE_SLURM_FORCE_CONF:-0} == 1 ]]; then
        cp -p "$ETC/slurm.conf" "$ETC/slurm.conf.bak"
        [[ -e $ETC/slurmdbd.conf ]] && cp -p "$ETC/slurmdbd.conf" "$ETC/slurmdbd.conf.bak"
        log "kept the previous $ETC/slurm.conf as $ETC/slurm.conf.bak"
    else
        fail "$ETC/slurm.conf exists and was not written by this script (a real cluster?);" \
             "set COLLAPSE_SLURM_FORCE_CONF=1 to replace it (a .bak copy is kept)"
    fi
fi
install -m 0644 "$BASE/etc/slurm.conf" "$ETC/slurm.conf"
install -m 0644 "$BASE/etc/gres.conf" "$ETC/gres.conf"
install -m 0600 "$BASE/etc/slurmdbd.conf" "$ETC/slurmdbd.conf"

# ---------------------------------------------------------------- slurmdbd
# slurmdbd reaches the private mariadb through MYSQL_UNIX_PORT.
MYSQL_UNIX_PORT=$MYSQL_SOCK slurmdbd || fail "slurmdbd did not start"
wait_for 30 "slurmdbd" bash -c 'timeout 5 sacctmgr -n -P show cluster format=cluster'

if ! timeout 10 sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
    timeout 10 sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail "sacctmgr add cluster $CLUSTER failed"
fi

# ---------------------------------------------------------------- slurmctld, slurmd
slurmctld || fail "slurmctld did not start"
wait_for 20 "slurmctld" timeout 5 scontrol ping
slurmd || fail "slurmd did not start"

# ---------------------------------------------------------------- ready?
node_idle() {
    local st
    st=$(timeout 5 sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n 1) || st=""
    case $st in
        idle) return 0 ;;
        down* | drain* | drained*)
            # left over from an unclean stop: give it back to the scheduler
            timeout 5 scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
            return 1 ;;
        *) return 1 ;;
    esac
}
wait_for "$TIMEOUT" "node $HOST to be idle" node_idle
wait_for "$TIMEOUT" "sacct to answer" timeout 5 sacct -n -X -S now-1hour

log "cluster $CLUSTER up: node $HOST ($NCPUS CPUs, $NGPUS placeholder GPUs), partition $PARTITION, base dir $BASE"
echo "collapse-slurm: ready in $(elapsed) s"
