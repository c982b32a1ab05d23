"""The whole model: parameter counts of the paper, availability handling, CE's BN updates."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxretrieval.models import (
  Batch,
  MissingExpertsError,
  ModelSpec,
  RetrievalModel,
  abstract_variables,
  check_availability,
  mixture_similarity,
)
from jaxretrieval.models.spec import model_experts
from jaxretrieval.replicas import AXIS
from jaxretrieval.step import loss_and_grads, model_inputs
from tests import compiled
from tests.reference_checkpoint import reference_keys

# (variant, experts, trainable parameters published by the reference, REFERENCE §2.4)
PAPER_COUNTS = [
    ('mimic', ['vggish'], 7_389_127),
    ('mimic', ['vggsound'], 12_120_007),
    ('ce', ['vggish', 'vggsound'], 21_864_536),
    ('moee', ['vggish', 'vggsound'], 8_903_512),
    ('mimic', ['scene'], 7_507_879),
    ('mimic', ['r2p1d'], 6_205_351),
    ('mimic', ['inst'], 7_384_999),
    ('ce', ['scene', 'r2p1d'], 16_068_632),
    ('ce', ['scene', 'inst'], 17_248_280),
    ('ce', ['r2p1d', 'inst'], 15_945_752),
    ('ce', ['r2p1d', 'inst', 'vggish'], 23_324_073),
    ('ce', ['r2p1d', 'inst', 'vggsound'], 28_054_953),
    ('ce', ['r2p1d', 'inst', 'vggish', 'vggsound'], 35_433_274),
]


def _batch(spec, b=3, t=4, q=None, seed=0):
  rng = np.random.default_rng(seed)
  q = b if q is None else q
  return Batch(
      experts={e.name: jnp.asarray(rng.normal(size=(b, t, e.dim) if e.temporal == 'vlad'
                                              else (b, e.dim)), jnp.float32)
               for e in spec.experts},
      availability=jnp.ones((b, len(spec.experts))),
      text=jnp.asarray(rng.normal(size=(q, 5, spec.text_dim)), jnp.float32))


def _count(spec):
  return sum(x.size for x in jax.tree.leaves(abstract_variables(spec)['params']))


@pytest.mark.parametrize('variant,experts,expected', PAPER_COUNTS)
def test_parameter_counts_match_the_paper(variant, experts, expected):
  spec = ModelSpec(variant, model_experts(experts))
  assert _count(spec) == expected
  # The reference state_dict layout (REFERENCE §3.2) has the same trainable size.
  ref = {'vggish': 'audio', 'vggsound': 'vggsound', 'scene': 'scene.densenet161.0',
         'inst': 'imagenet.resnext101_32x48d.0', 'r2p1d': 'r2p1d.r2p1d-ig65m.0'}
  keys = reference_keys(variant, [ref[e] for e in experts])
  trainable = sum(int(np.prod(s)) for k, s in keys
                  if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked')))
  assert trainable == expected


def test_abstract_variables_trace_once_per_spec_and_belong_to_the_caller():
  """Loading, converting and indexing a checkpoint each ask for its model's shapes: the
  init is traced once per spec in a process, and a caller's changes reach no other caller."""
  spec = ModelSpec('moee', model_experts(['vggish', 'scene'], 3), shared_dim=24)  # this test's
  traces = []
  count = lambda name, secs, **kw: traces.append(name) if 'trace' in name else None
  jax.monitoring.register_event_duration_secs_listener(count)
  try:
    first = abstract_variables(spec)
    traced_first = len(traces)
    first['params'].clear()
    second = abstract_variables(spec)
  finally:
    jax.monitoring.unregister_event_duration_listener(count)
  assert traced_first > 0 and len(traces) == traced_first
  assert second['params'] and jax.tree.structure(second) == jax.tree.structure(
      abstract_variables(spec))


def test_expert_order_follows_reference_names():
  names = [e.name for e in model_experts(['vggsound', 'scene', 'vggish', 'inst', 'r2p1d'])]
  # audio < imagenet.* < r2p1d.* < scene.* < vggsound
  assert names == ['vggish', 'inst', 'r2p1d', 'scene', 'vggsound']


