"""`stepjax bench data`: SynthMed generation and Grain pipeline throughput.

SynthMed: records generated and rendered per second (112 px). Pipeline:
examples per second out of the batched Grain dataset (decode, Qwen2.5-VL
preprocessing, tokenization, bucket padding; batch 8, SFT targets), in
process and with read threads, timed after the first batch.
"""

from __future__ import annotations

import time

from stepjax.data import pipeline, synthmed
from stepjax.data import tokenizer as tokenizer_lib


def synthmed_rate(num: int = 512, image_size: int = 112) -> float:
  start = time.perf_counter()
  for i in range(num):
    synthmed.make_record(0, i, image_size=image_size)
  return num / (time.perf_counter() - start)


def pipeline_rate(num: int = 512, read_threads: int = 0) -> float:
  source = synthmed.SynthMedSource(num, seed=0, image_size=112)
  opts = pipeline.PipelineOptions(
    batch_size=8,
    token_buckets=(96, 128),
    patch_buckets=(64,),
    read_threads=read_threads,
    target_len=64,
  )
  dataset = pipeline.make_dataset(
    source, tokenizer_lib.load_tokenizer(), opts, shard_index=0, shard_count=1
  )
  iterator = iter(dataset)
  next(iterator)
  count, start = 0, time.perf_counter()
  for batch in iterator:
    count += len(batch["ids"])
  return count / (time.perf_counter() - start)


def main(argv: list[str]) -> dict:
  del argv
  result = {
    "synthmed_records_per_s": synthmed_rate(),
    "pipeline_examples_per_s": pipeline_rate(read_threads=0),
    "pipeline_examples_per_s_2_threads": pipeline_rate(read_threads=2),
  }
  for name, value in result.items():
    print(f"{name:36s} {value:8.0f}")
  return result
