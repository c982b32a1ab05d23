"""Ranger against REFERENCE §4.2's golden trace and an exact float64 computation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxretrieval.optim import ranger, ranger_apply, restart_schedule
from tests.reference_numpy import ranger_steps

# Parameters after step t of the reference Ranger on loss sum(p^2), p0 = [1, -2, 0.5],
# lr 0.01, wd 1e-3. The reference steps in float32 internally (it calls .float() on the
# parameters and gradients), so these values carry float32 rounding.
GOLDEN = {1: [0.9799900055, -1.959980011, 0.4899950027],
          2: [0.9601854682, -1.9203709364, 0.4800927341],
          5: [0.9020237327, -1.8040474653, 0.4510118663],
          6: [0.9508787394, -1.9018861055, 0.4753750712],
          7: [0.9505428076, -1.901540637, 0.4750439227],
          12: [0.9494741559, -1.9004529715, 0.473984845],
          13: [0.9488486052, -1.8998178244, 0.4733641446]}


def _exact_ranger(p, steps):
  return ranger_steps(p, lambda p, t: 2 * p, steps)


def _run(dtype, steps=13, fused=False):
  """Parameters after each step on sum(p^2), each step one compiled program as in training
  (eagerly, LookAhead's lax.cond compiles again at every step)."""
  opt = ranger(0.01, 1e-3)
  apply = ranger_apply(0.01, 1e-3)

  @jax.jit
  def step(p, state):
    if fused:
      return apply(p, 2 * p, state)
    updates, state = opt.update(2 * p, state, p)
    return optax.apply_updates(p, updates), state

  p = jnp.asarray(np.array([1.0, -2.0, 0.5], dtype))
  state = jax.jit(opt.init)(p)
  trace = {}
  for t in range(1, steps + 1):
    p, state = step(p, state)
    trace[t] = np.asarray(p, np.float64)
  return trace


@pytest.fixture
def x64():
  jax.config.update('jax_enable_x64', True)
  yield
  jax.config.update('jax_enable_x64', False)


@pytest.mark.parametrize('fused', [False, True])
def test_float64_matches_exact_computation_and_golden_trace(x64, fused):
  del x64
  ours, exact = _run(jnp.float64, 40, fused), _exact_ranger([1.0, -2.0, 0.5], 40)
  for t in exact:
    np.testing.assert_allclose(ours[t], exact[t], rtol=0, atol=1e-12)
  for t, want in GOLDEN.items():
    # Within the reference's own float32 rounding: one float32 ulp (1.19e-7 relative).
    np.testing.assert_allclose(ours[t], want, rtol=1.2e-7, atol=0)


@pytest.mark.parametrize('fused', [False, True])
def test_float32_follows_golden_trace(fused):
  ours = _run(jnp.float32, fused=fused)
  for t, want in GOLDEN.items():
    np.testing.assert_allclose(ours[t], want, rtol=0, atol=3e-7)


def test_first_five_steps_are_momentum_then_adaptive():
  ours, exact = _run(jnp.float32, 7), _exact_ranger([1.0, -2.0, 0.5], 7)
  # Step 1 is plain SGD with the bias-corrected momentum: p1 = p0 (1 - wd lr) - lr g.
  np.testing.assert_allclose(ours[1], np.array([1.0, -2.0, 0.5]) * (1 - 1e-5) - 0.01 * 2 *
                             np.array([1.0, -2.0, 0.5]), atol=1e-7)
  np.testing.assert_allclose(ours[7], exact[7], atol=3e-7)


def test_fused_apply_equals_the_optax_chain_on_a_tree_with_a_schedule():
  """Same parameters and the same state (moments, slow weights, counts) after 13 steps."""
  schedule = lambda count: 0.01 * 0.5 ** (count // 4)
  rng = np.random.default_rng(0)
  params = {'a': rng.normal(size=(3, 4)).astype(np.float32),
            'b': {'c': rng.normal(size=5).astype(np.float32)}}
  opt, apply = ranger(schedule, 1e-3), ranger_apply(schedule, 1e-3)
  grads = lambda p, t: jax.tree.map(lambda x: jnp.sin(x * (t + 1)), p)

  @jax.jit
  def steps(params):  # 13 steps of each, compiled as one program (as in training)
    p1, s1 = params, opt.init(params)
    p2, s2 = params, opt.init(params)
    for t in range(13):
      updates, s1 = opt.update(grads(p1, t), s1, p1)
      p1 = optax.apply_updates(p1, updates)
      p2, s2 = apply(p2, grads(p2, t), s2)
    return (p1, s1), (p2, s2), restart_schedule(s2, opt.init(params))

  (p1, s1), (p2, s2), restarted = steps(params)
  assert jax.tree.structure(s1) == jax.tree.structure(s2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=2e-7), (p1, s1),
               (p2, s2))
  assert int(restarted.inner[-1].count) == 0
