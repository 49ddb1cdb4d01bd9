#!/usr/bin/env bash
# A real single-node Slurm cluster in one directory, for the Slurm executor's tests and benchmark.
#
#   scripts/slurm-cluster.sh install      # Debian's slurmctld, slurmd, slurm-client, munge (root)
#   scripts/slurm-cluster.sh start DIR    # daemons up, node idle; prints `export SLURM_CONF=…`
#   scripts/slurm-cluster.sh stop DIR     # stops the daemons by the PIDs in DIR, never by name
#
# The node claims 8 CPUs (whatever the machine has: `config_overrides`) and two fake GPUs
# (`gpu:2`, character devices), so GPU limits, not CPU limits, decide how many GPU jobs run at
# once. Everything, state and logs included, lives in DIR; nothing is written to /etc.
set -euo pipefail

cmd=${1:-}
case "$cmd" in
install)
    if command -v slurmctld >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null; then
        exit 0
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >/dev/null
    ;;
start)
    D=$(realpath -m "${2:?usage: slurm-cluster.sh start DIR}")
    mkdir -p "$D/state" "$D/spool" "$D/log"
    mkdir -p -m 700 "$D/munge"
    [ -f "$D/munge/munge.key" ] || mungekey -c -k "$D/munge/munge.key"
    munged --force --socket="$D/munge/munge.socket" --key-file="$D/munge/munge.key" \
        --log-file="$D/log/munged.log" --pid-file="$D/munge/munged.pid" \
        --seed-file="$D/munge/munged.seed"
    for i in 0 1; do [ -e "$D/fakegpu$i" ] || mknod "$D/fakegpu$i" c 1 3; done
    cat >"$D/gres.conf" <<EOF
NodeName=localhost Name=gpu File=$D/fakegpu[0-1]
EOF
    cat >"$D/slurm.conf" <<EOF
ClusterName=tracelab
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$D/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$D/state
SlurmdSpoolDir=$D/spool
SlurmctldPidFile=$D/slurmctld.pid
SlurmdPidFile=$D/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0
DependencyParameters=kill_invalid_depend
MpiDefault=none
ReturnToService=2
MinJobAge=300
MailProg=/bin/true
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=8 RealMemory=16000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF=$D/slurm.conf
    slurmctld -i
    slurmd
    for _ in $(seq 100); do
        sinfo -h -o %t 2>/dev/null | grep -qx idle && break
        sleep 0.1
    done
    sinfo -h -o %t | grep -qx idle || {
        echo "slurm-cluster: the node did not become idle; logs in $D/log" >&2
        exit 1
    }
    echo "export SLURM_CONF=$D/slurm.conf"
    ;;
stop)
    D=$(realpath -m "${2:?usage: slurm-cluster.sh stop DIR}")
    for pid in "$D/slurmd.pid" "$D/slurmctld.pid" "$D/munge/munged.pid"; do
        [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
    done
    ;;
*)
    echo "usage: slurm-cluster.sh install | start DIR | stop DIR" >&2
    exit 2
    ;;
esac
