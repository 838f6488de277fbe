r"""What can a step-value head read? Probes of step validity, from features.

The hybrid process source labels most steps with the step-value head, an
MLP on the policy's stop-gradient final hidden state at each step's last
token. Trained alongside RL its BCE stops near 0.5 whatever its learning
rate or label count (docs/results/diagnosis, section 15). This probe asks
whether that is the features' ceiling or the training's:

  1. samples G completions per prompt from a run's checkpoint on held-out
     SynthMed scans (temperature as in RL), labels every step with the
     verifier (`data.verifier`, the RL labels) and with the truth-only
     rule, and records, at each step's last token, the policy's final
     hidden state, the checkpoint's own head logit, and the scan's image
     tokens (the tower's output the language model reads);
  2. splits the prompts in two (fit / test; every step of a prompt on one
     side) and fits probes on the fit steps (stopped early on a fifth of
     their prompts), each reading more than the last:
       hidden       the head's architecture on its own input
       hidden+pool  plus the mean and max of the image tokens
       hidden+attn  plus what attention from the step picks from them
       hidden+truth plus the scene's truth (each organ's lesion count,
                    the modality): the ceiling of a head that sees
       hidden+step_mean  plus the mean hidden state over the step's
                    tokens (more of the step's claim than its last token)
       hidden+step_mean+truth  both
  3. reports each on the test steps: BCE, accuracy, and the share of
     invalid steps it flags, split into false claims (invalid under the
     truth rule too: seeing is needed) and true but invalid steps
     (off the question, repeated: the text alone can tell);
  4. refits `hidden` and `hidden+truth` on 1/8, 1/4, 1/2 and all of the
     fit prompts: a test BCE still falling at all of them means the head
     is short of labels rather than of features.

  python -m stepjax.experiment.value_probe RUN_DIR --prompts=512 \
      --out=RUN_DIR/value_probe.json

RUN_DIR is a run directory (its config.json and checkpoints), e.g. one
seed of an experiment run.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath

from stepjax import image_slots
from stepjax.data import pipeline, sources, synthmed
from stepjax.data import synthmed_scene as scene_lib
from stepjax.data.readers import paths
from stepjax.errors import InputError, UserError
from stepjax.eval import checkpoints
from stepjax.experiment import config_io
from stepjax.models import step_value, vlm
from stepjax.rl import process
from stepjax.train import batches, components, rollout, steps

PROBES = (
  "hidden",
  "hidden+pool",
  "hidden+attn",
  "hidden+truth",
  "hidden+step_mean",
  "hidden+step_mean+truth",
)
CURVE_PROBES = ("hidden", "hidden+truth")
CURVE_SHARES = (0.125, 0.25, 0.5, 1.0)


@dataclasses.dataclass
class StepFeatures:
  """One row per labelled step (S steps, D hidden, M image tokens of
  width E, U truth features).

  hidden_SxD: the policy's final hidden state at the step's last token.
  step_mean_SxD: its mean over the step's tokens.
  head_logit_S: the checkpoint's step-value head there (NaN: no head).
  image_S: the step's scan, an index into images_NxMxE / image_valid_NxM.
  truth_SxU: the scan's truth (lesions per organ, modality one-hot).
  valid_S: the verifier's label (the RL label); true_S: the truth-only
    rule's (a true claim, wherever it stands).
  prompt_S: the prompt (the fit / test split keeps prompts whole).
  """

  hidden_SxD: np.ndarray
  step_mean_SxD: np.ndarray
  head_logit_S: np.ndarray
  image_S: np.ndarray
  truth_SxU: np.ndarray
  valid_S: np.ndarray
  true_S: np.ndarray
  prompt_S: np.ndarray
  images_NxMxE: np.ndarray
  image_valid_NxM: np.ndarray


def truth_vector(scene: scene_lib.Scene) -> np.ndarray:
  """float32[U]: lesions in each organ of `ORGANS` (0 when absent), then
  whether the organ is present, then the modality one-hot."""
  names = list(scene_lib.ORGANS)
  counts = np.zeros(len(names), np.float32)
  present = np.zeros(len(names), np.float32)
  for organ in scene.organs:
    i = names.index(organ.name)
    counts[i] = len(organ.lesions)
    present[i] = 1.0
  modality = np.zeros(len(scene_lib.MODALITIES), np.float32)
  modality[scene_lib.MODALITIES.index(scene.modality)] = 1.0
  return np.concatenate([counts, present, modality])


def _features_fn(graphs, group_size: int):
  """jit(params, value params or None, seq, step ids [B, L]) ->
  (hidden_BxLxD, head logits_BxL or None, image tokens of each row's scan
  [B, M, E], their validity [B, M])."""

  def fn(params, value_params, seq, step_id_BxL):
    img_IxMxE, valid_IxM = vlm.encode_images(
      graphs.policy, params, seq.images.pixels_IxNxP, seq.images.vision_meta
    )
    _, hidden = steps.decode(
      graphs, params, seq, img_IxMxE, valid_IxM, group_size
    )
    num_prompts = seq.ids_BxL.shape[0] // group_size
    slots_B, _ = image_slots.group(
      seq.images.image_prompt_I, num_prompts, group_size, xp=jnp
    )
    head = None
    if value_params is not None:
      head = step_value.apply(graphs.value, value_params, hidden, step_id_BxL)
    return (
      hidden,
      head,
      jnp.take(img_IxMxE, slots_B, axis=0),
      jnp.take(valid_IxM, slots_B, axis=0),
    )

  return jax.jit(fn)


def collect(
  loaded: Any,
  records: Sequence[Any],
  *,
  group_size: int,
  batch_prompts: int,
  seed: int = 0,
  log: Callable[[str], None] = lambda _: None,
) -> StepFeatures:
  """Samples `group_size` completions of each record and gathers every
  step's features (see `StepFeatures`)."""
  config = loaded.config
  if any("scene" not in (r.meta or {}) for r in records):
    raise InputError(
      "the value probe reads SynthMed records (a scene per record); use "
      "--config.data.dataset=synthmed"
    )
  opts = pipeline.PipelineOptions.from_config(
    config,
    model_cfg=loaded.cfg,
    shuffle=False,
    num_epochs=1,
    drop_remainder=False,
    batch_size=batch_prompts,
  )
  dataset = pipeline.make_dataset(
    sources.InMemorySource(records, name="value probe"),
    loaded.tokenizer,
    opts,
    think_tag=config.tokenizer.think_tag,
    shard_index=0,
    shard_count=1,
  )
  source = process.VerifierSource(synthmed.step_verifier(config.data.verifier))
  features = _features_fn(loaded.graphs, group_size)
  out: dict[str, list] = {
    k: [] for k in ("h", "hm", "v", "img", "u", "y", "t", "p")
  }
  images, image_valid = [], []
  num_images = prompt_base = 0
  rng = jax.random.key(seed)
  t0 = time.perf_counter()
  for b, batch in enumerate(dataset):
    samples = rollout.sample(
      loaded,
      batch,
      jax.random.fold_in(rng, b),
      config.sampling,
      group_size=group_size,
      temperature=config.sampling.temperature,
    )
    examples = batches.examples(batch)
    scored = rollout.score(
      samples.tokens_BxR,
      samples.lengths_B,
      examples,
      tokenizer=loaded.tokenizer,
      source=source,
      config=config,
    )
    update = rollout.update_batch(
      samples, scored, scored.has_labels_B.astype(np.int32)
    )
    step_id_BxL = np.asarray(update.value_labels.step_id_BxL)
    hidden, head, img, img_valid = jax.device_get(
      features(loaded.params, loaded.value_params, update.seq, step_id_BxL)
    )
    for i, step_texts in enumerate(scored.step_texts):
      p = i // group_size
      if i % group_size == 0:  # the prompt's first row: its scan and truth
        scene = scene_lib.Scene.from_dict(examples[p]["meta"]["scene"])
        truth_U = truth_vector(scene)
        images.append(img[i])
        image_valid.append(img_valid[i])
        num_images += 1
      true = synthmed.verify_steps(step_texts, scene)
      for k in range(len(step_texts)):
        cols = np.flatnonzero(step_id_BxL[i] == k)
        if not cols.size:
          continue  # a step cut off by the length limit carries no label
        end = cols[-1]
        out["h"].append(hidden[i, end])
        out["hm"].append(hidden[i, cols].mean(0))
        out["v"].append(np.nan if head is None else head[i, end])
        out["img"].append(num_images - 1)
        out["u"].append(truth_U)
        out["y"].append(scored.step_valid_BxK[i, k])
        out["t"].append(true[k])
        out["p"].append(prompt_base + p)
    prompt_base += len(examples)
    log(
      f"value probe: {prompt_base}/{len(records)} prompts, "
      f"{len(out['y'])} steps ({time.perf_counter() - t0:.0f} s)"
    )
  if not out["y"]:
    raise InputError("the sampled completions hold no steps to probe")
  return StepFeatures(
    hidden_SxD=np.stack(out["h"]).astype(np.float32),
    step_mean_SxD=np.stack(out["hm"]).astype(np.float32),
    head_logit_S=np.asarray(out["v"], np.float32),
    image_S=np.asarray(out["img"], np.int32),
    truth_SxU=np.stack(out["u"]),
    valid_S=np.asarray(out["y"], np.float32),
    true_S=np.asarray(out["t"], np.float32),
    prompt_S=np.asarray(out["p"], np.int32),
    images_NxMxE=np.stack(images).astype(np.float32),
    image_valid_NxM=np.stack(image_valid).astype(bool),
  )


