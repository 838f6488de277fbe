#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Deletes a TPU VM (or its queued resource). The gs:// workdir is kept.
set -euo pipefail

USAGE="usage: delete.sh --name=NAME --zone=ZONE [--queued] [--yes] [options]

Deletes the TPU VM and its disks; checkpoints and logs in the gs:// workdir
stay. Asks for confirmation unless --yes (or --dry-run).

required:
  --name=NAME          TPU VM name (the queued-resource id with --queued)
  --zone=ZONE          its zone

options:
  --queued             delete the queued resource created by create.sh
                       --queued, with its TPU VM (--force)
  --yes                do not ask for confirmation
  --project=PROJECT    GCP project
  --dry-run            print the command instead of running it
  -h, --help           this help"

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
require name zone
gcloud_scope
if [[ ${QUEUED} -eq 1 ]]; then
  cmd=(gcloud compute tpus queued-resources delete "${NAME}"
    "${GCLOUD_SCOPE[@]}" --force --quiet)
else
  cmd=(gcloud compute tpus tpu-vm delete "${NAME}" "${GCLOUD_SCOPE[@]}" --quiet)
fi
if [[ ${DRY_RUN} -eq 0 && ${YES} -eq 0 ]]; then
  read -r -p "Delete TPU '${NAME}' in ${ZONE}? [y/N] " answer
  if [[ ${answer} != [yY]* ]]; then
    echo "Not deleted." >&2
    exit 1
  fi
fi
run "${cmd[@]}"
