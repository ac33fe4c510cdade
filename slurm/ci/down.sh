#!/usr/bin/env bash
# Stop the localhost Slurm cluster that slurm/ci/up.sh started. Idempotent; safe when nothing runs.
# Cancels jobs first (SIGTERM to slurmd leaves running job steps alive), then stops slurmd,
# slurmctld, slurmdbd, MariaDB and munge, checking /proc/PID/comm before signalling any pid.
set -uo pipefail

say() { echo "slurm-ci: $*"; }

stop() {  # stop NAME PIDFILE
  local name=$1 pidfile=$2 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile" 2>/dev/null)
  if [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$name" ]; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 150); do
      [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || break
      sleep 0.1
    done
    if [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
      say "$name ($pid) ignored SIGTERM for 15 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null
    fi
  fi
  # slurmctld and slurmdbd leave their pid files behind; a stale one breaks `apt-get purge`.
  rm -f "$pidfile"
}

if command -v scancel >/dev/null 2>&1 && scontrol ping >/dev/null 2>&1; then
  scancel --user=root 2>/dev/null
  for _ in $(seq 100); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.1; done
fi
stop slurmd /run/slurmd.pid
stop slurmctld /run/slurmctld.pid
stop slurmdbd /run/slurmdbd.pid
stop mariadbd /run/mysqld/mysqld.pid
stop munged /run/munge/munged.pid
say "down"
