"""The models of the tests as compiled programs: run eagerly, each op of a model compiles a
program of its own for every new shape. One jitted init and apply, shared by the test files
(equal models, hashable by value, share their programs)."""

import functools

import jax


def init(model, inputs, seed: int = 0) -> dict:
  """`model`'s variables (eval mode) for `inputs`."""
  return _init(model, inputs, jax.random.key(seed))


@functools.partial(jax.jit, static_argnums=0)
def _init(model, inputs, key):
  return model.init(key, inputs, train=False)


@functools.partial(jax.jit, static_argnums=0, static_argnames=('train', 'method', 'mutable'))
def apply(model, variables, *inputs, train: bool, method=None, mutable=False):
  """`model.apply(variables, *inputs, train=train, ...)`; `mutable` a tuple of collections."""
  return model.apply(variables, *inputs, train=train, method=method, mutable=mutable)
