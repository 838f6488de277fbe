"""Diagnostic (section 8): does the whole policy learn to read lesions?

Full-model SFT (synthmed preset, batch 16, AdamW with warm-up + cosine at
3e-3, clip 1.0) on SynthMed findings reports only (4096 scans of seed 30000;
targets name every organ's lesion count), then on 256 held-out reports
(seed 40000) the greedy accuracy of the lesion-presence token: the token
after " has", which is " no" or " " (then a digit).

  python docs/results/diagnosis/scripts/lm_probe.py VARIANT STEPS [k=v ...]

VARIANT: plain (as is), auxdense (the dense per-token head's loss added to
SFT throughout), pretower (the vision tower first trained 600 steps
with a direct per-organ head, as in vision_probe.py), auxhead (that direct
head's loss added to SFT throughout, weight aux=1), auxmil (the same with
a per-token head and log-sum-exp over tokens: what sft.grounding_weight
does), oracle (image features made from the labels; not run).
k=v: rope_theta=, lr=, ntrain=, aux=, pre=, prehead=mil (pretower with the
per-token log-sum-exp head; dense: per-token lesion and organ labels from the
scene geometry), prelr=, save=FILE (the pretrained tower), freeze=1 (the tower is not trained in SFT).
"""
import sys, time, dataclasses
import numpy as np, jax, jax.numpy as jnp, optax
from flax import nnx
import pathlib
REPO = pathlib.Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO)); sys.path.insert(0, str(REPO / "configs"))
import synthmed_tiny
from stepjax.data import pipeline, sources, synthmed, tokenizer as tokenizer_lib
from stepjax.train import batches, components
from stepjax.models import vlm, config as config_lib
from stepjax.rl import losses

variant = sys.argv[1]; steps = int(sys.argv[2])
overrides = dict(a.split("=") for a in sys.argv[3:])
ORGANS = ["right lung","left lung","heart","liver","spleen","right kidney","left kidney"]
config = synthmed_tiny.get_config()
tok = tokenizer_lib.load_tokenizer(components.tokenizer_path(config))
from stepjax.train import policy
cfg = policy.model_config(config, tokenizer_lib.tokenizer_info(tok))
if "rope_theta" in overrides:
  cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, rope_theta=float(overrides["rope_theta"])))
HAS = tok.encode(" has", add_special_tokens=False)[0]

GRID = 4  # merged tokens per side (112 px scans, 14 px patches, 2x2 merge)

def dense_labels(scene, size=112):
  """float32[16, 14]: per merged token (raster order), whether it overlaps a
  lesion of organ k (columns 0-6) and whether it overlaps organ k (7-13)."""
  yy, xx = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
  out = np.zeros((GRID * GRID, 2 * len(ORGANS)), np.float32)
  cell = size // GRID
  def pool(mask):
    return mask.reshape(GRID, cell, GRID, cell).any(axis=(1, 3)).reshape(-1)
  for o in scene["organs"]:
    k = ORGANS.index(o["name"])
    c, s_ = np.cos(o["angle"]), np.sin(o["angle"])
    u = (xx - o["cx"]) * c + (yy - o["cy"]) * s_
    v = -(xx - o["cx"]) * s_ + (yy - o["cy"]) * c
    out[:, 7 + k] = pool((u / o["rx"]) ** 2 + (v / o["ry"]) ** 2 <= 1)
    for les in o["lesions"]:
      d2 = (xx - o["cx"] - les["dx"]) ** 2 + (yy - o["cy"] - les["dy"]) ** 2
      out[:, k] = np.maximum(out[:, k], pool(d2 <= les["radius"] ** 2))
  return out

