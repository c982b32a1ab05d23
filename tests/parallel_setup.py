"""The deterministic model and global batch shared by the data-parallel equivalence tests."""

import jax
import ml_collections
import numpy as np

from jaxretrieval.models import ModelSpec, RetrievalModel, dummy_inputs
from jaxretrieval.models.spec import model_experts

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
  variables = RetrievalModel(spec).init(jax.random.key(seed), dummy_inputs(spec), train=False)
  loss = ml_collections.ConfigDict({'name': 'max_margin', 'margin': 0.2, 'fix_norm': True})
  return RetrievalModel(spec, axis_name=axis_name), variables, batch, table, loss
