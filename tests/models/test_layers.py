"""PyTorch-semantics layers against torch itself."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxretrieval.models.layers import BatchNorm, Linear, l2_normalize, mish


def _run_bn(x, train, variables=None, mask=None):
  bn = BatchNorm()
  if variables is None:
    variables = bn.init(jax.random.key(0), x, train=False)
  y, updates = bn.apply(variables, x, train=train, mask=mask, mutable=['batch_stats'])
  return y, {**variables, **updates}


def test_batchnorm_matches_torch_over_steps():
  rng = np.random.default_rng(0)
  torch_bn = torch.nn.BatchNorm1d(5)
  variables = None
  for step in range(3):
    x = rng.normal(step, 1 + step, (7, 5)).astype(np.float32)
    y, variables = _run_bn(jnp.asarray(x), True, variables)
    y_torch = torch_bn.train()(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(y, y_torch, atol=1e-5)
    np.testing.assert_allclose(variables['batch_stats']['mean'], torch_bn.running_mean, atol=1e-6)
    np.testing.assert_allclose(variables['batch_stats']['var'], torch_bn.running_var, atol=1e-5)
  x = rng.normal(0, 1, (4, 5)).astype(np.float32)
  y, _ = _run_bn(jnp.asarray(x), False, variables)
  np.testing.assert_allclose(y, torch_bn.eval()(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_batchnorm_mask_equals_batch_without_padding_rows():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(6, 3)).astype(np.float32)
  mask = np.array([1, 1, 0, 1, 0, 1], np.float32)
  y_masked, v_masked = _run_bn(jnp.asarray(x), True, mask=jnp.asarray(mask))
  y_sub, v_sub = _run_bn(jnp.asarray(x[mask > 0]), True)
  np.testing.assert_allclose(np.asarray(y_masked)[mask > 0], y_sub, atol=1e-6)
  for k in ('mean', 'var'):
    np.testing.assert_allclose(v_masked['batch_stats'][k], v_sub['batch_stats'][k], atol=1e-6)


def test_batchnorm_over_leading_axes():
  x = np.random.default_rng(2).normal(size=(2, 4, 3)).astype(np.float32)
  y, _ = _run_bn(jnp.asarray(x), True)
  y_flat, _ = _run_bn(jnp.asarray(x.reshape(8, 3)), True)
  np.testing.assert_allclose(np.asarray(y).reshape(8, 3), y_flat, atol=1e-6)


def test_linear_uses_torch_init_bounds():
  layer = Linear(64)
  params = layer.init(jax.random.key(3), jnp.zeros((1, 400)))['params']
  bound = 1 / np.sqrt(400)
  for name in ('kernel', 'bias'):
    values = np.asarray(params[name])
    assert np.abs(values).max() <= bound
    assert np.abs(values).max() > 0.9 * bound  # uniform over the whole range
  assert params['kernel'].shape == (400, 64)


def test_l2_normalize_and_mish_match_torch():
  x = np.random.default_rng(4).normal(size=(5, 7)).astype(np.float32) * 10
  x[0] = 0.0
  t = torch.from_numpy(x)
  np.testing.assert_allclose(l2_normalize(jnp.asarray(x)),
                             torch.nn.functional.normalize(t, dim=-1).numpy(), atol=1e-6)
  np.testing.assert_allclose(mish(jnp.asarray(x)), torch.nn.functional.mish(t).numpy(),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('masked', [False, True])
def test_batchnorm_axis_name_pools_statistics(masked):
  """With axis_name, statistics over vmapped 'devices' equal those of the whole batch."""
  rng = np.random.default_rng(5)
  x = rng.normal(size=(4, 3, 2)).astype(np.float32)  # [devices, rows, C]
  mask = (rng.uniform(size=(4, 3)) > 0.3).astype(np.float32) if masked else np.ones((4, 3),
                                                                                      np.float32)
  bn = BatchNorm(axis_name='d')
  variables = bn.init(jax.random.key(0), x[0], train=False)
  per_device = jax.vmap(lambda xi, mi: bn.apply(variables, xi, train=True, mask=mi,
                                                mutable=['batch_stats']), axis_name='d')
  y, updates = per_device(jnp.asarray(x), jnp.asarray(mask))
  keep = mask.reshape(-1) > 0
  y_all, v_all = _run_bn(jnp.asarray(x.reshape(12, 2)[keep]), True)
  np.testing.assert_allclose(np.asarray(y).reshape(12, 2)[keep], y_all, atol=1e-5)
  np.testing.assert_allclose(updates['batch_stats']['var'][0], v_all['batch_stats']['var'],
                             atol=1e-6)
