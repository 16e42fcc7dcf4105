#!/usr/bin/env bash
# A one-node Slurm cluster on this machine (Debian's slurm-wlm, munge auth), for the tests of stage 01's
# --executor slurm (tests/data/test_executors.py). Idempotent; run as root. Partition: "debug".
set -euo pipefail
STATE=/tmp/lumi-slurm
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge
fi
if sinfo --noheader --states=idle,mixed,allocated 2>/dev/null | grep -q debug; then
  exit 0  # already up
fi
mkdir -p "$STATE"/{state,spool,log} /run/munge /etc/slurm
[ -s /etc/munge/munge.key ] || mungekey --create --force 2>/dev/null || create-munge-key -f
chown -R munge:munge /run/munge /etc/munge 2>/dev/null || true
pgrep -x munged >/dev/null || munged --force
node=$(hostname -s)
cpus=$(nproc)
memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))  # MB: half, as the tests' tasks are small
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=lumi-ci
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
NodeName=$node CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 30); do
  sinfo --noheader --states=idle 2>/dev/null | grep -q debug && { sinfo; exit 0; }
  sleep 1
done
echo "Slurm did not come up; logs in $STATE/log" >&2
tail -20 "$STATE"/log/*.log >&2
exit 1
