#!/bin/bash
# Alternates `stepjax bench rollout` between the code before the typed-batches merge and after.
source /work/main/.venv/bin/activate
out=/tmp/d/bench_ab; mkdir -p $out
for i in 1 2 3; do
  (cd /work/before && python -m stepjax bench rollout --out=$out/before_$i.json > $out/before_$i.log 2>&1)
  (cd /work/main && python -m stepjax bench rollout --out=$out/after_$i.json > $out/after_$i.log 2>&1)
done
