"""Every experiment config builds its model and takes a training step on miniature data.

The step is the real code path (model_spec, RetrievalModel, the config's optimisation, the
pmapped train_step) from variables drawn in the shapes of the model's init (their values do
not matter here, and no init program is compiled). One config takes it at its full size;
the others keep their experts, variant, loss and optimizer but are narrowed (`small`),
which compiles faster, and configs that differ only in their data share one program.
"""

import functools
import importlib
import pathlib

import jax
import ml_collections
import numpy as np
import pytest

from configs import common
from jaxretrieval import replicas
from jaxretrieval.data import registry
from jaxretrieval.models import RetrievalModel
from jaxretrieval.models.spec import model_spec
from jaxretrieval.replicas import AXIS
from jaxretrieval.step import new_train_state, optimisation, train_step
from tests import compiled

# CE / MoEE experiments; the MMT configs (mmt_*.py) are tested in tests/models/test_mmt_configs.py.
CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).parents[1] / 'configs').glob('*.py')
                 if p.stem not in ('__init__', 'common') and not p.stem.startswith('mmt_'))
FULL_SIZE = 'ce_audiocaps'  # the paper's headline CE, stepped at its real size


def small(config):
  """`config` with 8-wide experts, a 16-wide model, 2 clusters and at most 3 tokens, and the
  expert widths (`model_spec`'s `dims`) that go with it."""
  c = config.copy_and_resolve_references()
  c.model.update(shared_dim=16, vlad_clusters=2, text_clusters=2)
  for key in c.max_tokens:
    c.max_tokens[key] = min(c.max_tokens[key], 3)
  return c, {name: (8, registry.expert(name).temporal) for name in c.experts}


@functools.lru_cache(maxsize=None)
def _step_program(spec, loss_config, optimizer):
  """(pmapped train_step, optimizer, eval-mode model) of a model, loss and optimizer config:
  configs that differ only in their data share one traced and compiled program, as equal
  runs share one in `train`."""
  opt = optimisation(optimizer, 10, optimizer.learning_rate)
  step = jax.pmap(functools.partial(train_step, model=RetrievalModel(spec, axis_name=AXIS),
                                    loss_config=loss_config, schedule=opt.schedule,
                                    update=opt.update), axis_name=AXIS)
  return step, opt.tx, RetrievalModel(spec)


def one_step(config, dims=None, batch_size=4):
  spec = model_spec(config, dims)
  step, tx, model = _step_program(spec, ml_collections.FrozenConfigDict(config.loss),
                                  ml_collections.FrozenConfigDict(config.optimizer))
  rng = np.random.default_rng(0)
  batch = {
      'experts': {e.name: rng.normal(size=(batch_size, config.max_tokens[e.name], e.dim)
                                     if e.temporal == 'vlad' else (batch_size, e.dim)
                                     ).astype(np.float32) for e in spec.experts},
      'expert_lengths': {e.name: np.ones(batch_size, np.int32) for e in spec.experts},
      'availability': np.ones((batch_size, len(spec.experts)), np.float32),
      'text_ids': rng.integers(1, 9, (batch_size, config.max_tokens.text)).astype(np.int32),
      'text_lengths': np.full(batch_size, config.max_tokens.text, np.int32),
      'row_mask': np.ones(batch_size, np.float32),
  }
  table = rng.normal(size=(9, 300)).astype(np.float32)
  state = new_train_state(model.apply, compiled.variables(model), tx)
  before = jax.tree.leaves(state.params)[0].copy()
  new_state, metrics = step(replicas.replicate(state), jax.tree.map(lambda x: x[None], batch),
                            replicas.replicate(table))
  after = jax.tree.leaves(replicas.first_replica(new_state).params)[0]
  return spec, float(metrics.loss.compute()[0]), not np.array_equal(before, after)


@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if n == FULL_SIZE else n
                                  for n in CONFIGS])
def test_config_builds_and_trains(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  dataset = registry.DATASETS[config.dataset]
  assert (config.tfds_name, config.flaky, config.num_test_captions, config.fuse_captions,
          config.val_split, config.test_split) == (
              dataset.tfds_name, dataset.flaky, dataset.num_test_captions,
              dataset.fuse_captions, dataset.val_split, dataset.test_split)
  assert config.max_tokens.to_dict() == dict(dataset.max_tokens)
  assert config.batch_size == 128 and config.num_epochs == 20 and config.loss.margin == 0.2
  spec, loss, moved = one_step(config) if name == FULL_SIZE else one_step(*small(config))
  assert np.isfinite(loss) and loss > 0 and moved
  assert set(spec.expert_names) == set(config.experts)


@pytest.mark.parametrize('arg,experts,variant', [
    ('experts=scene,vggish', ('vggish', 'scene'), 'ce'),
    ('experts=r2p1d+inst', ('inst', 'r2p1d'), 'ce'),
    ('experts=inst', ('inst',), 'mimic'),
])
def test_expert_ablation_through_the_config_argument(arg, experts, variant):
  from configs import ce_audiocaps
  spec, loss, _ = one_step(*small(ce_audiocaps.get_config(arg)))
  assert spec.expert_names == experts and spec.variant == variant and np.isfinite(loss)


def test_config_arguments():
  from configs import ce_audiocaps_fraction, ce_clotho_from_audiocaps
  c = ce_audiocaps_fraction.get_config('fraction=0.25,seed=2')
  assert (c.train_fraction, c.seed, c.dataset) == (0.25, 2, 'audiocaps')
  c = ce_clotho_from_audiocaps.get_config('init_from=/w/ac,seed=1')
  assert (c.init_from, c.init_optimizer, c.dataset, c.seed) == ('/w/ac', True, 'clotho', 1)
  with pytest.raises(ValueError, match="unknown key 'lr'"):
    common.parse_arg('lr=3', experts=('a',), seed=0)
  with pytest.raises(ValueError, match="config.dataset='mnist': expected one of"):
    registry.configure(common.get_config(), 'mnist')


def test_switching_dataset_replaces_the_whole_protocol():
  """The defaults are CLOTHO's; another dataset leaves none of CLOTHO's token limits."""
  c = registry.configure(common.get_config(), 'activitynet_captions')
  assert c.max_tokens.to_dict() == {'text': 20, 'vggish': 29}
  assert (c.val_split, c.test_split, c.flaky, c.fuse_captions) == ('val_1', 'val_1',
                                                                   ('vggish',), True)
  assert common.get_config().max_tokens.to_dict() == dict(
      registry.DATASETS['clotho'].max_tokens)
