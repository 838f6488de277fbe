"""Diagnostic (section 8): can the synthmed preset's vision tower learn to see
lesions when it is trained directly? Vision tower + a linear head on its 16
flattened merged tokens, trained on per-organ lesion presence (BCE) over the
2048 scans of SynthMed seed 0; accuracy per organ on 512 scans of seed 99.

  python docs/results/diagnosis/scripts/vision_probe.py [STEPS [DEPTH [LR]]]

Printed: step, loss, held-out accuracy per organ (right lung, left lung,
heart, liver, spleen, right kidney, left kidney), mean, majority baseline.
"""
import sys, time
import numpy as np, jax, jax.numpy as jnp, optax
from flax import nnx
import pathlib
REPO = pathlib.Path(__file__).resolve().parents[4]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "configs"))
import synthmed_tiny
from stepjax.data import pipeline, sources, synthmed, tokenizer as tokenizer_lib
from stepjax import image_slots
from stepjax.train import components
from stepjax.models import vlm, config as config_lib

ORGANS = ["right lung","left lung","heart","liver","spleen","right kidney","left kidney"]
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 400
depth = int(sys.argv[2]) if len(sys.argv) > 2 else 2
config = synthmed_tiny.get_config()
tok = tokenizer_lib.load_tokenizer(components.tokenizer_path(config))
cfg = config_lib.ModelConfig.synthmed(vocab_size=len(tok)) if hasattr(tok,'__len__') else None
import dataclasses
cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, depth=depth, fullatt_block_indexes=(depth-1,)))

def labels(r):
  y = np.zeros(len(ORGANS), np.float32); m = np.zeros(len(ORGANS), np.float32)
  for o in r.meta["scene"]["organs"]:
    i = ORGANS.index(o["name"]); m[i] = 1; y[i] = float(len(o["lesions"]) > 0)
  return y, m

def data(records, bs, shuffle):
  opts = pipeline.PipelineOptions.from_config(config, sft=True, shuffle=False, num_epochs=1, drop_remainder=False, batch_size=len(records))
  ds = pipeline.make_dataset(sources.InMemorySource(records, name="d"), tok, opts, think_tag=config.tokenizer.think_tag, shard_index=0, shard_count=1)
  b = next(iter(ds))
  return b

train = list(synthmed.generate(2048, seed=0)); test = list(synthmed.generate(512, seed=99))
bt = data(train, 0, True); be = data(test, 0, False)
Yt = np.stack([labels(r)[0] for r in train]); Mt = np.stack([labels(r)[1] for r in train])
Ye = np.stack([labels(r)[0] for r in test]); Me = np.stack([labels(r)[1] for r in test])
model = vlm.create(cfg, seed=0)
vis = model.visual
class Head(nnx.Module):
  def __init__(s, rngs):
    s.lin = nnx.Linear(16*cfg.vision.out_hidden_size, len(ORGANS), rngs=rngs)
  def __call__(s, f): return s.lin(f.reshape(f.shape[0], -1))
head = Head(nnx.Rngs(0))
opt = nnx.Optimizer((vis, head), optax.adam(float(sys.argv[3]) if len(sys.argv)>3 else 1e-3), wrt=nnx.Param)

def feats(vis, b):
  vi = image_slots.from_batch(b, len(b["prompt_ids_BxT"]), cfg)
  f, valid = vis(jnp.asarray(vi.pixels_IxNxP), vi.vision_meta)
  return f
@nnx.jit
def step(vis, head, opt, pix, meta, y, m):
  def loss_fn(mods):
    v, h = mods
    f, _ = v(pix, meta)
    lg = h(f)
    l = optax.sigmoid_binary_cross_entropy(lg, y)
    return (l*m).sum()/m.sum()
  loss, g = nnx.value_and_grad(loss_fn)((vis, head))
  opt.update((vis, head), g)
  return loss
def sub(b, idx):  # one image per prompt: the picked prompts own slots 0, 1, ...
  out = {k: (v[idx] if hasattr(v, "shape") and v.shape[:1]==(len(b["pixels_IxNxP"]),) else v) for k, v in b.items()}
  return dict(out, image_prompt_I=np.arange(len(idx), dtype=np.int32))
rng = np.random.default_rng(0)
bs=32
def evaluate():
  accs=[]
  P=[]
  for i in range(0, len(test), 128):
    b = sub(be, np.arange(i, min(i+128,len(test))))
    vi = image_slots.from_batch(b, len(b["prompt_ids_BxT"]), cfg)
    f,_ = vis(jnp.asarray(vi.pixels_IxNxP), vi.vision_meta)
    P.append(np.asarray(head(f)) > 0)
  P=np.concatenate(P)
  acc = ((P==Ye)*Me).sum(0)/Me.sum(0)
  base = np.maximum((Ye*Me).sum(0), ((1-Ye)*Me).sum(0))/Me.sum(0)
  return acc, base
t0=time.time()
for s in range(steps):
  idx = rng.choice(len(train), bs, replace=False)
  b = sub(bt, idx)
  vi = image_slots.from_batch(b, len(b["prompt_ids_BxT"]), cfg)
  loss = step(vis, head, opt, jnp.asarray(vi.pixels_IxNxP), vi.vision_meta, jnp.asarray(Yt[idx]), jnp.asarray(Mt[idx]))
  if s % 100 == 0 or s == steps-1:
    acc, base = evaluate()
    print(f"step {s} loss {float(loss):.3f} t={time.time()-t0:.0f}s acc", np.round(acc,3), "mean", round(float(acc.mean()),3), "base", round(float(base.mean()),3), flush=True)
