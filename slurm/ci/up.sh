#!/usr/bin/env bash
# Install (idempotent) and start a single-node Slurm 22.05 cluster on localhost, for tests and CI.
#
#   bash slurm/ci/up.sh            # about 15 s from nothing, about 4 s with the packages installed
#   bash slurm/ci/down.sh          # stop it again
#
# Verified on Debian bookworm, as root, without systemd and without cgroups. munge for auth, slurmdbd +
# MariaDB for real `sacct` (submitit needs it to see job states). Options (environment):
#   SLURM_ACCOUNTING=slurmdbd|none   none: no MariaDB/slurmdbd (no sacct; submitit states UNKNOWN)
#   SLURM_CPUS=N                     advertise N CPUs (oversubscribes the real cores)
#   SLURM_FRESH=1|0                  1 (default): wipe job state and the accounting database first
# Re-running it while everything is up only checks that a job step runs.
set -euo pipefail

ACCOUNTING="${SLURM_ACCOUNTING:-slurmdbd}"
FRESH="${SLURM_FRESH:-1}"
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
LOG_DIR=/var/log/slurm

if [ "$(id -u)" -ne 0 ]; then
  echo "slurm/ci/up.sh: must run as root (it installs packages and starts daemons)" >&2
  exit 1
fi

say() { echo "slurm-ci: $*"; }

# A pid file only counts if the process it names is the daemon (pids wrap; /run is not a tmpfs).
running() {  # running NAME PIDFILE
  local pid
  [ -f "$2" ] || return 1
  pid=$(cat "$2" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$1" ]
}

# --- packages ---------------------------------------------------------------------------------
packages=(slurmctld slurmd slurm-client munge)
[ "$ACCOUNTING" = slurmdbd ] && packages+=(slurmdbd mariadb-server)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- already up? ------------------------------------------------------------------------------
if running slurmctld /run/slurmctld.pid && running slurmd /run/slurmd.pid \
   && { [ "$ACCOUNTING" != slurmdbd ] || running slurmdbd /run/slurmdbd.pid; }; then
  if timeout 30 srun -t 1 true 2>/dev/null; then
    say "already up"
    exit 0
  fi
  say "daemons run but no job step does: restarting"
  bash "$(dirname "$0")/down.sh"
fi

# --- configuration ----------------------------------------------------------------------------
mkdir -p /var/spool/slurmctld /var/spool/slurmd "$LOG_DIR" /etc/slurm
chown slurm:slurm /var/spool/slurmctld "$LOG_DIR"
if [ "$FRESH" = 1 ]; then
  rm -rf /var/spool/slurmctld/* /var/spool/slurmd/*
fi

real_cpus=$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p')
real_mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
cpus="${SLURM_CPUS:-$real_cpus}"
mem=$(( real_mem * 9 / 10 ))  # above the real value the node would be drained
overrides=""
[ "$cpus" -gt "$real_cpus" ] && overrides="SlurmdParameters=config_overrides"

if [ "$ACCOUNTING" = slurmdbd ]; then
  accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819"
else
  accounting="AccountingStorageType=accounting_storage/none"
fi

cat > "$CONF" <<CONF_EOF
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
$accounting
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG_DIR/jobcomp.log
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
DependencyParameters=kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MailProg=/bin/true
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MinJobAge=300
KillWait=5
InactiveLimit=0
Waittime=0
$overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF_EOF

# --- munge ------------------------------------------------------------------------------------
if ! running munged /run/munge/munged.pid; then
  mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done

# --- accounting: MariaDB + slurmdbd -----------------------------------------------------------
if [ "$ACCOUNTING" = slurmdbd ]; then
  if ! running mariadbd /run/mysqld/mysqld.pid; then
    mkdir -p /run/mysqld && chown mysql:root /run/mysqld
    rm -f /run/mysqld/mysqld.pid
    /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --innodb-buffer-pool-size=64M \
      --innodb-lock-wait-timeout=900 --pid-file=/run/mysqld/mysqld.pid >"$LOG_DIR/mariadb.log" 2>&1 &
  fi
  for _ in $(seq 100); do mariadb -e "SELECT 1" >/dev/null 2>&1 && break; sleep 0.1; done
  fresh_db=""
  [ "$FRESH" = 1 ] && fresh_db="DROP DATABASE IF EXISTS slurm_acct_db;"
  mariadb -e "$fresh_db CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat > "$DBD_CONF" <<DBD_EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=slurm
LogFile=$LOG_DIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmpw
StorageLoc=slurm_acct_db
DBD_EOF
  chown slurm:slurm "$DBD_CONF" && chmod 600 "$DBD_CONF"  # slurmdbd refuses any other owner/mode
  rm -f /run/slurmdbd.pid
  /usr/sbin/slurmdbd
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/6819) 2>/dev/null && break; sleep 0.1; done
fi

# --- Slurm ------------------------------------------------------------------------------------
rm -f /run/slurmctld.pid /run/slurmd.pid
/usr/sbin/slurmctld
/usr/sbin/slurmd -N localhost
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.1; done
# Ready when a job step actually runs (srun waits until the node has registered).
if ! timeout 60 srun -t 1 true 2>/dev/null; then
  echo "slurm/ci/up.sh: the cluster did not run a job step within 60 s; see $LOG_DIR/" >&2
  exit 1
fi
say "up ($(sinfo -h -o '%P %D %c CPUs %t'), accounting: $ACCOUNTING)"
