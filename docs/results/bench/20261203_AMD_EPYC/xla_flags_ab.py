"""Our update alone (bench shapes, 7 timed iterations, no transformers side)
under the XLA_FLAGS of the environment; argv[1] is a label. Run from the
repository root, e.g.:
  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+eltwise \\
    python docs/results/bench/20261203_AMD_EPYC/xla_flags_ab.py "[+eltwise]"
Output of two rounds over the flags in xla_flags_ab.log.
"""
import sys
from stepjax.train import bench
r = bench.bench_train(iters=7, hf=False, peak=False)
print(sys.argv[1], "ours_ms", round(r["ours_s"] * 1e3, 1), "loss", r["ours_loss"])
