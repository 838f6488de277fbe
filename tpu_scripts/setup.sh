#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Installs stepjax (editable, with jax[tpu]) on every worker of a TPU VM.
set -euo pipefail

USAGE="usage: setup.sh --name=NAME --zone=ZONE [--repo=URL | --copy] [options]

On every worker (--worker=all): fetch the stepjax source into ~/stepjax,
create ~/stepjax/.venv with uv (which brings its own Python: the TPU images'
Python 3.10 is too old), run pip install -e '.[tpu]' into it, then print
the process index and the number of TPU devices JAX sees. Safe to re-run
(updates the checkout, keeps the venv).

required:
  --name=NAME          TPU VM name
  --zone=ZONE          its zone
  and one source:
  --repo=URL           git URL to clone (default: this checkout's origin)
  --copy               copy this checkout's committed HEAD (git archive)
                       instead of cloning; uncommitted changes are not sent

options:
  --branch=BRANCH      branch or tag to check out with --repo (default main)
  --remote-dir=DIR     install directory on the workers (default stepjax,
                       relative to the home directory)
  --python=VERSION     Python for the venv, fetched by uv (default 3.12)
  --project=PROJECT    GCP project
  --dry-run            print the commands instead of running them
  -h, --help           this help"

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
parse_args "$@"
require name zone
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# TPU VM images ship Ubuntu 22.04's Python 3.10 (stepjax needs >= 3.11) and
# may lack python3-venv: uv creates the venv with its own Python build.
uv="\$HOME/.local/bin/uv"
venv="${REMOTE_DIR}/.venv"
install="python3 -m pip install --quiet --user --upgrade uv"
install+=" && ${uv} venv --quiet --allow-existing --python $(quote "${PYTHON}") ${venv}"
install+=" && ${uv} pip install --quiet --python ${venv}/bin/python"
install+=" -e '${REMOTE_DIR}[tpu]'"
install+=" && ${venv}/bin/python -c"
install+=" 'import jax; print(jax.process_index(), jax.device_count())'"

if [[ ${COPY} -eq 1 ]]; then
  archive="${TMPDIR:-/tmp}/stepjax-src.tar.gz"
  run git -C "${here}" archive --format=tar.gz "--output=${archive}" HEAD
  gcloud_scope
  run gcloud compute tpus tpu-vm scp "${archive}" "${NAME}:stepjax-src.tar.gz" \
    "${GCLOUD_SCOPE[@]}" --worker=all
  fetch="mkdir -p ${REMOTE_DIR}"
  fetch+=" && tar -xzf stepjax-src.tar.gz -C ${REMOTE_DIR}"
else
  if [[ -z ${REPO} ]]; then
    REPO=$(git -C "${here}" remote get-url origin 2>/dev/null) ||
      die "missing required flag --repo (this checkout has no 'origin' remote); or use --copy"
  fi
  repo=$(quote "${REPO}")
  branch=$(quote "${BRANCH}")
  fetch="if [ -d ${REMOTE_DIR}/.git ]; then"
  fetch+=" git -C ${REMOTE_DIR} fetch --quiet origin ${branch}"
  fetch+=" && git -C ${REMOTE_DIR} checkout --quiet FETCH_HEAD;"
  fetch+=" else git clone --quiet --branch ${branch} ${repo} ${REMOTE_DIR}; fi"
fi
ssh_workers "set -e; ${fetch} && ${install}"
