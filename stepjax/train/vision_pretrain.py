"""Vision-tower pretraining: the tower learns to see SynthMed scans first.

A policy built from random weights must learn to see from SFT's
cross-entropy alone, and on SynthMed it does not: the tower's features
change with the lesions, but too little and too diffusely for the language
model to read them (docs/results/diagnosis, sections 7, 8 and 12). The
paper's backbones come with an image encoder trained on its own task first;
this is that step for the small presets.

With `sft.vision_pretrain_steps` = N > 0, a run whose SFT starts from a
fresh policy first trains the vision tower alone for N steps on
`sft.vision_pretrain_scans` SynthMed scans of their own seed. A per-token
linear head on the merged image features must tell, for every merged token,
which organs it shows and whether a lesion of each is in it
(`synthmed.token_findings`); per-token binary cross-entropy, Adam at
`sft.vision_pretrain_lr`. The head is then dropped. Its held-out accuracy
(lesion presence per organ and scan: the largest lesion logit over the
scan's tokens) on `sft.vision_pretrain_eval_scans` scans of another seed
is printed and written to WORKDIR/vision_pretrain.json. `sft.freeze_vision`
then keeps the tower fixed through SFT, and `rl.freeze_vision` through RL.

The stage is a pure function of the seed: a run killed before its first
checkpoint repeats it exactly; later checkpoints hold the pretrained tower.

  pretrain(config, cfg, policy_graphdef, params, tokenizer, place, log)
      -> (params with the pretrained tower, summary dict)
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from stepjax import image_slots, rows
from stepjax.data import pipeline, synthmed
from stepjax.models import config as config_lib

# Scan seeds of the stage, apart from the training / eval / findings sets.
TRAIN_SEED_OFFSET = 50_000
HELD_OUT_SEED_OFFSET = 60_000
LOG_EVERY = 250
EVAL_SCANS = 256  # sft.vision_pretrain_eval_scans of configs from before it


@flax.struct.dataclass
class TokenBatch:
  """A pretraining batch: the scans' image slots (whole on every device)
  and the per-token labels of each slot (split by slot)."""

  images: image_slots.ImageSlots = rows.replicated_field()
  labels_IxMxC: jax.Array = None


class TokenHead(nnx.Module):
  """Linear(E, C) per merged image token: logits of `TOKEN_FINDINGS`. It
  reads the tower's main output (the first E features; Qwen3-VL's
  DeepStack levels follow them)."""

  def __init__(self, cfg: config_lib.ModelConfig, rngs: nnx.Rngs):
    self.width = cfg.vision.out_hidden_size
    self.dense = nnx.Linear(self.width, len(synthmed.TOKEN_FINDINGS), rngs=rngs)

  def __call__(self, img_IxMxE: jax.Array) -> jax.Array:
    return self.dense(img_IxMxE[..., : self.width].astype(jnp.float32))


def token_labels(
  batch: dict[str, Any], cfg: config_lib.ModelConfig, tokens_per_slot: int
) -> np.ndarray:
  """float32[I, M, C]: `synthmed.token_findings` of each image slot's scan
  (its prompt's meta), laid out as the tower's merged tokens; an empty
  slot, and tokens past a slot's grid, are all zero (and masked out)."""
  grid_Ix3 = np.asarray(batch["grid_thw_Ix3"])
  owner_I = np.asarray(batch["image_prompt_I"])
  merge = cfg.vision.spatial_merge_size
  out = np.zeros(
    (len(grid_Ix3), tokens_per_slot, len(synthmed.TOKEN_FINDINGS)), np.float32
  )
  for i, (t, h, w) in enumerate(grid_Ix3):
    if t == 0:
      continue
    gh, gw = int(h) // merge, int(w) // merge
    labels = synthmed.token_findings(batch["metas"][owner_I[i]], gh, gw)
    out[i, : gh * gw] = np.tile(labels, (int(t), 1))[:tokens_per_slot]
  return out


def loss_and_metrics(
  logits_IxMxC: jax.Array, labels_IxMxC: jax.Array, valid_IxM: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Per-token BCE over the valid tokens, and two accuracies: per token and
  output, and per scan and organ (a lesion of organ k is in the scan when
  its largest lesion logit over the scan's tokens is > 0), the latter as
  hits and counts per organ (`synthmed.FINDINGS`)."""
  valid = valid_IxM.astype(jnp.float32)[..., None]
  bce = optax.sigmoid_binary_cross_entropy(logits_IxMxC, labels_IxMxC)
  n = jnp.maximum(valid.sum() * logits_IxMxC.shape[-1], 1.0)
  loss = (bce * valid).sum() / n
  token_hit = ((logits_IxMxC > 0) == (labels_IxMxC > 0)) * valid
  f = len(synthmed.FINDINGS)
  lesion = jnp.where(valid > 0, logits_IxMxC[..., :f], -jnp.inf).max(axis=1)
  has_lesion = labels_IxMxC[..., :f].max(axis=1) > 0
  shown = labels_IxMxC[..., f : 2 * f].max(axis=1) > 0  # organs in the scan
  scan_hit = ((lesion > 0) == has_lesion) * shown
  return loss, {
    "loss": loss,
    "token_accuracy": token_hit.sum() / n,
    "scan_hits_F": scan_hit.sum(axis=0),
    "scan_count_F": shown.sum(axis=0),
  }


def pretrain(
  config: Any,
  cfg: config_lib.ModelConfig,
  policy_graphdef: Any,
  params: Any,
  tokenizer: Any,
  place: Callable[[TokenBatch], TokenBatch],
  log: Callable[[str], None] | None = None,
) -> tuple[Any, dict]:
  """Trains the tower inside `params` (the policy's nnx.State) for
  `sft.vision_pretrain_steps` steps; returns (params with the trained
  tower, summary). `place` puts a `TokenBatch` on the mesh (the
  trainer's own placement)."""
  log = log or functools.partial(print, flush=True)
  steps = int(config.sft.vision_pretrain_steps)
  model = nnx.merge(policy_graphdef, params)
  tower_gd, tower_params = nnx.split(model.visual, nnx.Param)
  head_gd, head_params = nnx.split(
    TokenHead(cfg, nnx.Rngs(config.seed + TRAIN_SEED_OFFSET)), nnx.Param
  )
  tx = optax.adam(float(config.sft.vision_pretrain_lr))
  trainables = {"tower": tower_params, "head": head_params}
  opt_state = tx.init(trainables)

  def forward(trainables, batch):
    tower = nnx.merge(tower_gd, trainables["tower"])
    head = nnx.merge(head_gd, trainables["head"])
    images = batch.images
    img_IxMxE, valid_IxM = tower(images.pixels_IxNxP, images.vision_meta)
    return loss_and_metrics(head(img_IxMxE), batch.labels_IxMxC, valid_IxM)

  @jax.jit
  def train_step(trainables, opt_state, batch):
    (_, metrics), grads = jax.value_and_grad(forward, has_aux=True)(
      trainables, batch
    )
    updates, opt_state = tx.update(grads, opt_state, trainables)
    return optax.apply_updates(trainables, updates), opt_state, metrics

  evaluate = jax.jit(lambda trainables, batch: forward(trainables, batch)[1])

  def placed(batch):
    images = image_slots.from_batch(batch, len(batch["metas"]), cfg)
    patches = images.pixels_IxNxP.shape[1]
    tokens = patches // cfg.vision.spatial_merge_size**2
    labels = token_labels(batch, cfg, tokens)
    return place(TokenBatch(images=images, labels_IxMxC=labels))

  train_batches = iter(_dataset(config, cfg, tokenizer, TRAIN_SEED_OFFSET))
  curve = []
  start = time.perf_counter()
  for step in range(steps):
    trainables, opt_state, metrics = train_step(
      trainables, opt_state, placed(next(train_batches))
    )
    if (step + 1) % LOG_EVERY == 0 or step + 1 == steps:
      m = jax.device_get(metrics)
      row = {
        "step": step + 1,
        "loss": float(m["loss"]),
        "token_accuracy": float(m["token_accuracy"]),
        "scan_accuracy": _ratio(
          m["scan_hits_F"].sum(), m["scan_count_F"].sum()
        ),
      }
      curve.append(row)
      log(
        f"vision pretrain step {step + 1}/{steps}: loss {row['loss']:.4f}, "
        f"per-organ lesion accuracy {row['scan_accuracy']:.3f} (batch), "
        f"{time.perf_counter() - start:.0f} s"
      )
  held_out = _held_out(config, cfg, tokenizer, trainables, evaluate, placed)
  by_organ = ", ".join(
    f"{k} {v:.2f}" for k, v in held_out["scan_accuracy_by_organ"].items()
  )
  log(
    "vision pretrain: held-out per-organ lesion accuracy "
    f"{held_out['scan_accuracy']:.3f} on {held_out['scans']} scans "
    f"({by_organ}; token accuracy {held_out['token_accuracy']:.3f})"
  )
  nnx.update(model.visual, trainables["tower"])
  _, params = nnx.split(model, nnx.Param)
  summary = {
    "steps": steps,
    "learning_rate": float(config.sft.vision_pretrain_lr),
    "scans": int(config.sft.vision_pretrain_scans),
    "seconds": time.perf_counter() - start,
    "curve": curve,
    "held_out": held_out,
  }
  return params, summary


def _dataset(config, cfg, tokenizer, seed_offset, num=None, epochs=None):
  d = config.data
  source = synthmed.FindingsSource(
    int(num or config.sft.vision_pretrain_scans),
    config.seed + seed_offset,
    image_size=d.image_size,
    difficulty=d.difficulty,
  )
  opts = pipeline.PipelineOptions.from_config(
    config,
    sft=True,
    batch_size=config.sft.batch_size,
    num_epochs=epochs,
    shuffle=epochs is None,
    model_cfg=cfg,
  )
  return pipeline.make_dataset(
    source, tokenizer, opts, think_tag=config.tokenizer.think_tag
  )


def _held_out(config, cfg, tokenizer, trainables, evaluate, placed) -> dict:
  f = len(synthmed.FINDINGS)
  hits, counts, token, num = np.zeros(f), np.zeros(f), 0.0, 0
  scans = int(config.sft.get("vision_pretrain_eval_scans", EVAL_SCANS))
  for batch in _dataset(
    config, cfg, tokenizer, HELD_OUT_SEED_OFFSET, scans, epochs=1
  ):
    m = jax.device_get(evaluate(trainables, placed(batch)))
    hits += m["scan_hits_F"]
    counts += m["scan_count_F"]
    token += float(m["token_accuracy"])
    num += 1
  return {
    "scans": scans,
    "scan_accuracy": _ratio(hits.sum(), counts.sum()),
    "scan_accuracy_by_organ": {
      name: _ratio(h, c) for name, h, c in zip(synthmed.FINDINGS, hits, counts)
    },
    "token_accuracy": token / max(num, 1),
  }


def _ratio(hits, count) -> float:
  return float(hits) / max(float(count), 1.0)
