"""Evaluation: the text tower runs once per distinct caption, and one-pass chunked metrics
equal those of the whole similarity matrix."""

import jax
import numpy as np
import pytest

from jaxretrieval import replicas
from jaxretrieval.data.splits import SplitArrays
from jaxretrieval.embedding import Embedder
from jaxretrieval.evaluation import eval_queries, split_metrics
from jaxretrieval.metrics import retrieval_metrics
from jaxretrieval.models import ModelSpec, RetrievalModel, mixture_similarity
from jaxretrieval.models.spec import model_experts
from tests import compiled


def _split(n=6, captions=3, tokens=4, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, 50, (n * captions, tokens)).astype(np.int32)
  ids[4] = ids[10]  # the same sentence for two items
  count = np.full(n, captions)
  count[1] = 1  # an item with one caption: its absent ones repeat it, masked
  return SplitArrays('test', [f'i{i}' for i in range(n)], [''] * n,
                   {'vggish': rng.normal(size=(n, 5, 128)).astype(np.float32)},
                   {'vggish': np.full(n, 5, np.int32)}, np.ones((n, 1), np.float32), ids,
                   np.full(n * captions, tokens, np.int32), np.arange(n) * captions, count,
                   [''] * (n * captions))


@pytest.mark.slow
def test_distinct_captions_are_embedded_once_and_scored_like_the_matrix():
  spec = ModelSpec('mimic', model_experts(['vggish'], 4), text_clusters=3, shared_dim=16)
  model = RetrievalModel(spec)
  data = _split()
  table = np.random.default_rng(1).normal(size=(50, 300)).astype(np.float32)
  variables = compiled.variables(model)
  embedder = Embedder(model, chunk=8)
  seen = []
  text_fn = embedder._text
  embedder._text = lambda v, b, t: (seen.append(b['text_ids'].shape), text_fn(v, b, t))[1]
  rows, masks = eval_queries(data, 3)
  replicated = replicas.replicate((variables, table))
  text, weights = embedder.captions(replicated[0], data, rows, replicated[1])
  # 18 caption slots: 16 distinct sentences (two absent slots, one shared sentence).
  assert sum(s[0] * s[1] for s in seen) == 16
  direct, direct_weights = compiled.apply(model, variables, table[data.caption_ids[rows]],
                                          train=False, method=RetrievalModel.encode_text)
  np.testing.assert_allclose(text['vggish'], direct['vggish'], atol=1e-6)
  np.testing.assert_allclose(weights, direct_weights, atol=1e-6)
  audio = embedder.items(replicated[0], data)
  got = split_metrics(text, weights, audio, data.availability, masks, spec.expert_names)
  sims = jax.jit(mixture_similarity, static_argnums=4)(text, weights, audio, data.availability,
                                                       spec.expert_names)
  assert got == retrieval_metrics(np.asarray(sims), masks)
