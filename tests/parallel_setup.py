"""The deterministic model and global batch shared by the data-parallel equivalence tests."""

import functools

from flax import jax_utils
import jax
import ml_collections
import numpy as np

from jaxretrieval import replicas
from jaxretrieval.models import ModelSpec, RetrievalModel, abstract_variables
from jaxretrieval.models.spec import model_experts
from jaxretrieval.replicas import AXIS
from jaxretrieval.step import loss_and_grads
from tests.compiled import init_like

GLOBAL_BATCH = 8


def setup(axis_name=None, seed=0):
  """CE with two experts, one flaky item, a partial (masked) batch and a small vocabulary."""
  spec = ModelSpec('ce', model_experts(['vggish', 'vggsound'], clusters=4), text_clusters=5,
                   shared_dim=32)
  rng = np.random.default_rng(seed)
  b, t = GLOBAL_BATCH, 6
  availability = np.ones((b, 2), np.float32)
  availability[3, 0] = 0.0
  batch = {
      'experts': {'vggish': rng.normal(size=(b, t, 128)).astype(np.float32),
                  'vggsound': rng.normal(size=(b, t, 512)).astype(np.float32)},
      'expert_lengths': {'vggish': np.full(b, t, np.int32), 'vggsound': np.full(b, t, np.int32)},
      'availability': availability,
      'text_ids': rng.integers(1, 20, size=(b, 7)).astype(np.int32),
      'text_lengths': np.full(b, 7, np.int32),
      'row_mask': np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32),  # a partial last batch
  }
  table = np.concatenate([np.zeros((1, 300)), rng.normal(size=(19, 300))]).astype(np.float32)
  variables = init_like(abstract_variables(spec), rng)
  loss = ml_collections.ConfigDict({'name': 'max_margin', 'margin': 0.2, 'fix_norm': True})
  return RetrievalModel(spec, axis_name=axis_name), variables, batch, table, loss


def global_step(devices: int, process: int = 0, processes: int = 1) -> dict[str, np.ndarray]:
  """This process's slice of the global batch over its first `devices` local devices through
  the pmapped `loss_and_grads`: the loss ('loss'), gradients ('g' + path) and new BatchNorm
  statistics ('s' + path), as host arrays."""
  model, variables, batch, table, loss_config = setup(axis_name=AXIS)
  per_host = GLOBAL_BATCH // processes
  mine = jax.tree.map(lambda x: x[process * per_host:(process + 1) * per_host], batch)
  sharded = jax.tree.map(lambda x: x.reshape((devices, -1) + x.shape[1:]), mine)
  local = jax.local_devices()[:devices]
  # Over several processes pmap takes every process's devices (devices=None).
  step = jax.pmap(functools.partial(loss_and_grads, model=model, loss_config=loss_config),
                  axis_name=AXIS, devices=local if processes == 1 else None)
  rep = lambda tree: jax_utils.replicate(tree, local)
  loss, grads, stats = step(rep(variables['params']), rep(variables['batch_stats']), sharded,
                            rep(table))
  flat = lambda tree: {jax.tree_util.keystr(k): np.asarray(v[0]) for k, v in
                       jax.tree_util.tree_flatten_with_path(tree)[0]}
  return {'loss': np.asarray(loss[0]), **{'g' + k: v for k, v in flat(grads).items()},
          **{'s' + k: v for k, v in flat(stats).items()}}


def replicas_through_pmap() -> dict[str, np.ndarray]:
  """`replicas.replicate` over every local device through a pmapped step twice, the second
  call fed the first's output: the programs each call lowered ('lowered') and the first
  replica of the result ('w', 'n')."""
  lowered = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, secs, **kw: lowered.append(event.endswith('jaxpr_to_mlir_module_duration')))
  step = jax.pmap(lambda t: jax.tree.map(lambda x: x + 1, t), axis_name=AXIS)
  tree = {'w': np.arange(6, dtype=np.float32).reshape(2, 3), 'n': np.int32(3)}
  once = step(replicas.replicate(tree))
  first = sum(lowered)
  twice = step(once)
  return {'lowered': np.array([first, sum(lowered) - first]),
          **replicas.first_replica(twice)}