# -- the probes: small heads fitted to convergence on the fit steps


def _init_linear(key, n_in: int, n_out: int, scale: float = 1.0):
  w = jax.random.normal(key, (n_in, n_out)) * scale * n_in**-0.5
  return {"w": w, "b": jnp.zeros((n_out,))}


def _linear(p, x):
  return x @ p["w"] + p["b"]


def _standardise(x_SxF: jax.Array, mean_F, std_F) -> jax.Array:
  return (x_SxF - mean_F) / std_F


def init_probe(key, name: str, d: int, e: int, u: int, width: int):
  """Parameters of probe `name` (see PROBES) for hidden width d, image
  token width e and truth width u."""
  k = jax.random.split(key, 5)
  extra = {"hidden": 0, "hidden+pool": 2 * e, "hidden+attn": 3 * e}
  extra.update({"hidden+truth": u, "hidden+step_mean": d})
  extra["hidden+step_mean+truth"] = d + u
  params = {
    "fc1": _init_linear(k[0], d + extra[name], width),
    "fc2": _init_linear(k[1], width, 1, 0.02),
  }
  if name == "hidden+attn":
    params["q"] = _init_linear(k[2], d, width)
    params["k"] = _init_linear(k[3], e, width)
  return params


def probe_logits(name: str, params, x: dict[str, jax.Array]) -> jax.Array:
  """float32[S] logits of probe `name` on standardised features x:
  hidden_SxD, step_mean_SxD, img_SxMxE (the step's scan tokens),
  img_valid_SxM, truth_SxU."""
  h = x["hidden_SxD"]
  valid_SxM = x["img_valid_SxM"]
  img_SxMxE = x["img_SxMxE"]
  count_Sx1 = jnp.maximum(valid_SxM.sum(1, keepdims=True), 1)
  mean_SxE = jnp.where(valid_SxM[..., None], img_SxMxE, 0).sum(1) / count_Sx1
  top_SxE = jnp.where(valid_SxM[..., None], img_SxMxE, -1e9).max(1)
  if name == "hidden":
    z = h
  elif name == "hidden+pool":
    z = jnp.concatenate([h, mean_SxE, top_SxE], axis=-1)
  elif name == "hidden+attn":
    # The pooled tokens plus what the step's query picks from them.
    q_SxF = _linear(params["q"], h)
    k_SxMxF = _linear(params["k"], img_SxMxE)
    score_SxM = (
      jnp.einsum("sf,smf->sm", q_SxF, k_SxMxF) / q_SxF.shape[-1] ** 0.5
    )
    score_SxM = jnp.where(valid_SxM, score_SxM, -1e9)
    attn_SxM = jax.nn.softmax(score_SxM, axis=-1)
    read_SxE = jnp.einsum("sm,sme->se", attn_SxM, img_SxMxE)
    z = jnp.concatenate([h, mean_SxE, top_SxE, read_SxE], axis=-1)
  elif name == "hidden+truth":
    z = jnp.concatenate([h, x["truth_SxU"]], axis=-1)
  elif name == "hidden+step_mean":
    z = jnp.concatenate([h, x["step_mean_SxD"]], axis=-1)
  elif name == "hidden+step_mean+truth":
    z = jnp.concatenate([h, x["step_mean_SxD"], x["truth_SxU"]], axis=-1)
  else:
    raise ValueError(f"unknown probe {name!r}; expected one of {PROBES}")
  return _linear(params["fc2"], jax.nn.silu(_linear(params["fc1"], z)))[:, 0]


