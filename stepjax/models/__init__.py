"""stepjax.models: Qwen2.5-VL policy in Flax NNX and the step-value head.

config (ModelConfig presets), layers, vision_index (host-side vision
metadata), vision, rope_index (host-side M-RoPE positions), language
(decoder + KV cache), vlm (the policy; API in its docstring),
step_value, hf_convert (transformers checkpoints in and out).
"""
