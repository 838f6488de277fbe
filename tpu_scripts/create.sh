#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Creates a Cloud TPU VM (or a queued resource) for stepjax.
set -euo pipefail

USAGE="usage: create.sh --name=NAME --zone=ZONE --accelerator=TYPE [options]

Creates a TPU VM slice with the JAX runtime image.

required:
  --name=NAME          TPU VM name (also the queued-resource id with --queued)
  --zone=ZONE          e.g. us-east5-a (v5e), us-east5-a / europe-west4-b (v5p)
  --accelerator=TYPE   e.g. v5litepod-16 (v5e, 4 hosts), v5p-8 (1 host)

options:
  --version=V          runtime version; default from the accelerator:
                       v5litepod-*: v2-alpha-tpuv5-lite, v5p-*: v2-alpha-tpuv5,
                       v6e-*: v2-alpha-tpuv6e, v4 and older: tpu-ubuntu2204-base
  --project=PROJECT    GCP project (default: gcloud's core/project)
  --queued             request a queued resource (waits for capacity) instead
                       of creating the VM directly
  --spot               Spot VM (cheaper, may be preempted)
  --preemptible        preemptible VM (legacy; not with --queued)
  --dry-run            print the gcloud command instead of running it
  -h, --help           this help

examples:
  create.sh --name=mrpo-v5e --zone=us-east5-a --accelerator=v5litepod-16 --spot
  create.sh --name=mrpo-v5p --zone=us-east5-a --accelerator=v5p-8 --queued"

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
require name zone accelerator
if [[ -z ${VERSION} ]]; then
  VERSION=$(default_version "${ACCELERATOR}") ||
    die "no default runtime for accelerator '${ACCELERATOR}'; pass --version"
fi
if [[ ${SPOT} -eq 1 && ${PREEMPTIBLE} -eq 1 ]]; then
  die "--spot and --preemptible are exclusive; pick one"
fi
gcloud_scope
if [[ ${QUEUED} -eq 1 ]]; then
  if [[ ${PREEMPTIBLE} -eq 1 ]]; then
    die "--preemptible is not available with --queued; use --spot"
  fi
  cmd=(gcloud compute tpus queued-resources create "${NAME}"
    "--node-id=${NAME}" "${GCLOUD_SCOPE[@]}"
    "--accelerator-type=${ACCELERATOR}" "--runtime-version=${VERSION}")
else
  cmd=(gcloud compute tpus tpu-vm create "${NAME}" "${GCLOUD_SCOPE[@]}"
    "--accelerator-type=${ACCELERATOR}" "--version=${VERSION}")
  if [[ ${PREEMPTIBLE} -eq 1 ]]; then
    cmd+=(--preemptible)
  fi
fi
if [[ ${SPOT} -eq 1 ]]; then
  cmd+=(--spot)
fi
run "${cmd[@]}"
if [[ ${DRY_RUN} -eq 0 && ${QUEUED} -eq 1 ]]; then
  echo "Queued. Watch it with: gcloud compute tpus queued-resources describe" \
    "${NAME} --zone=${ZONE} (state ACTIVE = ready)" >&2
fi