def bce(logits_S: jax.Array, y_S: jax.Array) -> jax.Array:
  return jnp.mean(jax.nn.softplus(logits_S) - logits_S * y_S)


def _inputs(f: StepFeatures, rows: np.ndarray, stats: dict) -> dict:
  """The probes' standardised inputs for the steps `rows`."""
  img = f.images_NxMxE[f.image_S[rows]]
  return {
    "hidden_SxD": _standardise(f.hidden_SxD[rows], *stats["hidden"]),
    "step_mean_SxD": _standardise(f.step_mean_SxD[rows], *stats["step_mean"]),
    "img_SxMxE": _standardise(img, *stats["img"]),
    "img_valid_SxM": f.image_valid_NxM[f.image_S[rows]],
    "truth_SxU": _standardise(f.truth_SxU[rows], *stats["truth"]),
  }


def _stats(f: StepFeatures, rows: np.ndarray) -> dict:
  """Per-feature mean and std over the fit steps (std floored)."""

  def ms(x):
    x = x.reshape(-1, x.shape[-1])
    return x.mean(0), np.maximum(x.std(0), 1e-3)

  images = np.unique(f.image_S[rows])
  tokens = f.images_NxMxE[images][f.image_valid_NxM[images]]
  return {
    "hidden": ms(f.hidden_SxD[rows]),
    "step_mean": ms(f.step_mean_SxD[rows]),
    "img": ms(tokens),
    "truth": ms(f.truth_SxU[rows]),
  }


