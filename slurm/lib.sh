# Shared by the sbatch templates in slurm/ (sourced, not run). Functions:
#   si_setup           go to the checkout, run the site's setup lines, put the venv on PATH
#   si_trap_requeue    near the time limit (SIGUSR1 from --signal=B:USR1@S) requeue this job
#   si_run CMD...      run CMD in the background and wait, so that the trap fires while it runs
#   si_mark_complete   record the step as complete (only for jobs written by `safer-instruct run`)
# Environment (all optional):
#   SAFER_INSTRUCT_ROOT          the checkout (default: the directory sbatch was called from)
#   SAFER_INSTRUCT_VENV          virtual environment (default: $SAFER_INSTRUCT_ROOT/.venv, if present)
#   SAFER_INSTRUCT_SETUP         shell lines run first, e.g. "module load cuda/12.4"
#   SAFER_INSTRUCT_MAX_REQUEUES  how often a job may requeue itself at its time limit (default 3)
#   SAFER_INSTRUCT_STEP_DIR, SAFER_INSTRUCT_FINGERPRINT, SAFER_INSTRUCT_OUTPUTS: set by `safer-instruct run`

si_setup() {
  SAFER_INSTRUCT_ROOT="${SAFER_INSTRUCT_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}"
  cd "$SAFER_INSTRUCT_ROOT"
  if [ -n "${SAFER_INSTRUCT_SETUP:-}" ]; then
    eval "$SAFER_INSTRUCT_SETUP"
  fi
  local venv="${SAFER_INSTRUCT_VENV:-$SAFER_INSTRUCT_ROOT/.venv}"
  if [ -x "$venv/bin/python" ]; then
    export PATH="$venv/bin:$PATH"
  fi
  export PYTHONUNBUFFERED=1
  SI_STARTED=$(date +%s)
  echo "safer-instruct: job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST:-$(hostname)}: $*"
}

si_trap_requeue() {
  trap '_si_requeue' USR1
}

_si_requeue() {
  local max="${SAFER_INSTRUCT_MAX_REQUEUES:-3}"
  if [ "${SLURM_RESTART_COUNT:-0}" -lt "$max" ]; then
    echo "safer-instruct: time limit near: requeueing job $SLURM_JOB_ID (it resumes from its out_dir)"
    scontrol requeue "$SLURM_JOB_ID"
  else
    echo "safer-instruct: time limit near and $max requeues used: giving up" >&2
  fi
}

si_run() {
  "$@" &
  local pid=$! status=0
  # `wait` returns early when a trapped signal arrives; keep waiting for the command itself.
  while true; do
    wait "$pid" && status=0 || status=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  return "$status"
}

si_mark_complete() {
  if [ -n "${SAFER_INSTRUCT_STEP_DIR:-}" ]; then
    python -m safer_instruct.pipeline.marker "$SAFER_INSTRUCT_STEP_DIR" \
      --fingerprint "$SAFER_INSTRUCT_FINGERPRINT" --wall-s "$(( $(date +%s) - SI_STARTED ))"
  fi
  echo "safer-instruct: done in $(( $(date +%s) - SI_STARTED )) s"
}
