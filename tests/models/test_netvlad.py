"""NetVLAD: golden values of REFERENCE §8 and the masking option."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxretrieval.models.netvlad import NetVLAD

GOLDEN_TRAIN = np.array([
    [-0.458014, 0.057553, -0.509695, -0.193386, 0.218840, 0.263175, 0.062503, 0.130986,
     0.021473, 0.286795, -0.514755, 0.061822],
    [0.376268, -0.538737, -0.378670, 0.343065, -0.204959, -0.158402, 0.250408, 0.031666,
     -0.287477, 0.106572, -0.009212, -0.286721]])
GOLDEN_MEAN = np.array([-0.006206, -0.004109, 0.009626, -0.003903])
GOLDEN_VAR = np.array([0.925239, 0.914793, 0.921644, 0.923133])
GOLDEN_EVAL = np.array([
    [-0.482648, -0.207649, -0.420593, -0.292842, 0.272592, 0.384147, -0.109048, 0.464472,
     -0.023331, 0.052315, -0.013206, -0.091221],
    [-0.028924, -0.543531, -0.382329, -0.086587, -0.171704, -0.113867, -0.252287, 0.086574,
     -0.286210, -0.511225, 0.030500, -0.303769]])


def _golden_setup():
  d, k = np.meshgrid(np.arange(4), np.arange(4), indexing='ij')
  clusters = np.sin(d + 2 * k) / 2
  d, k = np.meshgrid(np.arange(4), np.arange(3), indexing='ij')
  clusters2 = (np.cos(d * k + 1) / 3)[None]
  b, n, dd = np.meshgrid(np.arange(2), np.arange(5), np.arange(4), indexing='ij')
  x = np.sin(0.3 * (100 * b + 10 * n + dd))
  x[1, 3:, :] = 0.0
  model = NetVLAD(clusters=3, ghost_clusters=1)
  variables = model.init(jax.random.key(0), jnp.zeros((2, 5, 4)), train=False)
  params = dict(variables['params'], clusters=jnp.asarray(clusters, jnp.float32),
                clusters2=jnp.asarray(clusters2, jnp.float32))
  return model, {'params': params, 'batch_stats': variables['batch_stats']}, jnp.asarray(
      x, jnp.float32)


def test_netvlad_golden_train_eval_and_running_stats():
  model, variables, x = _golden_setup()
  out, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(out, GOLDEN_TRAIN, atol=2e-6)
  stats = updates['batch_stats']['batch_norm']
  np.testing.assert_allclose(stats['mean'], GOLDEN_MEAN, atol=2e-6)
  np.testing.assert_allclose(stats['var'], GOLDEN_VAR, atol=2e-6)
  out = model.apply({**variables, **updates}, x, train=False)
  np.testing.assert_allclose(out, GOLDEN_EVAL, atol=2e-6)


def test_netvlad_output_layout_and_norms():
  model, variables, x = _golden_setup()
  out = np.asarray(model.apply(variables, x, train=False))
  assert out.shape == (2, 12)
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
  blocks = out.reshape(2, 4, 3)  # D-major: index d * K + k
  np.testing.assert_allclose(np.linalg.norm(blocks, axis=1), 1 / np.sqrt(3), atol=1e-6)


def test_netvlad_is_mask_blind_by_default_and_mask_option_removes_padding():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 4, 6)).astype(np.float32)
  lengths = np.array([4, 2, 3])
  padded = np.zeros((3, 9, 6), np.float32)
  for i, n in enumerate(lengths):
    padded[i, :n] = x[i, :n]
  blind = NetVLAD(clusters=5)
  variables = blind.init(jax.random.key(1), jnp.asarray(padded), train=False)
  short = np.zeros((3, 4, 6), np.float32)
  for i, n in enumerate(lengths):
    short[i, :n] = x[i, :n]
  apply = lambda m, inp, t: m.apply(variables, jnp.asarray(inp), train=t,
                                    lengths=jnp.asarray(lengths), mutable=['batch_stats'])[0]
  # Faithful: padding length changes the train-mode output (BN statistics include zeros).
  assert not np.allclose(apply(blind, padded, True), apply(blind, short, True), atol=1e-4)
  masked = NetVLAD(clusters=5, use_mask=True)
  np.testing.assert_allclose(apply(masked, padded, True), apply(masked, short, True), atol=1e-5)
  np.testing.assert_allclose(apply(masked, padded, False), apply(masked, short, False), atol=1e-5)
  # Per item, masked pooling of the padded input equals pooling of the real tokens alone.
  single = masked.apply(variables, jnp.asarray(x[1:2, :2]), train=False,
                        lengths=jnp.asarray([2]))
  np.testing.assert_allclose(apply(masked, padded, False)[1], single[0], atol=1e-5)