def batches_of(records, bs):
  opts = pipeline.PipelineOptions.from_config(config, sft=True, shuffle=False, num_epochs=1, drop_remainder=False, batch_size=bs)
  ds = pipeline.make_dataset(sources.InMemorySource(records, name="d"), tok, opts, think_tag=config.tokenizer.think_tag, shard_index=0, shard_count=1)
  out = []
  for b, i0 in zip(ds, range(0, len(records), bs)):
    q = batches.sft_batch(b, cfg).seq  # flattened: the keys read below
    x = dict(ids_BxL=q.ids_BxL, mask_BxL=q.mask_BxL, positions_3xBxL=q.positions_3xBxL, loss_mask_BxL=q.loss_mask_BxL, pixels_IxNxP=q.images.pixels_IxNxP, vision_meta=q.images.vision_meta)
    y = np.zeros((len(b["pixels_IxNxP"]), len(ORGANS)), np.float32); m = np.zeros_like(y)
    for j, r in enumerate(records[i0:i0+bs]):
      for o in r.meta["scene"]["organs"]:
        k = ORGANS.index(o["name"]); m[j,k] = 1; y[j,k] = float(len(o["lesions"])>0)
    x["y"], x["m"] = y, m
    x["dense"] = np.stack([dense_labels(r.meta["scene"]) for r in records[i0:i0+bs]])
    out.append(x)
  return out
t0 = time.time()
ntrain = int(overrides.get("ntrain", 4096))
train = batches_of([synthmed.make_findings_record(30000, i) for i in range(ntrain)], 16)
test = batches_of([synthmed.make_findings_record(40000, i) for i in range(256)], 64)
print(f"data {time.time()-t0:.0f}s", flush=True)

model = vlm.create(cfg, seed=0)
class Head(nnx.Module):
  def __init__(s, rngs):
    s.lin = nnx.Linear(16*cfg.vision.out_hidden_size, len(ORGANS), rngs=rngs)
  def __call__(s, f): return s.lin(f.reshape(f.shape[0], -1))
class MilHead(nnx.Module):
  def __init__(s, rngs):
    s.lin = nnx.Linear(cfg.vision.out_hidden_size, len(ORGANS), rngs=rngs)
  def __call__(s, f): return jax.nn.logsumexp(s.lin(f), axis=1)  # over tokens
mil = variant == "auxmil" or overrides.get("prehead") == "mil"
class DenseHead(nnx.Module):
  """Per-token logits: lesion of organ k here (0-6), organ k here (7-13)."""
  def __init__(s, rngs):
    s.lin = nnx.Linear(cfg.vision.out_hidden_size, 2 * len(ORGANS), rngs=rngs)
  def __call__(s, f): return s.lin(f)
dense = overrides.get("prehead") == "dense" or variant == "auxdense"
head = DenseHead(nnx.Rngs(1)) if dense else MilHead(nnx.Rngs(1)) if mil else Head(nnx.Rngs(1))
def image_logits(h, f):  # per-organ lesion presence logit of the image
  return h(f)[..., :len(ORGANS)].max(axis=1) if dense else h(f)
freeze = overrides.get("freeze") == "1"

def dev(x): return {k: v if k == "vision_meta" else jnp.asarray(v) for k, v in x.items()}

@nnx.jit
def head_step(vis, head, opt, b):
  def lf(mods):
    v, h = mods
    f, _ = v(b["pixels_IxNxP"], b["vision_meta"])
    if dense:
      return optax.sigmoid_binary_cross_entropy(h(f), b["dense"]).mean()
    l = optax.sigmoid_binary_cross_entropy(h(f), b["y"])
    return (l*b["m"]).sum()/b["m"].sum()
  loss, g = nnx.value_and_grad(lf)((vis, head))
  opt.update((vis, head), g)
  return loss

oracle_tab = nnx.Param(jax.random.normal(jax.random.key(3), (len(ORGANS), 2, cfg.text.hidden_size)) * float(overrides.get("oscale", 1.0)))
def oracle_feats(b):
  # token k < 7: organ k's (lesion / no lesion) vector when the organ is in the scan
  y = b["y"].astype(jnp.int32); m = b["m"]
  f = oracle_tab[jnp.arange(len(ORGANS))[None, :], y]  # I x 7 x D
  f = f * m[..., None]
  return jnp.concatenate([f, jnp.zeros((f.shape[0], 16 - len(ORGANS), f.shape[-1]))], 1)
