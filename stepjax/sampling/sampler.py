"""Jit-compiled sampling from the Qwen2.5-VL policy over a preallocated cache.

Shapes: P prompts, G samples per prompt (the group), B = P * G sampled rows
(row b = p * G + g, so a group's samples are adjacent), T prompt length
(left padded), R = max_new_tokens, L = T + R full sequence, S cache slots,
V vocab, M image slots per prompt, I = P * M image slots (`image_prompt_I`
says which prompt owns each: `stepjax/image_slots.py`), N padded patch
rows per image, P_ = 3*2*14*14 patch row (written `P` in `pixels_IxNxP`,
as in the model).

Flow:
  prompt = prepare_inputs(numpy_batch, cfg)           # host side, once
  out = generate(graphdef, params, prompt, rng, group_size=G,
                 max_new_tokens=R, temperature=1.0, eos_ids=(eos,),
                 pad_id=pad)                          # one jit call
  seq = full_sequence(prompt, out, G)                 # jnp: the trainer's
                                                      # SequenceBatch

`generate` prefills the P prompts (images encoded once), repeats each row
of the KV cache G times (group prefix sharing; `share_prefix=False`
prefills all B rows instead, for checking), then decodes one token per
step inside a `lax.while_loop` that stops when every row has emitted a stop
id or R tokens exist. Nothing leaves the device between steps. Prefill
and decode steps are the model's own forward (`vlm.forward` with a
KV cache); the cache's per-layer buffers are carried by the while_loop, so
each step writes its token's keys and values in place.
The image / video pad ids are never sampled by default (`suppress_ids`): a
teacher-forced forward would put image features at such tokens.

Log-probs. `logp_BxR` is log softmax(logits)[token]: the log-probability of
the sampled token under the model's own distribution at temperature 1,
before temperature, top-k or top-p: the policy log-prob PPO's ratio needs,
equal to a teacher-forced forward on the sequence (`teacher_forced_logp`).
`sample_logp_BxR` is the log-probability under the distribution actually
sampled from (temperature, then top-k, then top-p); 0 for greedy.

Randomness. Step r uses key fold_in(fold_in(rng, r), b) for row b
(`row_keys`), one uniform per row and step (inverse-CDF sampling in
`sample_tokens`), so a row's tokens depend only on (rng, b) and its
prompt, not on the other rows or the batch size. Other decoding loops
(e.g. eval/generate.py's streamer) draw tokens with these two functions to
get the same samples.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stepjax import image_slots, rows, sequences
from stepjax.models import config as config_lib
from stepjax.models import language, rope_index, vision_index, vlm


@flax.struct.dataclass
class PromptBatch:
  """Model inputs for P left-padded prompts (numpy or jax arrays).

  prompt_ids_PxT / prompt_mask_PxT: int32 ids, 1 = real token; the last
    column is real in every row (left padding).
  positions_3xPxT: M-RoPE positions (rope_index.rope_index).
  deltas_P: rope deltas; a token after the k-th real one sits at k + delta.
  num_real_P: real prompt tokens per row.
  images: the prompts' images in M slots per prompt (None for text-only
    prompts; `image_slots.ImageSlots`: empty slots have no valid tokens),
    split by slot like the prompts by row.
  """

  prompt_ids_PxT: jax.Array
  prompt_mask_PxT: jax.Array
  positions_3xPxT: jax.Array
  deltas_P: jax.Array
  num_real_P: jax.Array
  images: image_slots.ImageSlots | None = None


@flax.struct.dataclass
class SampleOutput:
  """Generated completions for B = P * G rows (row b = p * G + g).

  tokens_BxR: int32 sampled ids; pad_id after a row's stop token.
  logp_BxR: log-prob of each token under the model at temperature 1
    (unfiltered): the PPO policy log-prob. 0 where mask is 0.
  sample_logp_BxR: log-prob under the sampling distribution (temperature,
    top-k, top-p); 0 for greedy and where mask is 0.
  mask_BxR: int32, 1 for generated tokens up to and including the stop id.
  lengths_B: int32 number of generated tokens (sum of mask_BxR).
  """

  tokens_BxR: jax.Array
  logp_BxR: jax.Array
  sample_logp_BxR: jax.Array
  mask_BxR: jax.Array
  lengths_B: jax.Array


def prepare_inputs(
  batch: Mapping[str, np.ndarray], cfg: config_lib.ModelConfig
) -> PromptBatch:
  """Host-side (numpy) model inputs from a batch of prompts with images.

  batch: `prompt_ids_BxT` int32 left padded, `prompt_mask_BxT`, and
  optionally the images in M slots per prompt (the pipeline's layout):
  `pixels_IxNxP` float32 (rows past an image's patches are padding),
  `grid_thw_Ix3` int32 ((0, 0, 0) for an empty slot), `image_prompt_I`
  int32 (the prompt of each slot, `image_slots.check`) and optionally
  `patch_mask_IxN`. Prompt p's image pad tokens must number its images'
  tokens (its non-empty slots, in placeholder order).
  """
  ids = np.asarray(batch["prompt_ids_BxT"], np.int32)
  mask = np.asarray(batch["prompt_mask_BxT"]).astype(np.int32)
  if ids.shape != mask.shape or ids.ndim != 2:
    raise ValueError(
      f"prompt_ids_BxT {ids.shape} and prompt_mask_BxT {mask.shape} must be "
      "equal 2-D shapes"
    )
  if not mask[:, -1].all():
    raise ValueError(
      "prompts must be left padded: rows "
      f"{np.flatnonzero(mask[:, -1] == 0).tolist()} end in padding"
    )
  images = image_slots.from_batch(batch, ids.shape[0], cfg)
  grid = None
  if images is not None:
    grid = images.grid_thw_Ix3
    _check_image_tokens(ids, mask, grid, images.image_prompt_I, cfg)
  positions, deltas = rope_index.rope_index(ids, mask, grid, cfg)
  return PromptBatch(
    prompt_ids_PxT=ids,
    prompt_mask_PxT=mask,
    positions_3xPxT=positions,
    deltas_P=deltas,
    num_real_P=mask.sum(1).astype(np.int32),
    images=images,
  )


def _check_image_tokens(ids, mask, grid_Ix3, owner_I, cfg) -> None:
  """Each prompt holds as many image pad tokens as its images need."""
  need_I = vision_index.num_patches(grid_Ix3) // cfg.vision.merge_unit
  need_P = np.bincount(owner_I, weights=need_I, minlength=ids.shape[0])
  have_P = ((ids == cfg.image_pad_token_id) & (mask > 0)).sum(1)
  bad = np.flatnonzero(have_P != need_P)
  if bad.size:
    p = int(bad[0])
    raise ValueError(
      f"prompt {p} holds {int(have_P[p])} image pad tokens but its images "
      f"(grid_thw_Ix3 {grid_Ix3[owner_I == p].tolist()}) need "
      f"{int(need_P[p])}; build each prompt with t*h*w/4 pads per image"
    )


def repeat_group(prompt: PromptBatch, group_size: int) -> PromptBatch:
  """Each prompt (and its image slots) repeated G times: P rows -> P * G
  rows; the slots follow `image_prompt_I` (row b owns its copies)."""
  p = prompt.prompt_ids_PxT.shape[0]
  return image_slots.take_prompts(
    prompt, np.repeat(np.arange(p), group_size), p, xp=jnp
  )


# ------------------------------------------------------------------ sampling


def _cumsum(x_BxV, block: int = 64):
  """Cumulative sum over the last axis as a blocked triangular matmul.

  XLA:CPU lowers jnp.cumsum to an associative scan that costs ~4x more
  than this for a 4096-wide vocabulary (it is most of a step's sampling).
  """
  b, v = x_BxV.shape
  if v % block or v <= block:
    return jnp.cumsum(x_BxV, axis=-1)
  x_BxCxK = x_BxV.reshape(b, v // block, block)
  upper_KxK = jnp.triu(jnp.ones((block, block), x_BxV.dtype))
  within = jnp.einsum("bck,kj->bcj", x_BxCxK, upper_KxK)
  offset_BxC = jnp.cumsum(within[..., -1], axis=-1) - within[..., -1]
  return (within + offset_BxC[..., None]).reshape(b, v)


def sample_tokens(logits_BxV, key_B, temperature, top_k, top_p, banned_V):
  """(token_B, logp_B, sample_logp_B) from one step's logits.

  key_B: one PRNG key per row (`row_keys`). temperature 0 is greedy;
  top_k 0 and top_p 1.0 turn those filters off (all three static).
  logp_B is the token's log-prob at temperature 1 without filters (the
  policy log-prob); sample_logp_B its log-prob under the filtered
  distribution actually sampled from (0 for greedy).

  banned_V: static numpy bool mask of ids never sampled (the sampling
  distribution renormalises without them; logp_B does not).
  The full-vocab log-softmax is computed once; at temperature 1 with no
  top-k / top-p the sampling distribution reuses it.
  """
  logits_BxV = logits_BxV.astype(jnp.float32)
  take = lambda x, tok: jnp.take_along_axis(x, tok[:, None], -1)[:, 0]
  allowed_V = jnp.asarray(~banned_V)
  vocab = logits_BxV.shape[-1]
  # One exp pass over the vocabulary serves the policy log-prob and, at
  # temperature 1 without top-k / top-p, the sampling distribution too.
  max_B = jax.lax.stop_gradient(jnp.max(logits_BxV, axis=-1))
  exp_BxV = jnp.exp(logits_BxV - max_B[:, None])
  lse_B = max_B + jnp.log(jnp.sum(exp_BxV, axis=-1))
  if temperature == 0.0:
    masked = jnp.where(allowed_V, logits_BxV, -jnp.inf)
    tok = jnp.argmax(masked, axis=-1).astype(jnp.int32)
    logp_B = take(logits_BxV, tok) - lse_B
    return tok, logp_B, jnp.zeros_like(logp_B)
  use_k = 0 < top_k < vocab
  if not use_k and top_p >= 1.0 and temperature == 1.0:
    mass_BxV = jnp.where(allowed_V, exp_BxV, 0.0)
    samp_BxV = None
  else:
    scaled = jnp.where(allowed_V, logits_BxV / temperature, -jnp.inf)
    if use_k or top_p < 1.0:
      if use_k:
        sorted_BxK = jax.lax.top_k(scaled, top_k)[0]
      else:
        sorted_BxK = -jnp.sort(-scaled, axis=-1)
      cut_B = sorted_BxK[:, -1]
      if top_p < 1.0:
        # Keep the smallest prefix of the sorted tokens whose mass reaches
        # top_p: token j stays when the mass before it is below top_p.
        probs = jax.nn.softmax(sorted_BxK, axis=-1)
        before = _cumsum(probs) - probs
        keep = jnp.maximum(jnp.sum(before < top_p, axis=-1), 1)
        cut_B = jnp.take_along_axis(sorted_BxK, keep[:, None] - 1, -1)[:, 0]
      scaled = jnp.where(scaled >= cut_B[:, None], scaled, -jnp.inf)
    samp_BxV = jax.nn.log_softmax(scaled, axis=-1)
    mass_BxV = jnp.exp(samp_BxV)
  # Inverse CDF with one uniform per row: the first token whose cumulative
  # mass exceeds u (tokens with zero mass are never picked).
  cdf_BxV = _cumsum(mass_BxV)
  total_B = cdf_BxV[:, -1]
  u_B = jax.vmap(lambda k: jax.random.uniform(k, ()))(key_B) * total_B
  tok = jnp.sum(cdf_BxV <= u_B[:, None], axis=-1).astype(jnp.int32)
  tok = jnp.minimum(tok, vocab - 1)
  logit_B = take(logits_BxV, tok)
  logp_B = logit_B - lse_B
  if samp_BxV is None:
    return tok, logp_B, logit_B - max_B - jnp.log(total_B)
  return tok, logp_B, take(samp_BxV, tok)


def row_keys(rng, step, rows_B):
  """Keys of step `step` for rows rows_B: fold_in(fold_in(rng, step), b)."""
  step_key = jax.random.fold_in(rng, step)
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(step_key, rows_B)


def _generate(
  graphdef,
  params,
  prompt: PromptBatch,
  rng,
  *,
  group_size: int,
  max_new_tokens: int,
  temperature: float,
  top_k: int,
  top_p: float,
  eos_ids: tuple[int, ...],
  pad_id: int,
  share_prefix: bool,
  suppress_ids: tuple[int, ...] | None,
  mesh: jax.sharding.Mesh | None = None,
) -> SampleOutput:
  g, r = group_size, max_new_tokens
  split = functools.partial(rows.constrain, mesh=mesh)
  prompt = split(prompt)
  if not share_prefix:
    prompt, g = split(repeat_group(prompt, group_size)), 1
  ids = jnp.asarray(prompt.prompt_ids_PxT, jnp.int32)
  p, t = ids.shape
  b = p * g
  cfg = nnx.merge(graphdef, params).cfg
  if suppress_ids is None:
    suppress_ids = (cfg.image_pad_token_id, cfg.video_pad_token_id)
  banned_V = np.zeros((cfg.text.vocab_size,), bool)
  banned_V[list(suppress_ids)] = True
  # The last sampled token is never fed back, so R - 1 decode slots.
  cache = split(language.init_cache(cfg, p, t + r - 1))
  logits, _, cache = vlm.forward(
    graphdef, params, ids, prompt.positions_3xPxT, prompt.prompt_mask_PxT,
    cache=cache, cache_index=0, **image_slots.model_inputs(prompt.images),
  )  # fmt: skip
  logits_BxV = logits[:, -1]
  if g > 1:  # group prefix sharing: copy each prompt's cache G times
    logits_BxV = jnp.repeat(logits_BxV, g, axis=0)
    cache = jax.tree.map(lambda x: jnp.repeat(x, g, axis=0), cache)
  cache = split(cache)
  num_real_B = jnp.repeat(jnp.asarray(prompt.num_real_P, jnp.int32), g)
  deltas_B = jnp.repeat(jnp.asarray(prompt.deltas_P, jnp.int32), g)
  rows_B = jnp.arange(b, dtype=jnp.int32)
  stop_ids = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)

  def emit(state, logits_BxV, step):
    """Samples token `step` from logits and records it."""
    toks, logps, slogps, done = state
    tok, lp, slp = sample_tokens(
      logits_BxV,
      row_keys(rng, step, rows_B),
      temperature,
      top_k,
      top_p,
      banned_V,
    )
    live = ~done
    tok = jnp.where(live, tok, pad_id)
    zero = jnp.zeros_like(lp)
    col = (0, step)
    toks = jax.lax.dynamic_update_slice(toks, tok[:, None], col)
    logps = jax.lax.dynamic_update_slice(
      logps, jnp.where(live, lp, zero)[:, None], col
    )
    slogps = jax.lax.dynamic_update_slice(
      slogps, jnp.where(live, slp, zero)[:, None], col
    )
    done = done | jnp.isin(tok, stop_ids)
    return _split_state((toks, logps, slogps, done), mesh), tok

  state = (
    jnp.full((b, r), pad_id, jnp.int32),
    jnp.zeros((b, r), jnp.float32),
    jnp.zeros((b, r), jnp.float32),
    jnp.zeros((b,), bool),
  )
  state, tok = emit(state, logits_BxV, 0)

  def cond(carry):
    step, _, _, state = carry
    return (step < r) & ~jnp.all(state[-1])

  ones_Bx1 = jnp.ones((b, 1), jnp.int32)

  def body(carry):
    step, tok, cache, state = carry
    # Feed token step-1, which is real token num_real + step - 1 of its row.
    pos = rope_index.next_positions(num_real_B + step - 1, deltas_B)
    logits, _, cache = vlm.forward(
      graphdef, params, tok[:, None], pos, ones_Bx1, cache=cache,
      cache_index=t + step - 1,
    )  # fmt: skip
    state, tok = emit(state, logits[:, 0], step)
    return step + 1, tok, split(cache), state

  carry = (jnp.asarray(1, jnp.int32), tok, cache, state)
  _, _, _, (toks, logps, slogps, done) = jax.lax.while_loop(cond, body, carry)
  del done
  # A token is generated when no stop id came strictly before it.
  is_stop = jnp.isin(toks, stop_ids).astype(jnp.int32)
  stops_before = jnp.cumsum(is_stop, axis=1) - is_stop
  mask = (stops_before == 0).astype(jnp.int32)
  return split(
    SampleOutput(
      tokens_BxR=jnp.where(mask > 0, toks, pad_id),
      logp_BxR=logps,
      sample_logp_BxR=slogps,
      mask_BxR=mask,
      lengths_B=mask.sum(1).astype(jnp.int32),
    )
  )


def _split_state(state, mesh):
  """The decode loop's (tokens, logps, sample logps, done), row-split."""
  names = ("toks_BxR", "logps_BxR", "slogps_BxR", "done_B")
  split = rows.constrain(dict(zip(names, state)), mesh)
  return tuple(split[n] for n in names)


_STATIC = (
  "graphdef",
  "group_size",
  "max_new_tokens",
  "temperature",
  "top_k",
  "top_p",
  "eos_ids",
  "pad_id",
  "share_prefix",
  "suppress_ids",
  "mesh",
)
_generate_jit = jax.jit(_generate, static_argnames=_STATIC)


def generate(
  graphdef, params, prompt: PromptBatch, rng: jax.Array, **options
) -> SampleOutput:
  """Samples G completions of up to R tokens per prompt, in one jit call.

  graphdef, params: `nnx.split(policy, nnx.Param)` (graphdef is static).
  prompt: `prepare_inputs(...)` for P prompts (numpy or device arrays).
  rng: a jax PRNG key; row b's step-r key is fold_in(fold_in(rng, r), b).
  options: the keyword options of `static_options` (max_new_tokens R is
    required; group_size G, sampling, stop ids, mesh), checked there.
  Returns a `SampleOutput` of B = P * G rows, row b = p * G + g. Compiles
  once per (shapes, graphdef, static options).
  """
  return _generate_jit(
    graphdef, params, prompt, rng, **static_options(**options)
  )


def lower_generate(
  graphdef, params, prompt: PromptBatch, rng: jax.Array, **options
) -> jax.stages.Lowered:
  """The jit computation `generate` runs for these inputs and options (the
  same keyword options, checked the same way), lowered and not run: its
  `.compile()` gives the executable and its HLO (for op profiles)."""
  return _generate_jit.lower(
    graphdef, params, prompt, rng, **static_options(**options)
  )


def static_options(
  *,
  group_size: int = 1,
  max_new_tokens: int,
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
  eos_ids: Sequence[int] = (),
  pad_id: int = 0,
  share_prefix: bool = True,
  suppress_ids: Sequence[int] | None = None,
  mesh: jax.sharding.Mesh | None = None,
) -> dict[str, Any]:
  """`generate`'s options checked (ValueError naming the bad one) and in
  the hashable form jit's static arguments need.

  temperature: 0 = greedy. top_k: 0 = off. top_p: 1.0 = off.
  eos_ids: stop ids (empty: always R tokens). pad_id fills after a stop.
  share_prefix: prefill P rows and repeat the cache G times (default), or
    prefill all P * G rows (same samples, slower; for checking).
  suppress_ids: ids never sampled; None = the image and video pad ids,
    which a teacher-forced forward would replace by image features.
  mesh: split the prompts, KV cache and sampled rows over the mesh's batch
    axes (data, fsdp) with the parameters as placed (`rows.place` the
    prompt first; P must split evenly). Row b's randomness is still a
    function of its global index, so the samples equal an unsplit run's.
  """
  if max_new_tokens < 1 or group_size < 1:
    raise ValueError(
      f"max_new_tokens ({max_new_tokens}) and group_size ({group_size}) "
      "must be >= 1"
    )
  if not 0.0 < top_p <= 1.0 or temperature < 0.0 or top_k < 0:
    raise ValueError(
      f"need 0 < top_p <= 1, temperature >= 0, top_k >= 0; got top_p="
      f"{top_p}, temperature={temperature}, top_k={top_k}"
    )
  return dict(
    group_size=int(group_size),
    max_new_tokens=int(max_new_tokens),
    temperature=float(temperature),
    top_k=int(top_k),
    top_p=float(top_p),
    eos_ids=tuple(int(i) for i in eos_ids),
    pad_id=int(pad_id),
    share_prefix=bool(share_prefix),
    suppress_ids=(
      None if suppress_ids is None else tuple(int(i) for i in suppress_ids)
    ),
    mesh=mesh,
  )


def full_sequence(
  prompt: PromptBatch, out: SampleOutput, group_size: int
) -> sequences.SequenceBatch:
  """The full sequences of the B = P * G sampled rows (pure jnp: usable
  inside jit, the output of `generate` never leaves the device).

  Row p * G + g is prompt p's T columns then completion row p * G + g's R
  columns: ids (pad after a row's stop), mask (the prompt's, then
  mask_BxR), M-RoPE positions (completion token r sits at num_real + r +
  delta on every axis, as during decoding; 0 on padding, as
  `rope_index` gives it) and the loss mask (mask_BxR on the completion
  columns); the P prompts' image slots are shared by their G rows. The
  model's logits at column T - 1 + r predict completion token r, so
  `logits[:, T - 1 : L - 1]` lines up with `tokens_BxR` / `logp_BxR`.
  Equals `sequences.build` on the same tokens.
  """
  g = group_size
  rep = functools.partial(jnp.repeat, repeats=g, axis=0)
  r = out.tokens_BxR.shape[1]
  start_B = rep(jnp.asarray(prompt.num_real_P + prompt.deltas_P, jnp.int32))
  comp_mask_BxR = jnp.asarray(out.mask_BxR, jnp.int32)
  comp_BxR = start_B[:, None] + jnp.arange(r, dtype=jnp.int32)[None]
  comp_BxR = jnp.where(comp_mask_BxR > 0, comp_BxR, 0)
  prompt_mask_BxT = rep(jnp.asarray(prompt.prompt_mask_PxT, jnp.int32))
  positions = jnp.concatenate(
    [
      jnp.repeat(jnp.asarray(prompt.positions_3xPxT, jnp.int32), g, axis=1),
      jnp.broadcast_to(comp_BxR[None], (3,) + comp_BxR.shape),
    ],
    axis=2,
  )
  return sequences.SequenceBatch(
    ids_BxL=jnp.concatenate(
      [rep(jnp.asarray(prompt.prompt_ids_PxT, jnp.int32)), out.tokens_BxR],
      axis=1,
    ),
    mask_BxL=jnp.concatenate([prompt_mask_BxT, comp_mask_BxR], axis=1),
    positions_3xBxL=positions,
    loss_mask_BxL=jnp.concatenate(
      [jnp.zeros_like(prompt_mask_BxT), comp_mask_BxR], axis=1
    ),
    images=prompt.images,
  )


def teacher_forced_logp(
  graphdef,
  params,
  seq: sequences.SequenceBatch,
  group_size: int,
  prompt_len: int,
) -> jax.Array:
  """logp_BxR of the completion tokens of `full_sequence` (its columns
  from T = `prompt_len` on) from one forward in which every row reads its
  own copy of its prompt's images (`repeat_group`'s layout): the
  reference the sampler's `logp_BxR` must match (0 where masked)."""
  p = seq.ids_BxL.shape[0] // group_size
  images = seq.images
  if images is not None:
    images = image_slots.take_prompts(
      images, np.repeat(np.arange(p), group_size), p, xp=jnp
    )
  logits, _, _ = vlm.forward(
    graphdef, params, seq.ids_BxL, seq.positions_3xBxL, seq.mask_BxL,
    **image_slots.model_inputs(images),
  )  # fmt: skip
  t = prompt_len
  logp_BxRxV = jax.nn.log_softmax(
    logits[:, t - 1 : -1].astype(jnp.float32), axis=-1
  )
  toks_BxR = seq.ids_BxL[:, t:]
  logp = jnp.take_along_axis(logp_BxRxV, toks_BxR[..., None], -1)[..., 0]
  return jnp.where(seq.mask_BxL[:, t:] > 0, logp, 0.0)