def fit_probe(
  name: str,
  x_fit: dict,
  y_fit: np.ndarray,
  x_val: dict,
  y_val: np.ndarray,
  *,
  width: int = 64,
  max_steps: int = 3000,
  eval_every: int = 50,
  lr: float = 3e-3,
  weight_decay: float = 1e-2,
  batch: int = 512,
  seed: int = 0,
) -> tuple[Any, int, float]:
  """AdamW on mini-batches of the fit steps, stopped early: returns the
  parameters with the lowest BCE on the validation steps (checked every
  `eval_every` steps), that step and that BCE."""
  d = x_fit["hidden_SxD"].shape[1]
  e = x_fit["img_SxMxE"].shape[2]
  u = x_fit["truth_SxU"].shape[1]
  params = init_probe(jax.random.key(seed), name, d, e, u, width)
  tx = optax.adamw(lr, weight_decay=weight_decay)
  opt = tx.init(params)
  # Data are arguments, never closed over: XLA would fold them as constants.
  x_fit, x_val = jax.tree.map(jnp.asarray, (x_fit, x_val))
  y_fit, y_val = jnp.asarray(y_fit), jnp.asarray(y_val)

  @jax.jit
  def step(params, opt, x, y, idx):
    xb = jax.tree.map(lambda a: a[idx], x)
    g = jax.grad(lambda p: bce(probe_logits(name, p, xb), y[idx]))(params)
    updates, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, updates), opt

  @jax.jit
  def val_bce(params, x, y):
    return bce(probe_logits(name, params, x), y)

  rng = np.random.default_rng(seed)
  n = len(y_fit)
  best = (params, 0, float(val_bce(params, x_val, y_val)))
  for i in range(1, max_steps + 1):
    idx = jnp.asarray(rng.integers(0, n, size=min(batch, n)))
    params, opt = step(params, opt, x_fit, y_fit, idx)
    if i % eval_every == 0:
      v = float(val_bce(params, x_val, y_val))
      if v < best[2]:
        best = (params, i, v)
      elif i - best[1] >= 10 * eval_every:
        break  # no better for 10 checks
  return best