aux_w = float(overrides.get("aux", 1.0)) if variant in ("auxhead", "auxmil", "auxdense") else 0.0
@nnx.jit
def sft_step(model, head, opt, b):
  def lf(mods):
    mdl, h = mods
    if variant == "oracle":
      logits, _, _ = mdl(b["ids_BxL"], b["positions_3xBxL"], b["mask_BxL"], img_IxMxD=oracle_feats(b))
    elif freeze:
      f, _ = mdl.visual(b["pixels_IxNxP"], b["vision_meta"])
      logits, _, _ = mdl(b["ids_BxL"], b["positions_3xBxL"], b["mask_BxL"], img_IxMxD=jax.lax.stop_gradient(f))
    else:
      logits, _, _ = mdl(b["ids_BxL"], b["positions_3xBxL"], b["mask_BxL"], pixels_IxNxP=b["pixels_IxNxP"], vision_meta=b["vision_meta"])
    loss, _ = losses.sft_loss(logits[:, :-1], b["ids_BxL"][:, 1:], b["loss_mask_BxL"][:, 1:])
    if aux_w:
      f, _ = mdl.visual(b["pixels_IxNxP"], b["vision_meta"])
      if dense:
        loss = loss + aux_w * optax.sigmoid_binary_cross_entropy(h(f), b["dense"]).mean()
      else:
        l = optax.sigmoid_binary_cross_entropy(h(f), b["y"])
        loss = loss + aux_w * (l*b["m"]).sum()/b["m"].sum()
    return loss
  loss, g = nnx.value_and_grad(lf)((model, head))
  opt.update((model, head), g)
  return loss

@nnx.jit
def predict(model, b):
  if variant == "oracle":
    logits, _, _ = model(b["ids_BxL"], b["positions_3xBxL"], b["mask_BxL"], img_IxMxD=oracle_feats(b))
  else:
    logits, _, _ = model(b["ids_BxL"], b["positions_3xBxL"], b["mask_BxL"], pixels_IxNxP=b["pixels_IxNxP"], vision_meta=b["vision_meta"])
  return jnp.argmax(logits[:, :-1], -1)

def evaluate():
  hit = tot = 0; base = {}
  for b in test:
    p = np.asarray(predict(model, dev(b)))
    ids = b["ids_BxL"]; lm = b["loss_mask_BxL"][:, 1:]
    at = (ids[:, :-1] == HAS) & (lm > 0)
    tgt = ids[:, 1:]
    hit += ((p == tgt) & at).sum(); tot += at.sum()
    for t in tgt[at]: base[int(t)] = base.get(int(t), 0) + 1
  return hit/tot, max(base.values())/tot

rng = np.random.default_rng(0)
if variant == "pretower":
  opt = nnx.Optimizer((model.visual, head), optax.adam(float(overrides.get("prelr", 1e-3))), wrt=nnx.Param)
  @nnx.jit
  def head_acc(vis, head, b):
    f, _ = vis(b["pixels_IxNxP"], b["vision_meta"])
    return (((image_logits(head, f) > 0) == (b["y"] > 0)) * b["m"]).sum(), b["m"].sum()
  def tower_acc():
    hits = [tuple(map(float, head_acc(model.visual, head, dev(b)))) for b in test]
    return sum(h for h, _ in hits) / sum(n for _, n in hits)
  pre = int(overrides.get("pre", 600))
  for s in range(pre):
    head_step(model.visual, head, opt, dev(train[rng.integers(len(train))]))
    if (s + 1) % 500 == 0 and s + 1 < pre:
      print(f"pretower step {s + 1} head acc {tower_acc():.3f} t={time.time()-t0:.0f}s", flush=True)
  if overrides.get("save"):
    import pickle; pickle.dump(nnx.state(model.visual, nnx.Param), open(overrides["save"], "wb"))
  print(f"pretower done {time.time()-t0:.0f}s head acc {tower_acc():.3f}", flush=True)
lr = float(overrides.get("lr", 3e-3))
sched = optax.warmup_cosine_decay_schedule(0, lr, 50, steps, lr*0.1)
opt = nnx.Optimizer((model, head), optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, weight_decay=0.0)), wrt=nnx.Param)
for s in range(steps):
  loss = sft_step(model, head, opt, dev(train[rng.integers(len(train))]))
  if s % 200 == 0 or s == steps - 1:
    acc, base = evaluate()
    print(f"{variant} step {s} loss {float(loss):.3f} presence-token acc {acc:.3f} (majority {base:.3f}) t={time.time()-t0:.0f}s", flush=True)
