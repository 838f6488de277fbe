"""Helpers shared by `configs/*.py`: the variant-string parser, a config
file loader (for configs built on other configs) and the default job config.

Configs are Python files with `get_config(arg=None)`. The arg is a string of
comma-separated `key=value` pairs or bare flags, e.g.
`--config=configs/synthmed_tiny.py:algo=grpo,fast`. `parse_arg` turns it into
a ConfigDict with the defaults given, converting values to the defaults'
types and failing with a message that names the unknown or malformed key.
"""

from __future__ import annotations

import difflib
import importlib.util
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from stepjax.errors import InputError


def _convert(key: str, raw: str, default: Any) -> Any:
  if isinstance(default, bool):
    lowered = raw.lower()
    if lowered in ("true", "1", "yes", ""):
      return True
    if lowered in ("false", "0", "no"):
      return False
    raise InputError(f"config arg {key}={raw!r}: expected a boolean")
  if isinstance(default, int):
    try:
      return int(raw)
    except ValueError:
      raise InputError(
        f"config arg {key}={raw!r}: expected an integer"
      ) from None
  if isinstance(default, float):
    try:
      return float(raw)
    except ValueError:
      raise InputError(f"config arg {key}={raw!r}: expected a number") from None
  return raw


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses `k1=v1,k2,k3=v3` into a ConfigDict over `defaults`.

  A bare `k` sets a boolean default to True. Keys not in `defaults` fail
  with the list of valid keys.
  """
  result = ml_collections.ConfigDict(dict(defaults))
  if not arg:
    return result
  for item in arg.split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, raw = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise InputError(
        f"unknown config arg {key!r}; valid args: {sorted(defaults)}"
      )
    if not sep and not isinstance(defaults[key], bool):
      raise InputError(f"config arg {key!r} needs a value ({key}=...)")
    result[key] = _convert(key, raw.strip(), defaults[key])
  return result


def pop_arg(
  arg: str | None, key: str, default: str, choices: tuple[str, ...]
) -> tuple[str, str | None]:
  """(value of `key=` in a `k1=v1,k2=v2` arg, the arg without it).

  For configs that add one variant to another config's (a model size on
  top of a recipe's variants). A value outside `choices` raises
  InputError naming them.
  """
  parts = [p for p in (arg or "").split(",") if p]
  value = default
  for part in list(parts):
    if part.startswith(f"{key}="):
      value = part.split("=", 1)[1]
      parts.remove(part)
  if value not in choices:
    raise InputError(f"{key}={value!r}: expected one of {list(choices)}")
  return value, ",".join(parts) or None


def load_config_file(
  path: str | pathlib.Path, arg: str | None = None
) -> ml_collections.ConfigDict:
  """`get_config(arg)` of the config file at `path` (what --config=path:arg
  loads), for configs built on other configs (experiment grids)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise InputError(f"config file {path} not found; give a configs/*.py path")
  spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
  if spec is None or spec.loader is None:
    raise InputError(f"config file {path} is not a Python file (configs/*.py)")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # noqa: BLE001 - the user's file, any error
    raise InputError(
      f"config file {path} does not load: {type(e).__name__}: {e}"
    ) from e
  if not hasattr(module, "get_config"):
    raise InputError(f"config file {path} defines no get_config(arg=None)")
  return module.get_config(arg)


def regrid(
  config: ml_collections.ConfigDict,
  runs: Sequence[tuple[str, str]],
  baseline: str,
  compare: Sequence[tuple[str, str]],
) -> ml_collections.ConfigDict:
  """An experiment config with its grid replaced: `runs` (name, overrides),
  the `baseline` of its paired differences and the (a, b) pairs to
  `compare`; the rest (base job, seeds, variants) as loaded. For grids
  built on another grid's file (`load_config_file`)."""
  with config.unlocked():
    config.runs = tuple(runs)
    config.baseline = baseline
    config.compare = tuple(compare)
  return config


