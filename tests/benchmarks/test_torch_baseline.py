"""The PyTorch baseline computes what jaxretrieval computes: same weights, same data ->
same loss at every step of a short training run (forward, loss, backward, Ranger with its
momentum steps, first adaptive step and LookAhead sync), and the same evaluation ranks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from benchmarks import torch_baseline
from configs import common
from jaxretrieval import optim, replicas
from jaxretrieval.models import ModelSpec, RetrievalModel
from jaxretrieval.models.spec import model_experts
from jaxretrieval.replicas import AXIS
from jaxretrieval.step import new_train_state, train_step
from jaxretrieval.torch_import import convert

TOKENS = {'text': 7, 'audio': 5, 'vggsound': 6}
SIZES = dict(clusters=4, text_clusters=5, shared=32)


def _models(variant):
  torch.manual_seed(0)
  reference = torch_baseline.CENet(variant, ['vggsound', 'audio'], **SIZES)
  spec = ModelSpec(variant, model_experts(['vggish', 'vggsound'], SIZES['clusters']),
                   text_clusters=SIZES['text_clusters'], shared_dim=SIZES['shared'])
  variables = convert.convert_state_dict(
      {k: v.numpy() for k, v in reference.state_dict().items()}, spec)
  return reference, spec, variables


def _batch(b=6, seed=0):
  rng = np.random.default_rng(seed)
  experts = {m: rng.normal(size=(b, TOKENS[m], torch_baseline.RAW_DIMS[m])).astype(np.float32)
             for m in ('audio', 'vggsound')}
  ind = np.ones((b, 2), np.float32)
  ind[2, 0] = 0.0  # a missing (flaky) VGGish row: zero-filled, masked in the mixture
  text = rng.normal(size=(b, TOKENS['text'], 300)).astype(np.float32)
  text[1, 4:] = 0.0  # zero padding, pooled by the mask-blind NetVLAD
  return experts, ind, text


@pytest.mark.slow
@pytest.mark.parametrize('variant,fused', [('ce', False), ('moee', False), ('ce', True)])
def test_same_weights_same_loss_over_seven_training_steps(variant, fused):
  """Ours (optax's Ranger chain, the default, or Ranger fused into one update,
  config.optimizer.fused) against the original, step by step."""
  reference, spec, variables = _models(variant)
  lr = 0.01
  optimizer = torch_baseline.Ranger(reference.parameters(), lr=lr, weight_decay=1e-3)
  model = RetrievalModel(spec, axis_name=AXIS)
  state = new_train_state(model.apply, variables, optim.ranger(lambda _: lr, 1e-3))
  loss_config = common.get_config().loss  # max-margin, margin 0.2, fix_norm
  update = optim.ranger_apply(lambda _: lr, 1e-3) if fused else None
  step = jax.pmap(lambda s, b, t: train_step(s, b, t, model=model, loss_config=loss_config,
                                             schedule=lambda _: lr, update=update),
                  axis_name=AXIS)
  state = replicas.replicate(state)
  for i in range(7):  # 5 momentum steps, the first adaptive step, a LookAhead sync, one more
    experts, ind, text = _batch(seed=i)
    b, t = text.shape[:2]
    table = jnp.asarray(np.concatenate([np.zeros((1, 300), np.float32), text.reshape(-1, 300)]))
    ours = {'experts': {'vggish': experts['audio'], 'vggsound': experts['vggsound']},
            'expert_lengths': {'vggish': np.full(b, TOKENS['audio'], np.int32),
                               'vggsound': np.full(b, TOKENS['vggsound'], np.int32)},
            'availability': ind, 'text_ids': 1 + np.arange(b * t, dtype=np.int32).reshape(b, t),
            'text_lengths': np.full(b, t, np.int32), 'row_mask': np.ones(b, np.float32)}
    state, metrics = step(state, jax.tree.map(lambda x: x[None], ours), table[None])
    theirs = torch_baseline.train_step(
        reference, optimizer, {'experts': {m: torch.from_numpy(x) for m, x in experts.items()},
                               'ind': torch.from_numpy(ind), 'text': torch.from_numpy(text)})
    np.testing.assert_allclose(float(metrics.loss.compute()[0]), theirs, atol=1e-5, err_msg=f'step {i}')
  # The weights and BatchNorm statistics after the seven steps agree too.
  theirs = convert.convert_state_dict({k: v.numpy() for k, v in reference.state_dict().items()},
                                      spec)
  ours = replicas.first_replica({'params': state.params, 'batch_stats': state.batch_stats})
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), theirs, ours)


def _tied_scores(seed: int, n: int = 17, k: int = 3):
  """A `[N * K, N]` matrix with many exact ties, and query masks with empty caption slots."""
  rng = np.random.default_rng(seed)
  sims = np.round(rng.normal(size=(n * k, n)), 1).astype(np.float32)
  masks = (rng.uniform(size=(n, k)) > 0.3).astype(np.float32)
  masks[:, 0] = 1
  return sims, masks


def test_sort_based_ranks_equal_ours_with_ties_and_masks():
  from jaxretrieval.metrics import metrics_from_ranks, retrieval_metrics
  sims, masks = _tied_scores(5)
  t2a, a2t = torch_baseline.retrieval_ranks(sims, masks)
  assert {'t2a': metrics_from_ranks(t2a), 'a2t': metrics_from_ranks(a2t)} == retrieval_metrics(
      sims, masks)


def test_chunked_ranks_equal_whole_matrix_ranks_with_ties_and_masks():
  sims, masks = _tied_scores(6)
  whole = torch_baseline.retrieval_ranks(sims, masks)
  chunked = torch_baseline.chunked_retrieval_ranks(lambda rows, items: sims[rows, items], masks,
                                                   query_chunk=7, item_chunk=4)
  for a, b in zip(whole, chunked):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('variant', ['ce', 'moee'])
def test_chunked_evaluation_of_the_towers_equals_the_whole_matrix(variant):
  """40 items x 5 captions (some slots empty, one item without VGGish): the towers run
  separately (captions in chunks of 13) give the whole forward's matrix, and ranks over
  blocks of 23 captions / 9 items equal the whole matrix's ranks exactly."""
  reference, _, _ = _models(variant)
  rng = np.random.default_rng(7)
  n, k = 40, 5
  experts = {m: torch.from_numpy(rng.normal(size=(n, TOKENS[m], torch_baseline.RAW_DIMS[m]))
                                 .astype(np.float32)) for m in ('audio', 'vggsound')}
  ind = np.ones((n, 2), np.float32)
  ind[3, 1] = 0.0
  masks = np.ones((n, k), np.float32)
  masks[rng.uniform(size=n) < 0.3, 3:] = 0.0
  text = rng.normal(size=(n * k, TOKENS['text'], 300)).astype(np.float32)
  text[masks.reshape(-1) == 0] = 0.0  # the reference's empty caption slots
  ind, text = torch.from_numpy(ind), torch.from_numpy(text)
  sims = torch_baseline.similarities(reference, experts, ind, text)
  (texts, w), audio = torch_baseline.embeddings(reference, experts, ind, text, chunk=13)
  score = torch_baseline.block_scores(texts, w, audio, ind)
  np.testing.assert_allclose(score(slice(0, n * k), slice(0, n)), sims, atol=1e-6)
  whole = torch_baseline.retrieval_ranks(sims, masks)
  chunked = torch_baseline.chunked_retrieval_ranks(score, masks, query_chunk=23, item_chunk=9)
  assert 0 < masks.sum() < n * k
  for a, b in zip(whole, chunked):
    np.testing.assert_array_equal(a, b)
