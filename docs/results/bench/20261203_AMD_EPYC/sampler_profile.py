"""Op-level profile of both samplers at `stepjax bench sampler`'s shapes.

Run from the repository root:
  python docs/results/bench/20261203_AMD_EPYC/sampler_profile.py
(4 prompts x G=8, 112 px, 48 text tokens, 128 new tokens at T=1, no stop
id, nothing suppressed; transformers with 2 threads). Output in
sampler_profile.log. Times are summed over threads, per sampler call.
"""
import tempfile
import jax, torch, transformers
from flax import nnx
from stepjax import op_profile
from stepjax.models import config as config_lib, vlm, hf_convert
from stepjax.sampling import bench, sampler

cfg = config_lib.ModelConfig.bench()
model = vlm.create(cfg, 0)
graphdef, params = nnx.split(model, nnx.Param)
batch = bench.prompt_batch(cfg, 4, 112, 48, 0)
prompt = sampler.prepare_inputs(batch, cfg)
kw = dict(group_size=8, max_new_tokens=128, temperature=1.0, top_k=0, top_p=1.0,
          eos_ids=(), pad_id=cfg.pad_token_id, share_prefix=True, suppress_ids=(), mesh=None)
key = jax.random.key(0)
compiled = sampler._generate_jit.lower(graphdef, params, prompt, key, **kw).compile()
call = lambda: jax.block_until_ready(compiled(params, prompt, key))
call()
ours = op_profile.xla_op_times(call, compiled.as_text(), iters=3, top=10)
print(op_profile.format_summary("stepjax sampler", ours))
torch.set_num_threads(2)
with tempfile.TemporaryDirectory() as tmp:
  hf_convert.save_hf(params, cfg, tmp)
  m = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp, dtype=torch.float32).eval()
ids = torch.tensor(batch["prompt_ids_BxT"], dtype=torch.long)
inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids),
  pixel_values=torch.tensor(batch["flat_pixels"]),
  image_grid_thw=torch.tensor(batch["grid_thw_Ix3"], dtype=torch.long),
  mm_token_type_ids=(ids == cfg.image_pad_token_id).long())
opts = dict(do_sample=True, num_return_sequences=8, temperature=1.0, top_k=0, top_p=1.0,
  max_new_tokens=128, min_new_tokens=128, pad_token_id=cfg.pad_token_id)
def theirs():
  with torch.inference_mode():
    return m.generate(**inputs, **opts)
theirs()
print(op_profile.format_summary("transformers generate", op_profile.torch_op_times(theirs, iters=3, top=10)))
