#!/usr/bin/env bash
# Shared helpers for the stepjax Cloud TPU scripts; sourced, never run.
#
# Provides:
#   parse_args "$@"   sets the variables below from --flags; words after
#                     `--` land in EXTRA_ARGS (passed on to `stepjax train`).
#   require FLAG...   fails naming the first missing flag (e.g. require name).
#   run CMD...        prints CMD (shell-quoted, one line) with --dry-run,
#                     else executes it.
#   gcloud_scope      appends --zone/--project to the array GCLOUD_SCOPE.
#   die MSG           prints "SCRIPT: error: MSG" to stderr and exits 2.
#
# Every flag may also come from the environment: STEPJAX_TPU_NAME,
# STEPJAX_TPU_ZONE, STEPJAX_TPU_PROJECT, STEPJAX_TPU_ACCELERATOR,
# STEPJAX_TPU_VERSION (a flag wins over the environment).
# Each script defines USAGE (its --help text) before sourcing this file.

# Variables set here are read by the scripts that source this file.
# shellcheck disable=SC2034

SCRIPT_NAME=$(basename "${0}")

NAME=${STEPJAX_TPU_NAME:-}
ZONE=${STEPJAX_TPU_ZONE:-}
PROJECT=${STEPJAX_TPU_PROJECT:-}
ACCELERATOR=${STEPJAX_TPU_ACCELERATOR:-}
VERSION=${STEPJAX_TPU_VERSION:-}
DRY_RUN=0
QUEUED=0
SPOT=0
PREEMPTIBLE=0
YES=0
FOLLOW=0
VM=0
COPY=0
CONFIG=""
WORKDIR=""
REPO=""
BRANCH="main"
WORKER=""
LINES=100
REMOTE_DIR="stepjax"
PYTHON="3.12"
EXTRA_ARGS=()
GCLOUD_SCOPE=()

die() {
  echo "${SCRIPT_NAME}: error: $*" >&2
  echo "Run '${SCRIPT_NAME} --help' for usage." >&2
  exit 2
}

usage() {
  printf '%s\n' "${USAGE}"
  exit 0
}

# _value FLAG "$@": the value of `--flag=value` or `--flag value`.
# Sets SHIFT to the number of words consumed.
_value() {
  local flag=$1 word=$2
  if [[ ${word} == *=* ]]; then
    VALUE=${word#*=}
    SHIFT=1
  elif [[ $# -ge 3 && ${3} != --* ]]; then
    VALUE=$3
    SHIFT=2
  else
    die "${flag} needs a value (${flag}=...)"
  fi
  if [[ -z ${VALUE} ]]; then
    die "${flag} needs a non-empty value"
  fi
}

parse_args() {
  while [[ $# -gt 0 ]]; do
    SHIFT=1
    case $1 in
      -h | --help) usage ;;
      --dry-run) DRY_RUN=1 ;;
      --queued) QUEUED=1 ;;
      --spot) SPOT=1 ;;
      --preemptible) PREEMPTIBLE=1 ;;
      --yes) YES=1 ;;
      --follow) FOLLOW=1 ;;
      --vm) VM=1 ;;
      --copy) COPY=1 ;;
      --name | --name=*) _value --name "$@" && NAME=${VALUE} ;;
      --zone | --zone=*) _value --zone "$@" && ZONE=${VALUE} ;;
      --project | --project=*) _value --project "$@" && PROJECT=${VALUE} ;;
      --accelerator | --accelerator=*)
        _value --accelerator "$@" && ACCELERATOR=${VALUE} ;;
      --version | --version=*) _value --version "$@" && VERSION=${VALUE} ;;
      --config | --config=*) _value --config "$@" && CONFIG=${VALUE} ;;
      --workdir | --workdir=*) _value --workdir "$@" && WORKDIR=${VALUE} ;;
      --repo | --repo=*) _value --repo "$@" && REPO=${VALUE} ;;
      --branch | --branch=*) _value --branch "$@" && BRANCH=${VALUE} ;;
      --worker | --worker=*) _value --worker "$@" && WORKER=${VALUE} ;;
      --lines | --lines=*) _value --lines "$@" && LINES=${VALUE} ;;
      --python | --python=*) _value --python "$@" && PYTHON=${VALUE} ;;
      --remote-dir | --remote-dir=*)
        _value --remote-dir "$@" && REMOTE_DIR=${VALUE} ;;
      --)
        shift
        EXTRA_ARGS=("$@")
        return 0
        ;;
      *) die "unknown argument '$1'" ;;
    esac
    shift "${SHIFT}"
  done
  _check_common
}

_check_common() {
  if [[ -n ${WORKER} && ! ${WORKER} =~ ^(all|[0-9]+(,[0-9]+)*)$ ]]; then
    die "--worker must be 'all' or worker numbers like 0 or 0,1 (got '${WORKER}')"
  fi
  if [[ ! ${LINES} =~ ^[0-9]+$ ]]; then
    die "--lines must be a number (got '${LINES}')"
  fi
  # The remote directory is pasted unquoted into remote shell commands so
  # that a leading ~ expands there: allow only safe path characters.
  if [[ ! ${REMOTE_DIR} =~ ^[A-Za-z0-9_./~-]+$ ]]; then
    die "--remote-dir may only use letters, digits and _ . / ~ - (got '${REMOTE_DIR}')"
  fi
}

# require FLAG...: each FLAG is a flag name without dashes (name, zone, ...).
require() {
  local flag var
  for flag in "$@"; do
    var=$(echo "${flag}" | tr 'a-z-' 'A-Z_')
    if [[ -z ${!var:-} ]]; then
      die "missing required flag --${flag}"
    fi
  done
}

# quote WORD: WORD as a shell word that survives one round of parsing.
quote() {
  local word=$1
  if [[ ${word} =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "${word}"
  else
    local squote="'\\''"
    printf "'%s'" "${word//\'/${squote}}"
  fi
}

# quote_all WORD...: the words, each quoted, separated by spaces.
quote_all() {
  local out=() word
  for word in "$@"; do
    out+=("$(quote "${word}")")
  done
  printf '%s' "${out[*]}"
}

run() {
  if [[ ${DRY_RUN} -eq 1 ]]; then
    quote_all "$@"
    printf '\n'
    return 0
  fi
  if [[ $1 == gcloud ]] && ! command -v gcloud >/dev/null 2>&1; then
    die "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) or use --dry-run"
  fi
  "$@"
}

gcloud_scope() {
  GCLOUD_SCOPE=("--zone=${ZONE}")
  if [[ -n ${PROJECT} ]]; then
    GCLOUD_SCOPE+=("--project=${PROJECT}")
  fi
}

# default_version ACCELERATOR: the JAX runtime image for a TPU generation.
default_version() {
  case $1 in
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v5litepod-* | v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v4-* | v3-* | v2-*) echo "tpu-ubuntu2204-base" ;;
    *) return 1 ;;
  esac
}

# ssh_workers COMMAND [WORKER]: run COMMAND over ssh on WORKER (default all).
ssh_workers() {
  local command=$1 worker=${2:-all}
  gcloud_scope
  run gcloud compute tpus tpu-vm ssh "${NAME}" "${GCLOUD_SCOPE[@]}" \
    "--worker=${worker}" "--command=${command}"
}