def test_spec_validation_names_the_problem():
  with pytest.raises(ValueError, match='variant'):
    ModelSpec('transformer', model_experts(['vggish']))
  with pytest.raises(ValueError, match='>= 2 experts'):
    ModelSpec('ce', model_experts(['vggish']))
  with pytest.raises(ValueError, match='unknown expert'):
    model_experts(['vggish', 'mystery'])


def test_similarity_renormalises_weights_over_available_experts():
  rng = np.random.default_rng(0)
  unit = lambda *s: (lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True))(rng.normal(size=s))
  text = {'a': unit(4, 3), 'b': unit(4, 5)}
  audio = {'a': unit(2, 3), 'b': unit(2, 5)}
  w = rng.dirichlet([1, 1], size=4)
  avail = np.array([[1, 1], [0, 1]])
  s = np.asarray(mixture_similarity(text, jnp.asarray(w), audio, jnp.asarray(avail), ('a', 'b')))
  both = w[:, 0] * (text['a'] @ audio['a'][0]) + w[:, 1] * (text['b'] @ audio['b'][0])
  np.testing.assert_allclose(s[:, 0], both, atol=1e-6)
  # Item 1 has only expert b: its weight renormalises to 1.
  np.testing.assert_allclose(s[:, 1], text['b'] @ audio['b'][1], atol=1e-6)


def test_missing_expert_is_zeroed_and_excluded():
  spec = ModelSpec('moee', model_experts(['vggish', 'vggsound']))
  model = RetrievalModel(spec)
  batch = _batch(spec)
  variables = compiled.variables(model)
  avail = np.ones((3, 2), np.float32)
  avail[1, 0] = 0.0
  vggish = np.array(batch.experts['vggish'])
  vggish[1] = np.nan
  nan_batch = batch.replace(availability=jnp.asarray(avail),
                            experts={**batch.experts, 'vggish': jnp.asarray(vggish)})
  sims = np.asarray(compiled.apply(model, variables, nan_batch, train=False))
  assert np.all(np.isfinite(sims))
  vggish[1] = 0.0
  zero_batch = nan_batch.replace(experts={**batch.experts, 'vggish': jnp.asarray(vggish)})
  np.testing.assert_allclose(sims, compiled.apply(model, variables, zero_batch, train=False),
                             atol=1e-6)


def test_item_without_any_expert_raises_naming_it():
  avail = np.array([[1, 0], [0, 0], [0, 1], [0, 0]])
  with pytest.raises(MissingExpertsError, match='2 item.*clip_b, clip_d'):
    check_availability(avail, ['clip_a', 'clip_b', 'clip_c', 'clip_d'], ['vggish', 'vggsound'])
  check_availability(avail[[0, 2]], ['clip_a', 'clip_c'], ['vggish', 'vggsound'])


def test_ce_relation_runs_once_per_ordered_pair_in_expert_order():
  """CE with M experts calls the shared relation MLP M^2 times: (i, j) for i, then j."""
  spec = ModelSpec('ce', model_experts(['r2p1d', 'vggish', 'vggsound']))
  model = RetrievalModel(spec)
  batch = _batch(spec, b=6)
  variables = compiled.variables(model)
  widths = []

  def count_relation_calls(next_fun, args, kwargs, context):
    if context.module.name == 'relation' and context.method_name == '__call__':
      widths.append(args[0].shape[-1])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(count_relation_calls):  # runs while the program is traced
    _, updates = compiled.apply(model, variables, batch, train=True, mutable=('batch_stats',))
  assert widths == [2 * 768] * 9
  bn = updates['batch_stats']['audio_head']['relation']['bn_0']
  assert np.any(np.asarray(bn['mean']) != 0)


