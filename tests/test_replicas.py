"""Trees copied to the devices for pmapped functions, and back, without compiling a program."""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from jaxretrieval import replicas
from jaxretrieval.replicas import AXIS


def _compiled(caplog, fn) -> list[str]:
  """Runs fn(); the programs JAX compiled meanwhile (its log of compiles)."""
  caplog.clear()
  with caplog.at_level(logging.WARNING), jax.log_compiles(True):
    fn()
  return [r.getMessage().split(' with ')[0] for r in caplog.records
          if r.getMessage().startswith('Compiling')]


def test_replicate_compiles_nothing_and_lays_out_like_a_pmap_output(caplog):
  rng = np.random.default_rng(0)
  tree = {'w': rng.normal(size=(7, 3)).astype(np.float32),  # NumPy
          'b': jax.device_put(rng.normal(size=(5,)).astype(np.float32)),  # on a device
          'count': np.int32(4)}
  devices = jax.local_device_count()
  copied = {}
  assert _compiled(caplog, lambda: copied.update(replicas.replicate(tree))) == []
  assert copied['w'].shape == (devices, 7, 3) and copied['count'].shape == (devices,)
  np.testing.assert_array_equal(np.asarray(copied['w'])[-1], tree['w'])

  @functools.partial(jax.pmap, axis_name=AXIS)
  def step(t):
    return {'w': t['w'] * 2, 'b': t['b'] + 1, 'count': t['count'] + 1}

  def twice():  # fed its own output, the step runs the program it compiled for `copied`
    step(step(copied))

  assert len(_compiled(caplog, twice)) == 1
  out = step(copied)
  back = {}
  assert _compiled(caplog, lambda: back.update(replicas.first_replica(out))) == []
  assert all(isinstance(x, np.ndarray) for x in back.values())  # on the host
  np.testing.assert_array_equal(back['w'], 2 * tree['w'])
  np.testing.assert_array_equal(back['b'], np.asarray(tree['b']) + 1)
  assert back['count'].shape == () and back['count'] == 5


def test_eager_jnp_on_host_arrays_compiles_per_shape(caplog):
  """Why replicas (and dummy_inputs, new_train_state) stay off eager jnp: here an array of
  a new shape compiles a program, even a plain `jnp.asarray`."""
  assert _compiled(caplog, lambda: jnp.asarray(np.zeros((3, 11, 5), np.float32))) != []
