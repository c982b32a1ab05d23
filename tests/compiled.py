"""The models of the tests without programs they do not need: variables drawn in NumPy in
the shapes of a model's (cached) init trace, and one jitted apply shared by the test files
(run eagerly, each op of a model compiles a program of its own for every new shape; equal
models, hashable by value, share their programs)."""

import functools

import jax
import numpy as np

from jaxretrieval.models import abstract_variables, mmt


def init_like(shapes, rng: np.random.Generator) -> dict:
  """Variables of `shapes` (a model's `eval_shape`d init) valued like an init's, drawn in
  NumPy (no init program to compile in every process): norm scales and variances 1, biases
  and means 0, weights N(0, 1 / fan_in)."""

  def value(path, shape: jax.ShapeDtypeStruct) -> np.ndarray:
    name = jax.tree_util.keystr(path)
    if name.endswith(("['scale']", "['var']")):
      return np.ones(shape.shape, shape.dtype)
    if name.endswith(("['bias']", "['mean']")):
      return np.zeros(shape.shape, shape.dtype)
    fan_in = int(np.prod(shape.shape[:-1])) or 1
    return rng.normal(0, fan_in ** -0.5, shape.shape).astype(shape.dtype)

  return jax.tree_util.tree_map_with_path(value, shapes)


def variables(model, seed: int = 0) -> dict:
  """Variables of a RetrievalModel or MMT, `init_like` its init's: for tests whose assertions
  hold for any weights (its init program, 1-5 s to compile per model, is not needed)."""
  shapes = (mmt.abstract_variables if isinstance(model, mmt.MMT) else abstract_variables)
  return init_like(shapes(model.spec), np.random.default_rng(seed))


@functools.partial(jax.jit, static_argnums=0, static_argnames=('train', 'method', 'mutable'))
def apply(model, variables, *inputs, train: bool, method=None, mutable=False):
  """`model.apply(variables, *inputs, train=train, ...)`; `mutable` a tuple of collections."""
  return model.apply(variables, *inputs, train=train, method=method, mutable=mutable)
