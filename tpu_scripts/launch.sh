#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Starts `stepjax train` on every worker, in the background.
set -euo pipefail

USAGE="usage: launch.sh --name=NAME --zone=ZONE --config=CONFIG --workdir=gs://... [-- TRAIN_FLAGS...]

Runs the same command on every worker (--worker=all), detached with nohup:
  stepjax train --config=CONFIG --workdir=WORKDIR TRAIN_FLAGS...
Each worker logs to ~/stepjax-logs/train.log and records the process id in
~/stepjax-logs/train.pid (see logs.sh, stop.sh). JAX's multi-host set-up is
automatic on TPU VMs. Relaunching with the same --workdir resumes from its
latest checkpoint.

required:
  --name=NAME          TPU VM name
  --zone=ZONE          its zone
  --config=CONFIG      config file relative to the stepjax checkout, with an
                       optional variant: configs/qwen25vl_7b_mrpo.py:arg=...
  --workdir=DIR        run directory; gs://bucket/... so all workers share it

options:
  --remote-dir=DIR     stepjax checkout on the workers (default stepjax)
  --project=PROJECT    GCP project
  --dry-run            print the command instead of running it
  -h, --help           this help
  -- TRAIN_FLAGS       further flags for stepjax train, e.g.
                       -- --config.rl.algorithm=grpo --config.train.steps=200"

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
require name zone config workdir
if [[ ${WORKDIR} != gs://* ]]; then
  echo "${SCRIPT_NAME}: warning: --workdir=${WORKDIR} is not gs://; on a" \
    "multi-host slice every worker must see the same directory" >&2
fi
train=$(quote_all stepjax train "--config=${CONFIG}" "--workdir=${WORKDIR}" \
  "${EXTRA_ARGS[@]}")
logs="\$HOME/stepjax-logs"
remote="mkdir -p ${logs}"
remote+=" && if [ -f ${logs}/train.pid ] && kill -0 \$(cat ${logs}/train.pid) 2>/dev/null;"
remote+=" then echo \"\$(hostname): already training (pid \$(cat ${logs}/train.pid));"
remote+=" run stop.sh first\" >&2; exit 1; fi"
remote+=" && cd ${REMOTE_DIR} && . .venv/bin/activate"
remote+=" && { nohup setsid ${train} > ${logs}/train.log 2>&1 < /dev/null &"
remote+=" echo \$! > ${logs}/train.pid; }"
remote+=" && echo \"\$(hostname): started pid \$(cat ${logs}/train.pid)\""
ssh_workers "${remote}"
