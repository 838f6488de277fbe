#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Stops the training started by launch.sh on every worker (and the VM).
set -euo pipefail

USAGE="usage: stop.sh --name=NAME --zone=ZONE [--vm] [options]

Sends SIGTERM to the process group recorded in ~/stepjax-logs/train.pid on
every worker (--worker=all). The run resumes from its latest checkpoint
when launched again with the same --workdir.

required:
  --name=NAME          TPU VM name
  --zone=ZONE          its zone

options:
  --vm                 then also stop the TPU VM (gcloud compute tpus tpu-vm
                       stop; the VM keeps its disk, and is billed again after
                       gcloud compute tpus tpu-vm start). Not every slice type
                       supports stop: delete.sh always works.
  --project=PROJECT    GCP project
  --dry-run            print the commands instead of running them
  -h, --help           this help"

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
require name zone
pid="\$HOME/stepjax-logs/train.pid"
remote="if [ -f ${pid} ] && kill -0 \$(cat ${pid}) 2>/dev/null;"
remote+=" then kill -TERM -- -\$(cat ${pid}) && rm -f ${pid}"
remote+=" && echo \"\$(hostname): stopped\";"
remote+=" else echo \"\$(hostname): not running\"; fi"
ssh_workers "${remote}"
if [[ ${VM} -eq 1 ]]; then
  gcloud_scope
  run gcloud compute tpus tpu-vm stop "${NAME}" "${GCLOUD_SCOPE[@]}"
fi