def longer_rl(config: ml_collections.ConfigDict, rl_steps: int) -> None:
  """An experiment config's runs set to `rl_steps` RL steps with held-out
  evals half-way and at the end; its `:test` variant (2 RL steps or fewer)
  is left as it is, so the suite's run stays seconds long."""
  if config.base.train.steps <= 2:
    return
  with config.unlocked():
    config.base.train.steps = rl_steps
    config.eval_every = rl_steps // 2


def synthmed_grid_base(configs_dir: Any, test: bool) -> Any:
  """The base job of the SynthMed experiment grids (an unlocked copy of
  configs/synthmed_tiny.py): 512 held-out scans, a checkpoint every 50
  steps, one kept. With `test`, the job's `:test` variant on one device,
  4 eval scans and a checkpoint every step (3 kept)."""
  base = load_config_file(
    pathlib.Path(configs_dir) / "synthmed_tiny.py", "test" if test else None
  )
  base.unlock()
  base.data.num_eval = 4 if test else 512
  base.train.checkpoint_every = 1 if test else 50
  base.train.keep_checkpoints = 3 if test else 1
  if test:
    base.mesh.data = 1
  return base


def dotted_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list:
  """Every leaf key of `config` as a dotted path ("rl.algorithm")."""
  out = []
  for name, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out += dotted_keys(value, f"{prefix}{name}.")
    else:
      out.append(prefix + name)
  return out


def unknown_key(config: ml_collections.ConfigDict, key: str) -> str | None:
  """None if dotted `key` is a leaf of `config`; else a message naming the
  closest known key ("did you mean ...?")."""
  node: Any = config
  for name in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      close = difflib.get_close_matches(key, dotted_keys(config), n=1)
      hint = f" (did you mean {close[0]}?)" if close else ""
      return f"unknown config key {key!r}{hint}"
    node = node[name]
  return None


def with_updates(
  config: ml_collections.ConfigDict, updates: Mapping[str, Any]
) -> ml_collections.ConfigDict:
  """A copy of `config` (locked or not, kept so) with dotted keys
  ("rl.algorithm") set to the given values."""
  out = config.copy_and_resolve_references()
  with out.unlocked():
    for key, value in updates.items():
      *parents, last = key.split(".")
      node = out
      for name in parents:
        node = node[name]
      node[last] = value
  return out


