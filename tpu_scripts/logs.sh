#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Shows the training log of one worker (default 0) or of all workers.
set -euo pipefail

USAGE="usage: logs.sh --name=NAME --zone=ZONE [--worker=N|all] [--lines=N] [--follow]

Prints the end of ~/stepjax-logs/train.log written by launch.sh.

required:
  --name=NAME          TPU VM name
  --zone=ZONE          its zone

options:
  --worker=W           worker number, a list like 0,2, or all (default 0:
                       process 0 logs the metrics)
  --lines=N            lines to show (default 100)
  --follow             keep following the log (Ctrl-C to stop)
  --project=PROJECT    GCP project
  --dry-run            print the command instead of running it
  -h, --help           this help"

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
require name zone
follow=""
if [[ ${FOLLOW} -eq 1 ]]; then
  follow=" -F"
fi
ssh_workers "tail -n ${LINES}${follow} \$HOME/stepjax-logs/train.log" \
  "${WORKER:-0}"
