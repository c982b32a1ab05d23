"""Independent NumPy versions of the reference CENet forward pass (REFERENCE §2) and of its
Ranger optimizer (§4.2).

It reads a state_dict with the reference's key names directly, so comparing it with the
imported Flax model checks the layers and the key mapping at once. Float64 throughout.
"""

import numpy as np


def _normalize(x, axis=-1):
  return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _softmax(x, axis=-1):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


class ReferenceCENet:
  """Forward pass of the reference model for one checkpoint (eval or train-mode BN)."""

  def __init__(self, state_dict, modalities, variant, text_clusters=20, ghost=1):
    self.p = {k: np.asarray(v, np.float64) for k, v in state_dict.items()}
    self.modalities = sorted(modalities)  # reference order
    self.variant = variant
    self.text_clusters = text_clusters
    self.ghost = ghost

  def bn(self, x, prefix, train):
    if train:
      mean, var = x.mean(axis=0), x.var(axis=0)
    else:
      mean, var = self.p[prefix + '.running_mean'], self.p[prefix + '.running_var']
    return (x - mean) / np.sqrt(var + 1e-5) * self.p[prefix + '.weight'] + self.p[prefix + '.bias']

  def linear(self, x, prefix):
    return x @ self.p[prefix + '.weight'].T + self.p[prefix + '.bias']

  def netvlad(self, x, prefix, clusters, train):
    b, n, d = x.shape
    a = x.reshape(b * n, d) @ self.p[prefix + '.clusters']
    a = _softmax(self.bn(a, prefix + '.batch_norm', train), axis=1)[:, :clusters]
    a = a.reshape(b, n, clusters)
    residual = np.einsum('bnk,bnd->bdk', a, x) - a.sum(axis=1)[:, None, :] * self.p[
        prefix + '.clusters2']
    vlad = _normalize(residual, axis=1).reshape(b, d * clusters)
    return _normalize(vlad)

  def context_gating(self, x, prefix, train):
    return x * _sigmoid(self.bn(self.linear(x, prefix + '.fc'), prefix + '.batch_norm', train))

  def geu(self, x, prefix, train):
    return _normalize(self.context_gating(self.linear(x, prefix + '.fc'), prefix + '.cg', train))

  def relation(self, x, train):
    h = self.linear(x, 'ce.g_reason_1')
    for bn, fc in (('0', '2'), ('3', '5')):
      h = self.bn(h, f'ce.g_reason_shared.{bn}', train)
      h = h * np.tanh(np.log1p(np.exp(h)))
      h = self.linear(h, f'ce.g_reason_shared.{fc}')
    return h

  def audio(self, experts, ind, train):
    """experts: ref name -> array; ind: ref name -> [B] availability."""
    emb = {}
    for m in self.modalities:
      x = np.where(ind[m].reshape((-1,) + (1,) * (experts[m].ndim - 1)) > 0, experts[m], 0.0)
      if x.ndim == 3:
        x = self.netvlad(x, f'pooling.{m}', self.p[f'pooling.{m}.clusters'].shape[1], train)
      emb[m] = x
    if self.variant == 'moee':
      return {m: self.geu(emb[m], f'ce.video_GU.{i}', train)
              for i, m in enumerate(self.modalities)}
    emb = {m: _normalize(self.linear(emb[m], f'ce.video_dim_reduce.{i}.fc'))
           for i, m in enumerate(self.modalities)}
    if self.variant == 'mimic':
      m = self.modalities[0]
      return {m: _normalize(self.context_gating(emb[m], 'ce.video_GU.0.cg', train))}
    for i, m in enumerate(self.modalities):
      total, count = 0.0, 0.0
      for f in self.modalities:
        a = (ind[m] * ind[f])[:, None]
        total = total + a * self.relation(np.concatenate([emb[m], emb[f]], 1), train)
        count = count + a
      mask = total / (count + 1e-11)
      prefix = f'ce.video_GU.{i}.cg'
      t = self.bn(mask, prefix + '.batch_norm', train) + self.bn(
          self.linear(emb[m], prefix + '.fc'), prefix + '.batch_norm2', train)
      emb[m] = _normalize(emb[m] * _sigmoid(t))
    return emb

  def text(self, text, train):
    """text: [Q, T, 300] -> (ref name -> [Q, d], weights [Q, M])."""
    vlad = self.netvlad(text, 'text_pooling', self.text_clusters, train)
    weights = _softmax(self.linear(vlad, 'ce.moe_fc'), axis=1)
    return {m: self.geu(vlad, f'ce.text_GU.{i}', train)
            for i, m in enumerate(self.modalities)}, weights

  def similarity(self, experts, ind, text, train=False):
    audio = self.audio(experts, ind, train)
    text_emb, w = self.text(text, train)
    avail = np.stack([ind[m] for m in self.modalities], axis=1)  # [N, M]
    weights = w[:, None, :] * avail[None, :, :]  # [Q, N, M]
    weights = weights / weights.sum(axis=2, keepdims=True)
    sims = 0.0
    for i, m in enumerate(self.modalities):
      sims = sims + weights[:, :, i] * (text_emb[m] @ audio[m].T)
    return sims


def ranger_steps(p, grad, steps, lr=0.01, wd=1e-3, state=None, b1=0.95, b2=0.999, eps=1e-5):
  """Ranger 9.3.19 (REFERENCE §4.2) in float64 NumPy: `steps` steps from parameters `p` with
  gradients `grad(p, t)` and learning rate `lr` (a number, or `lr(t)`), from `state` =
  (exp_avg, exp_avg_sq, slow_buffer, step) or a fresh Ranger (zeros, slow = p, step 0).
  Returns {t: parameters after step t}."""
  rate = lr if callable(lr) else lambda t: lr
  p = np.array(p, np.float64)
  if state is None:
    m, v, slow, t0 = np.zeros_like(p), np.zeros_like(p), p.copy(), 0
  else:
    m, v, slow = (np.array(x, np.float64) for x in state[:3])
    t0 = state[3]
  rho_inf = 2 / (1 - b2) - 1
  trace = {}
  for t in range(t0 + 1, t0 + steps + 1):
    g = np.asarray(grad(p, t), np.float64)
    lr = rate(t)
    v = b2 * v + (1 - b2) * g * g
    m = b1 * m + (1 - b1) * g
    rho = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
    p = p - wd * lr * p
    if rho > 5:
      r = np.sqrt((1 - b2 ** t) * (rho - 4) / (rho_inf - 4) * (rho - 2) / rho * rho_inf /
                  (rho_inf - 2)) / (1 - b1 ** t)
      p = p - r * lr * m / (np.sqrt(v) + eps)
    else:
      p = p - lr * m / (1 - b1 ** t)
    if t % 6 == 0:
      slow = slow + 0.5 * (p - slow)
      p = slow.copy()
    trace[t] = p.copy()
  return trace

