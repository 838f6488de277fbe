#!/usr/bin/env bash
# Every GPU figure of `stepjax bench gpu` in one run, on a machine that has
# JAX with CUDA (and flax, optax, etils) installed and no internet: installs
# the carried wheels of what is missing, names the GPU, runs the bench
# under a time limit and writes its JSON and log.
set -euo pipefail

USAGE="usage: scripts/gpu_bench.sh [--out=DIR] [--wheels=DIR] [--limit=SECONDS]
                           [--tiny] [--fetch-wheels] [key=value ...]

On the GPU machine (from the repository root; nothing is fetched there):
for each Python module the bench needs and the machine lacks, installs its
wheel from --wheels into a scratch directory on PYTHONPATH, prints
nvidia-smi, then runs 'python3 -m stepjax bench gpu' (the RL update's
tokens/s and MFU, the sampler's tokens/s, at the 3B model's shapes in
bf16) for at most --limit seconds. Figures go to DIR/gpu_bench.json, the
whole output to DIR/gpu_bench.log.

Where pip can reach an index, --fetch-wheels downloads those wheels (the
versions installed here) into --wheels and exits; carry that directory to
the GPU machine with the repository.

options:
  --out=DIR          output directory (default: \$OUT if set, else
                     runs/gpu_bench)
  --wheels=DIR       wheels to install from (default: .whl)
  --limit=SECONDS    time limit of the bench itself (default 450)
  --tiny             the tiny preset at small shapes (a CPU check of this
                     script; no GPU needed)
  --fetch-wheels     download the wheels instead (see above)
  key=value          more 'stepjax bench gpu' options, e.g. iters=5,
                     param_dtype=bfloat16 (80 GB chips), peak_tflops=989
  -h, --help         this help"

# module:distribution pairs the bench imports beyond JAX's own stack.
NEEDED=("ml_collections:ml-collections")
# Already on a JAX CUDA machine; the bench stops early if one is missing.
PRESENT=(jax flax optax etils absl numpy yaml)

OUT_DIR=${OUT:-runs/gpu_bench}
WHEELS=.whl
LIMIT=450
TINY=0
FETCH=0
EXTRA=()
for arg in "$@"; do
  case ${arg} in
    --out=*) OUT_DIR=${arg#*=} ;;
    --wheels=*) WHEELS=${arg#*=} ;;
    --limit=*) LIMIT=${arg#*=} ;;
    --tiny) TINY=1 ;;
    --fetch-wheels) FETCH=1 ;;
    -h | --help)
      echo "${USAGE}"
      exit 0
      ;;
    *=*) EXTRA+=("${arg}") ;;
    *)
      echo "error: unknown argument ${arg}; see --help" >&2
      exit 2
      ;;
  esac
done
[[ ${LIMIT} =~ ^[0-9]+$ ]] || {
  echo "error: --limit=${LIMIT}: expected whole seconds" >&2
  exit 2
}

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}

has_module() {
  "${PYTHON}" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)"
}

if [[ ${FETCH} -eq 1 ]]; then
  mkdir -p "${WHEELS}"
  for pair in "${NEEDED[@]}"; do
    dist=${pair#*:}
    version=$("${PYTHON}" -c "import importlib.metadata as m; print(m.version('${dist}'))")
    "${PYTHON}" -m pip download --quiet --no-deps --only-binary=:all: \
      -d "${WHEELS}" "${dist}==${version}"
  done
  ls -l "${WHEELS}"
  exit 0
fi

mkdir -p "${OUT_DIR}"
site=${TMPDIR:-/tmp}/stepjax_gpu_site
for pair in "${NEEDED[@]}"; do
  module=${pair%%:*}
  dist=${pair#*:}
  if has_module "${module}"; then
    continue
  fi
  # Wheel names spell the distribution with underscores.
  shopt -s nullglob
  found=("${WHEELS}/${dist//-/_}"-*.whl)
  shopt -u nullglob
  if [[ ${#found[@]} -eq 0 ]]; then
    echo "error: ${module} is missing and ${WHEELS} holds no ${dist} wheel;" \
      "run scripts/gpu_bench.sh --fetch-wheels where pip has an index" >&2
    exit 2
  fi
  "${PYTHON}" -m pip install --quiet --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "${site}" "${found[@]}"
  echo "installed ${found[*]} into ${site}"
done
export PYTHONPATH="${PWD}:${site}${PYTHONPATH:+:${PYTHONPATH}}"
for module in "${PRESENT[@]}"; do
  has_module "${module}" || {
    echo "error: ${module} is not installed; this script expects JAX with" \
      "CUDA and its usual stack" >&2
    exit 2
  }
done

log=${OUT_DIR}/gpu_bench.log
{
  date -u
  command -v nvidia-smi >/dev/null && nvidia-smi \
    --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "${PYTHON}" -c "import jax; print('jax', jax.__version__, jax.devices())"
} 2>&1 | tee "${log}"

args=()
[[ ${TINY} -eq 1 ]] && args+=(tiny)
args+=("${EXTRA[@]}")
# The float32 state of the 3B update takes ~60 GB: let JAX take more of the
# GPU's memory than its default 75%.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.94}
export PYTHONUNBUFFERED=1
start=${SECONDS}
status=0
timeout --signal=INT --kill-after=20 "${LIMIT}" \
  "${PYTHON}" -m stepjax bench gpu "${args[@]}" \
  "--out=${OUT_DIR}/gpu_bench.json" 2>&1 | tee -a "${log}" || status=$?
echo "bench gpu: exit ${status} after $((SECONDS - start)) s" | tee -a "${log}"
exit "${status}"
