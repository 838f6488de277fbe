"""Shared layers: RMSNorm, dense layers with logical axes, rotary helpers.

Every parameter is an `nnx.Param` carrying `out_sharding` (logical axis
names such as `embed`, `mlp`, `heads`, `kv_heads`, `head_dim`, `vocab`);
`nnx.get_partition_spec` plus logical axis rules map them to a mesh.
Parameters are stored in `param_dtype` and cast to the compute `dtype` at
use.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def to_dtype(name: str) -> jnp.dtype:
  return jnp.dtype(name)


_SHAPES_ONLY = threading.local()


@contextlib.contextmanager
def shapes_only() -> Iterator[None]:
  """Modules built inside hold `jax.ShapeDtypeStruct` parameters: the
  abstract model `nnx.eval_shape` gives, without tracing an initializer.
  (Traced, each `nnx.Rngs` call costs time that grows with the trace so
  far: its counter update asks a tracer for its sharding, which walks the
  trace. ~10 s for an 8B model.)"""
  before = getattr(_SHAPES_ONLY, "on", False)
  _SHAPES_ONLY.on = True
  try:
    yield
  finally:
    _SHAPES_ONLY.on = before


def param(
  rngs: nnx.Rngs | None,
  shape: Sequence[int],
  axes: Sequence[str | None],
  dtype: str,
  init: str = "normal",
  std: float = 0.02,
  fill: float = 0.0,
) -> nnx.Param:
  """A parameter with logical axis names; init is normal (`std`), zeros,
  ones or full (every entry `fill`)."""
  if len(shape) != len(axes):
    raise ValueError(f"shape {shape} and axes {axes} differ in rank")
  dt = to_dtype(dtype)
  if init not in ("normal", "zeros", "ones", "full"):
    raise ValueError(f"unknown init {init!r}")
  if getattr(_SHAPES_ONLY, "on", False):
    value = jax.ShapeDtypeStruct(tuple(shape), dt)
  elif init == "normal":
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
    value = value.astype(dt)
  elif init == "zeros":
    value = jnp.zeros(shape, dt)
  elif init == "ones":
    value = jnp.ones(shape, dt)
  else:
    value = jnp.full(shape, fill, jnp.float32).astype(dt)
  return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


class RMSNorm(nnx.Module):
  """RMSNorm computed in float32, as transformers' Qwen2RMSNorm does."""

  def __init__(
    self, dim: int, eps: float, axis: str, param_dtype: str, dtype: str
  ):
    self.scale = param(None, (dim,), (axis,), param_dtype, init="ones")
    self.eps = eps
    self.dtype = to_dtype(dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    var = jnp.mean(x32 * x32, axis=-1, keepdims=True)
    x32 = x32 * jax.lax.rsqrt(var + self.eps)
    return self.scale[...].astype(self.dtype) * x32.astype(self.dtype)


class LayerNorm(nnx.Module):
  """LayerNorm with scale and bias, computed in float32 (Qwen3-VL's
  vision tower)."""

  def __init__(
    self, dim: int, eps: float, axis: str, param_dtype: str, dtype: str
  ):
    self.scale = param(None, (dim,), (axis,), param_dtype, init="ones")
    self.bias = param(None, (dim,), (axis,), param_dtype, init="zeros")
    self.eps = eps
    self.dtype = to_dtype(dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    y = y * self.scale[...].astype(jnp.float32)
    y = y + self.bias[...].astype(jnp.float32)
    return y.astype(self.dtype)


class Dense(nnx.Module):
  """y = x . kernel + bias over the trailing `len(in_shape)` axes of x.

  kernel has shape in_shape + out_shape (e.g. embed -> heads x head_dim),
  which keeps head axes explicit for sharding.
  """

  def __init__(
    self,
    in_shape: Sequence[int],
    out_shape: Sequence[int],
    in_axes: Sequence[str | None],
    out_axes: Sequence[str | None],
    *,
    use_bias: bool,
    rngs: nnx.Rngs,
    param_dtype: str,
    dtype: str,
    std: float = 0.02,
  ):
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    self.n_in = len(in_shape)
    self.kernel = param(
      rngs,
      in_shape + out_shape,
      tuple(in_axes) + tuple(out_axes),
      param_dtype,
      std=std,
    )
    self.bias = (
      param(None, out_shape, out_axes, param_dtype, init="zeros")
      if use_bias
      else None
    )
    self.dtype = to_dtype(dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel[...].astype(self.dtype)
    y = jnp.tensordot(x.astype(self.dtype), k, axes=self.n_in)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


def dense_kwargs(cfg, rngs: nnx.Rngs, **extra) -> dict:
  """Dense's keyword arguments from a ModelConfig: dtypes and init std."""
  return dict(
    rngs=rngs,
    param_dtype=cfg.param_dtype,
    dtype=cfg.dtype,
    std=cfg.initializer_range,
    **extra,
  )


def rotate_half(x: jax.Array) -> jax.Array:
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x: [..., heads, head_dim]; cos/sin broadcast to [..., 1, head_dim]."""
  return x * cos[..., None, :] + rotate_half(x) * sin[..., None, :]


def inv_freq(dim: int, theta: float) -> jax.Array:
  """Standard RoPE inverse frequencies for a rotary width `dim` (dim/2)."""
  return 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))


def gelu_exact(x: jax.Array) -> jax.Array:
  return 0.5 * x * (1.0 + jax.lax.erf(x / math.sqrt(2.0)))


class MLP(nnx.Module):
  """fc2(gelu(fc1(x))) with biases: Qwen3-VL's vision MLP (tanh GELU) and
  InternViT's (`approximate=False`: exact GELU)."""

  def __init__(
    self,
    hidden: int,
    intermediate: int,
    *,
    rngs: nnx.Rngs,
    param_dtype: str,
    dtype: str,
    std: float,
    approximate: bool = True,
  ):
    kw = dict(
      rngs=rngs, param_dtype=param_dtype, dtype=dtype, std=std, use_bias=True
    )
    self.fc1 = Dense((hidden,), (intermediate,), ("embed",), ("mlp",), **kw)
    self.fc2 = Dense((intermediate,), (hidden,), ("mlp",), ("embed",), **kw)
    self.approximate = approximate

  def __call__(self, x):
    h = self.fc1(x)
    h = jax.nn.gelu(h, approximate=True) if self.approximate else gelu_exact(h)
    return self.fc2(h)


class GatedMLP(nnx.Module):
  """down(silu(gate(x)) * up(x)): the SwiGLU MLP of the decoder layers (no
  biases) and of the vision blocks (with biases)."""

  def __init__(
    self,
    hidden: int,
    intermediate: int,
    *,
    use_bias: bool,
    rngs: nnx.Rngs,
    param_dtype: str,
    dtype: str,
    std: float,
  ):
    kw = dict(
      rngs=rngs,
      param_dtype=param_dtype,
      dtype=dtype,
      std=std,
      use_bias=use_bias,
    )
    d, f = hidden, intermediate
    self.gate = Dense((d,), (f,), ("embed",), ("mlp",), **kw)
    self.up = Dense((d,), (f,), ("embed",), ("mlp",), **kw)
    self.down = Dense((f,), (d,), ("mlp",), ("embed",), **kw)

  def __call__(self, x):
    return self.down(jax.nn.silu(self.gate(x)) * self.up(x))
