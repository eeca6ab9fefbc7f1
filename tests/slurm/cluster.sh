#!/usr/bin/env bash
# A real single-node SLURM cluster on 127.0.0.1 for the cluster tests (Debian's slurm-wlm and
# munge; one node with this machine's CPUs, accounting off: docs/cluster.md).
#   cluster.sh install   apt-get install slurm-wlm munge (needs root and the Debian registry)
#   cluster.sh start DIR write /etc/slurm/{slurm,gres}.conf (state and logs under DIR), start
#                        munged, slurmctld, slurmd. The config must sit at the default path: srun
#                        inside a job step ignores SLURM_CONF and looks there.
#   cluster.sh stop DIR  stop the daemons this script started (pids under DIR)
# One simulated GPU is declared as a GRES (no device file): it tests that GPU requests reach
# the scheduler, not CUDA. Accounting is disabled, so use squeue for status and no account.
set -euo pipefail
cmd=${1:?usage: cluster.sh install|start DIR|stop DIR}
dir=${2:-/tmp/lmdlt-slurm}

case "$cmd" in
install)
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
  fi
  ;;
start)
  mkdir -p "$dir"/{state,spool,log}
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  conf=/etc/slurm
  mkdir -p "$conf"
  cat > "$conf/slurm.conf" <<CONF
ClusterName=lmdlt-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
ReturnToService=2
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  echo "NodeName=$host Name=gpu Count=1 File=/dev/null" > "$conf/gres.conf"
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  if ! pgrep -x munged >/dev/null; then
    if id munge >/dev/null 2>&1; then su -s /bin/sh munge -c munged || munged --force; else munged --force; fi
    touch "$dir/started-munged"
  fi
  slurmctld
  slurmd
  for _ in $(seq 1 30); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "SLURM up ($conf/slurm.conf, logs in $dir/log)"; exit 0
    fi
    sleep 1
  done
  echo "SLURM did not come up; logs in $dir/log" >&2
  sinfo >&2 || true
  exit 1
  ;;
stop)
  for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid"; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
  done
  if [ -f "$dir/started-munged" ]; then pkill -x munged || true; rm -f "$dir/started-munged"; fi
  ;;
*)
  echo "unknown command $cmd" >&2; exit 2 ;;
esac