def default_config() -> ml_collections.ConfigDict:
  """Every key a job config may set, with CPU-sized defaults.

  Job configs start from this and change what they need, so that a key means
  the same thing in every config and `--config.a.b=...` overrides work the
  same everywhere. Sizes are for the SynthMed CPU job.
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.log_level = "warning"  # absl verbosity: debug | info | warning | error

  # Policy. `model.preset` names a ModelConfig preset (tiny, synthmed, bench,
  # qwen25vl_3b, qwen25vl_7b); an HF directory in `init_from` overrides it.
  c.model = ml_collections.ConfigDict()
  c.model.preset = "synthmed"
  c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
  c.model.param_dtype = "float32"
  c.model.remat = False
  # Decoder attention without a cache: auto | dense | rows (a per-sequence
  # loop, fastest on CPU; auto uses it on CPU when the batch is unsharded).
  c.model.attention = "auto"
  c.model.step_value_hidden = 64  # 0 disables the step-value head
  # What the head reads: last (each token's hidden state) | last+step_mean
  # (and the mean hidden state over the step's tokens so far).
  c.model.step_value_input = "last"
  # Qwen3-VL's interleaved M-RoPE in the decoder (presets only; such a
  # model cannot be saved as a Qwen2.5-VL HF checkpoint).
  c.model.mrope_interleaved = False
  c.init_from = ""  # HF directory or Orbax checkpoint directory

  # Tokenizer: "" uses the built-in SynthMed tokenizer; else an HF dir.
  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.path = ""
  c.tokenizer.think_tag = "think"  # think | thinking

  c.data = ml_collections.ConfigDict()
  c.data.dataset = "synthmed"  # synthmed | mrpo_json | vqa_rad | slake | ...
  c.data.path = ""  # file or directory for on-disk datasets (local or gs://)
  c.data.eval_path = ""  # mrpo_json: the evaluation file
  # mrpo_json: the data root its images (paths relative to the json file,
  # or absolute) must lie under; "" = the json file's directory.
  c.data.image_root = ""
  c.data.train_split = "train"  # split names for multi-split datasets
  c.data.eval_split = "test"
  c.data.num_train = 256  # SynthMed: records generated for training
  c.data.num_eval = 64
  c.data.image_size = 112  # SynthMed render size in pixels
  c.data.difficulty = 0.3  # SynthMed noise/contrast/distractors in [0, 1]
  c.data.cascade_rate = 0.3  # SynthMed SFT rationales with a cascade
  # SynthMed step verifier (process labels and eval): aligned = true of the
  # scene AND part of the question's reasoning (the spec's criterion);
  # truth = any true claim (rewards true but irrelevant steps).
  c.data.verifier = "aligned"
  # The verifier that labels evaluation steps (fixed across runs, so runs
  # trained on different labels are measured alike).
  c.data.eval_verifier = "aligned"
  c.data.min_pixels = 56 * 56
  c.data.max_pixels = 112 * 112
  c.data.token_buckets = (96, 128)  # padded prompt lengths
  c.data.patch_buckets = (64,)  # padded vision patch counts per image
  # Image slots per prompt: a record may hold up to this many images (MRPO
  # json's "image" as a list); more is a bad record (data.on_bad_record).
  c.data.max_images = 1
  c.data.batch_size = 4  # prompts per batch (global)
  # Prompts per evaluation batch (greedy decoding is far faster in larger
  # batches); 0 = data.batch_size.
  c.data.eval_batch_size = 0
  c.data.shuffle = True
  c.data.num_workers = 0
  c.data.on_bad_record = "fail"  # fail | skip

  c.sampling = ml_collections.ConfigDict()
  c.sampling.group_size = 4  # G completions per prompt
  c.sampling.temperature = 1.0
  c.sampling.top_k = 0  # 0 = off
  c.sampling.top_p = 1.0
  c.sampling.max_new_tokens = 64
  c.sampling.eval_temperature = 0.0  # 0 = greedy

  c.rewards = ml_collections.ConfigDict()
  c.rewards.answer_weight = 1.0
  c.rewards.process_weight = 1.0
  c.rewards.length_weight = 1.0
  c.rewards.format_weight = 0.0
  c.rewards.k_min = 4
  c.rewards.k_max = 10
  c.rewards.bertscore_model = ""  # local HF encoder dir; "" = off

  c.rl = ml_collections.ConfigDict()
  c.rl.algorithm = "mrpo"  # grpo | gdpo | mrpo
  c.rl.scale_by_std = True
  c.rl.tau = 0.6
  c.rl.penalty = "exp"  # step penalty schedule for invalid steps
  # What a valid step of a shaped (wrong-answer) completion gets: "abs"
  # = +|A_i| (the spec), "keep" = A_i (an ablation: only invalid steps
  # are reshaped).
  c.rl.valid_step_advantage = "abs"
  c.rl.beta = 0.04
  c.rl.eps_low = 0.2
  c.rl.eps_high = 0.2
  c.rl.num_iterations = 1
  # Run each group's prompt once in the update and reference forward (its
  # G rows share it); False runs every row whole (same maths, for checks).
  c.rl.share_prompt = True
  c.rl.loss_aggregation = "seq_mean"  # seq_mean | token_mean | constant
  c.rl.process_source = "verifier"  # verifier | judge | value_head | hybrid
  c.rl.value_threshold = 0.5
  # The step-value head abstains on a step when its confidence, max(p,
  # 1 - p), is below this: the step keeps its completion's advantage
  # instead of MRPO's step shaping (value_head and hybrid sources; the
  # judge's labels always shape). 0 = every head label shapes.
  c.rl.value_min_confidence = 0.0
  c.rl.hybrid_judge_fraction = 0.25
  # Front-load the hybrid's judge budget: the first N RL steps judge every
  # completion (the head starts from many labels), later steps a share
  # that keeps the run's total at hybrid_judge_fraction. 0 = a constant
  # share.
  c.rl.hybrid_full_judge_steps = 0
  # Which completions the hybrid judges: random (seeded) or uncertain (the
  # ones whose step-value labels the head itself is least sure of).
  c.rl.hybrid_select = "random"
  # Share of the verifier's / judge's step labels flipped (seeded): a
  # simulated fallible judge. 0 = labels as given.
  c.rl.label_noise = 0.0
  c.rl.value_loss_weight = 0.1
  # The step-value head's learning rate over the policy's (optim.*): a head
  # trained only during RL learns slowly at the policy's rate.
  c.rl.value_lr_scale = 1.0
  # The value loss's gradient also reaches the policy's layers (a shared
  # trunk: its hidden states learn to tell valid steps from invalid ones),
  # at rl.value_loss_weight; False: the loss trains the head only.
  c.rl.value_shapes_policy = False
  # No RL updates to the policy's vision tower (what SFT taught it to see
  # stays; the policy gradient reaches the language model only).
  c.rl.freeze_vision = False

  c.judge = ml_collections.ConfigDict()
  c.judge.base_url = ""
  c.judge.model = ""
  c.judge.api_key_env = "STEPJAX_JUDGE_API_KEY"
  c.judge.send_image = True
  c.judge.timeout_s = 60.0
  c.judge.max_retries = 3
  c.judge.concurrency = 8
  c.judge.fallback = "invalid"  # invalid | valid | skip
  c.judge.cache_path = ""
  # "verifier": the SynthMed rule verifier plays the judge (no endpoint;
  # calls counted), to measure judge-labelled set-ups such as hybrid.
  c.judge.simulate = ""

  # Evaluation. answer_judge: "exact" (normalised exact match only) or
  # "judge" (also ask the judge.* endpoint whether each answer matches its
  # reference, as the paper does; reports carry both accuracies).
  c.eval = ml_collections.ConfigDict()
  c.eval.answer_judge = "exact"
  # When every judge call for an answer failed: "mismatch" (count it as not
  # matching), "exact" (use the exact-match verdict) or "skip" (leave it
  # out of the judged accuracy). Always counted in the report.
  c.eval.answer_judge_fallback = "mismatch"

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 1e-4
  c.optim.warmup_steps = 2
  c.optim.schedule = "cosine"  # cosine | linear | constant
  c.optim.weight_decay = 0.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.99
  c.optim.grad_clip = 1.0
  c.optim.grad_accum = 1

  c.sft = ml_collections.ConfigDict()
  c.sft.steps = 0
  c.sft.learning_rate = 1e-3
  c.sft.batch_size = 16
  # SynthMed: scans with a findings report (every organ's lesion count)
  # mixed into SFT next to the training records; 0 = none.
  c.sft.findings_scans = 0
  # SynthMed: weight of an extra SFT loss on the image features (a readout
  # must tell which organs have lesions; step_value.py); 0 = off.
  c.sft.grounding_weight = 0.0
  # SynthMed: before SFT from a fresh policy, train the vision tower alone
  # for this many steps to tell, per merged image token, which organs it
  # shows and whether each has a lesion there (train/vision_pretrain.py);
  # 0 = off. Scans of their own seed, Adam at vision_pretrain_lr.
  c.sft.vision_pretrain_steps = 0
  c.sft.vision_pretrain_scans = 4096
  c.sft.vision_pretrain_lr = 1e-3
  c.sft.vision_pretrain_eval_scans = 256  # held-out scans it reports on
  # Keep the vision tower fixed through SFT (no updates, no weight decay).
  c.sft.freeze_vision = False

  c.train = ml_collections.ConfigDict()
  c.train.steps = 10  # RL steps
  c.train.eval_every = 0  # 0 = only before and after
  # Evaluate the policy RL starts from ("before_rl"). Experiment grids turn
  # it off: their runs start from an SFT checkpoint already evaluated.
  c.train.eval_before_rl = True
  c.train.checkpoint_every = 5
  c.train.keep_checkpoints = 2
  c.train.log_every = 1

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1 = the rest of the devices
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.logical_axis_rules = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
  )

  c.distributed = ml_collections.ConfigDict()
  c.distributed.initialize = "auto"  # auto | yes | no
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = 0
  c.distributed.process_id = -1
  return c