def scores(logits_S: np.ndarray, f: StepFeatures, rows: np.ndarray) -> dict:
  """BCE, accuracy and flagged shares of logits on the steps `rows`."""
  y, true = f.valid_S[rows], f.true_S[rows]
  logits_S = np.asarray(logits_S, np.float64)
  pred_valid = logits_S >= 0
  invalid = y == 0
  false_claim = invalid & (true == 0)
  true_invalid = invalid & (true == 1)

  def flagged(sel):
    return float((~pred_valid[sel]).mean()) if sel.any() else float("nan")

  return {
    "bce": float(np.mean(np.logaddexp(0, logits_S) - logits_S * y)),
    "accuracy": float((pred_valid == (y == 1)).mean()),
    "valid_kept": float(pred_valid[y == 1].mean()),
    "invalid_flagged": flagged(invalid),
    "false_claims_flagged": flagged(false_claim),
    "true_but_invalid_flagged": flagged(true_invalid),
  }


def split_prompts(
  prompt_S: np.ndarray, share: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """(rows kept, rows split off): `share` of the prompts split off, every
  step of a prompt on one side."""
  prompts = np.unique(prompt_S)
  rng = np.random.default_rng(seed)
  cut = min(max(1, int(round(share * len(prompts)))), len(prompts) - 1)
  off = np.isin(prompt_S, rng.permutation(prompts)[:cut])
  return np.flatnonzero(~off), np.flatnonzero(off)


def run_probes(
  f: StepFeatures,
  *,
  test_share: float = 0.5,
  val_share: float = 0.2,
  max_steps: int = 3000,
  width: int = 64,
  seed: int = 0,
  log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
  """Fits every probe on the fit steps (stopped early on `val_share` of
  their prompts) and scores it, and the checkpoint's own head when it has
  one, on the test steps (`test_share` of the prompts)."""
  if len(np.unique(f.prompt_S)) < 3:
    raise InputError("the value probe needs steps of at least 3 prompts")
  fit, test = split_prompts(f.prompt_S, test_share, seed)
  train_, val_ = split_prompts(f.prompt_S[fit], val_share, seed + 1)
  train, val = fit[train_], fit[val_]
  stats = _stats(f, train)
  x_val, x_test = _inputs(f, val, stats), _inputs(f, test, stats)
  y_test = f.valid_S[test]
  base_rate = float(f.valid_S[train].mean())
  constant = np.full(len(test), np.log(base_rate / max(1 - base_rate, 1e-6)))
  result: dict[str, Any] = {
    "steps": {
      "fit": int(len(train)),
      "val": int(len(val)),
      "test": int(len(test)),
    },
    "prompts": int(len(np.unique(f.prompt_S))),
    "width": width,
    "test_valid_share": float(y_test.mean()),
    "test_false_claim_share": float(
      ((y_test == 0) & (f.true_S[test] == 0)).mean()
    ),
    "probes": {"constant": scores(constant, f, test)},
  }
  if not np.isnan(f.head_logit_S).any():
    result["probes"]["run's head"] = scores(f.head_logit_S[test], f, test)

  def fit_and_score(name: str, rows: np.ndarray) -> tuple[dict, int, float]:
    """Probe `name` fitted on the steps `rows`, scored on the test steps."""
    params, best_step, best_val = fit_probe(
      name,
      _inputs(f, rows, stats),
      f.valid_S[rows],
      x_val,
      f.valid_S[val],
      width=width,
      max_steps=max_steps,
      seed=seed,
    )
    logits = jax.device_get(probe_logits(name, params, x_test))
    return scores(logits, f, test), best_step, best_val

  for name in PROBES:
    t0 = time.perf_counter()
    r, best_step, best_val = fit_and_score(name, train)
    r.update(val_bce=best_val, stopped_at=best_step)
    result["probes"][name] = r
    log(
      f"value probe: {name}: test BCE {r['bce']:.3f} (best on val at "
      f"step {best_step}; {time.perf_counter() - t0:.0f} s)"
    )
  # Learning curves: the same probes fitted on a share of the fit prompts
  # (is the head short of labels or of features?); all of them is the fit
  # above, not refitted.
  result["curve"] = {}
  for name in CURVE_PROBES:
    points = []
    for share in CURVE_SHARES:
      if share < 1:
        _, part_ = split_prompts(f.prompt_S[train], share, seed + 2)
        part = train[part_]
        r = fit_and_score(name, part)[0]
      else:
        part, r = train, result["probes"][name]
      points.append(
        {
          "fit_steps": int(len(part)),
          "bce": r["bce"],
          "accuracy": r["accuracy"],
        }
      )
    result["curve"][name] = points
    log(f"value probe: {name} by fit steps: {points}")
  return result


def table(result: dict[str, Any]) -> str:
  """A markdown table of `run_probes`' result."""
  lines = [
    "| probe | test BCE | accuracy | valid kept | invalid flagged | "
    "false claims flagged | true-but-invalid flagged |",
    "|---|---:|---:|---:|---:|---:|---:|",
  ]
  for name, r in result["probes"].items():
    lines.append(
      f"| {name} | {r['bce']:.3f} | {100 * r['accuracy']:.1f} | "
      f"{100 * r['valid_kept']:.1f} | {100 * r['invalid_flagged']:.1f} | "
      f"{100 * r['false_claims_flagged']:.1f} | "
      f"{100 * r['true_but_invalid_flagged']:.1f} |"
    )
  for name, points in result.get("curve", {}).items():
    lines.append("")
    lines.append(
      f"{name} by fit steps: "
      + ", ".join(
        f"{p['fit_steps']}: BCE {p['bce']:.3f}, "
        f"accuracy {100 * p['accuracy']:.1f}"
        for p in points
      )
    )
  return "\n".join(lines)


def run(
  run_dir: str,
  *,
  prompts: int,
  config: Any = None,
  group_size: int = 0,
  batch_prompts: int = 0,
  max_steps: int = 3000,
  width: int = 64,
  out: str = "",
  seed: int = 0,
) -> dict[str, Any]:
  """Loads the run's latest checkpoint, collects, probes, prints the table
  and writes the result as JSON to `out` (when given). `config`: the run's
  job config (default: its config.json, as `stepjax experiment` writes)."""
  if prompts < 2:
    raise InputError(f"--prompts={prompts}: expected at least 2")
  if config is None:
    config = config_io.read(run_dir)
  loaded = checkpoints.load(config, run_dir, flag="RUN_DIR")
  config = loaded.config
  source = components.make_source(config, "eval")
  records = [source[i] for i in range(min(prompts, len(source)))]
  g = group_size or config.sampling.group_size
  features = collect(
    loaded,
    records,
    group_size=g,
    batch_prompts=batch_prompts or config.data.batch_size,
    seed=seed,
    log=lambda s: print(s, flush=True),
  )
  result = run_probes(
    features,
    max_steps=max_steps,
    width=width,
    seed=seed,
    log=lambda s: print(s, flush=True),
  )
  result.update(run_dir=run_dir, step=loaded.step, group_size=g)
  print(table(result), flush=True)
  if out:
    paths.write_json(epath.Path(out), result)
    print(f"wrote {out}", flush=True)
  return result


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m stepjax.experiment.value_probe",
    description=__doc__.split("\n\n")[0],
  )
  parser.add_argument("run_dir", help="a run directory (config + checkpoints)")
  parser.add_argument("--prompts", type=int, default=256)
  parser.add_argument("--group_size", type=int, default=0, help="0: the run's")
  parser.add_argument("--batch_prompts", type=int, default=0)
  parser.add_argument("--max_steps", type=int, default=3000)
  parser.add_argument("--width", type=int, default=64, help="probe MLP width")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  try:
    run(
      args.run_dir,
      prompts=args.prompts,
      group_size=args.group_size,
      batch_prompts=args.batch_prompts,
      max_steps=args.max_steps,
      width=args.width,
      out=args.out,
      seed=args.seed,
    )
  except (UserError, OSError) as e:  # one line, no stack
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