def test_row_mask_keeps_padding_out_of_training_statistics():
  spec = ModelSpec('ce', model_experts(['vggish', 'vggsound']))
  model = RetrievalModel(spec)
  full = _batch(spec, b=5, seed=3)
  variables = compiled.variables(model)
  sub = jax.tree.map(lambda x: x[:3], full)
  padded = full.replace(row_mask=jnp.asarray([1, 1, 1, 0, 0]),
                        text_row_mask=jnp.asarray([1, 1, 1, 0, 0]))
  s_pad, u_pad = compiled.apply(model, variables, padded, train=True, mutable=('batch_stats',))
  s_sub, u_sub = compiled.apply(model, variables, sub, train=True, mutable=('batch_stats',))
  np.testing.assert_allclose(np.asarray(s_pad)[:3, :3], s_sub, atol=2e-5)
  for a, b in zip(jax.tree.leaves(u_pad), jax.tree.leaves(u_sub)):
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_similarity_pairs_columns_with_experts_by_name_not_by_dict_order():
  """JAX rebuilds dicts with sorted keys (jit, pmap, all_gather), while the weight and
  availability columns follow the model's order: `names` decides the pairing."""
  rng = np.random.default_rng(1)
  unit = lambda *s: (lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True))(rng.normal(size=s))
  text = {'a': unit(3, 4), 'b': unit(3, 6)}  # dict order a, b
  audio = {'a': unit(2, 4), 'b': unit(2, 6)}
  w = rng.dirichlet([1, 3], size=3)  # columns: b, a (the model's order)
  avail = np.array([[1, 1], [1, 0]])  # item 1 lacks a
  s = np.asarray(mixture_similarity(text, jnp.asarray(w), audio, jnp.asarray(avail), ('b', 'a')))
  want0 = w[:, 0] * (text['b'] @ audio['b'][0]) + w[:, 1] * (text['a'] @ audio['a'][0])
  np.testing.assert_allclose(s[:, 0], want0, atol=1e-6)
  np.testing.assert_allclose(s[:, 1], text['b'] @ audio['b'][1], atol=1e-6)


@pytest.mark.slow
def test_training_loss_pairs_experts_like_the_model_when_names_are_not_sorted():
  """The pmapped loss (embeddings all-gathered across devices) equals the max-margin loss of
  the model's own similarity matrix for experts whose order is not alphabetical."""
  from jaxretrieval.losses import max_margin_ranking_loss
  spec = ModelSpec('ce', model_experts(['vggish', 'scene'], 2, dims={'scene': (24, 'avg')}),
                   text_clusters=2, shared_dim=8)
  assert spec.expert_names == ('vggish', 'scene')  # reference order: 'audio' < 'scene...'
  rng = np.random.default_rng(2)
  n = 4
  table = jnp.asarray(rng.normal(size=(20, 300)), jnp.float32)
  batch = {'experts': {'vggish': jnp.asarray(rng.normal(size=(n, 3, 128)), jnp.float32),
                       'scene': jnp.asarray(rng.normal(size=(n, 24)), jnp.float32)},
           'expert_lengths': {'vggish': jnp.full(n, 3), 'scene': jnp.ones(n, jnp.int32)},
           'availability': jnp.asarray([[1, 1], [1, 0], [0, 1], [1, 1]], jnp.float32),
           'text_ids': jnp.asarray(rng.integers(1, 20, (n, 5)), jnp.int32),
           'text_lengths': jnp.full(n, 5), 'row_mask': jnp.ones(n, jnp.float32)}
  model = RetrievalModel(spec, axis_name=AXIS)
  inputs = model_inputs(batch, table)
  variables = compiled.variables(RetrievalModel(spec))
  loss_config = ml_collections.ConfigDict({'name': 'max_margin', 'margin': 0.2,
                                           'fix_norm': True})
  loss, _, _ = jax.pmap(lambda b, t: loss_and_grads(
      variables['params'], variables['batch_stats'], b, t, model=model,
      loss_config=loss_config), axis_name=AXIS)(
          jax.tree.map(lambda x: x[None], batch), table[None])
  sims, _ = compiled.apply(RetrievalModel(spec), variables, inputs, train=True,
                           mutable=('batch_stats',))
  np.testing.assert_allclose(loss[0], max_margin_ranking_loss(sims), rtol=1e-5)
