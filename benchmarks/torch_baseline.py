"""The original computation in PyTorch, the baseline the benchmarks compare against.

Written from ../shared/REFERENCE.md (§2 model, §4 loss and Ranger, §5 metrics), not from
the original code: `CENet` has the reference's modules, layer order and state_dict names
(so a state_dict converts with `jaxretrieval.torch_import.convert`), `max_margin_loss` the
reference's 2n^2-term hinge loss, `Ranger` the reference's per-parameter RAdam + LookAhead
loop, and `retrieval_ranks` the reference's sort-based tie-averaged ranks on the whole
`[N * K, N]` matrix (`chunked_retrieval_ranks` the same ranks block by block, for pools
whose whole matrix does not fit in memory). Only what the paper's CE-pairwise and MoEE
runs use is built: temporal (NetVLAD) experts, `include_self`, Mish, no dropout.

PyTorch is a test/benchmark dependency (requirements-test.txt), imported here only.
"""

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# Reference expert name -> raw feature width (REFERENCE §1.5); temporal experts only.
RAW_DIMS = {'audio': 128, 'vggsound': 512, 'pann': 2048, 'syncnet': 1024}


class NetVLAD(nn.Module):
  """NetVLAD with ghost clusters (REFERENCE §2.2): BN over all B*N rows, padding included."""

  def __init__(self, dim: int, clusters: int, ghost: int = 0):
    super().__init__()
    self.dim, self.k = dim, clusters
    self.clusters = nn.Parameter(torch.randn(dim, clusters + ghost) / math.sqrt(dim))
    self.clusters2 = nn.Parameter(torch.randn(1, dim, clusters) / math.sqrt(dim))
    self.batch_norm = nn.BatchNorm1d(clusters + ghost)

  def forward(self, x):
    b, n, d = x.shape
    logits = self.batch_norm(x.reshape(b * n, d) @ self.clusters)
    assign = F.softmax(logits, dim=1)[:, :self.k].reshape(b, n, self.k)  # ghosts dropped
    centre = assign.sum(dim=1, keepdim=True) * self.clusters2  # [B, D, K]
    vlad = torch.matmul(assign.transpose(1, 2), x).transpose(1, 2) - centre  # [B, D, K]
    vlad = F.normalize(vlad, dim=1).reshape(b, d * self.k)  # intra-norm, D-major
    return F.normalize(vlad, dim=1)


class ContextGating(nn.Module):
  def __init__(self, dim: int):
    super().__init__()
    self.fc = nn.Linear(dim, dim)
    self.batch_norm = nn.BatchNorm1d(dim)

  def forward(self, x):
    return x * torch.sigmoid(self.batch_norm(self.fc(x)))


class GatedEmbeddingUnit(nn.Module):
  def __init__(self, dim_in: int, dim_out: int):
    super().__init__()
    self.fc = nn.Linear(dim_in, dim_out)
    self.cg = ContextGating(dim_out)

  def forward(self, x):
    return F.normalize(self.cg(self.fc(x)), dim=1)


class ReduceDim(nn.Module):
  def __init__(self, dim_in: int, dim_out: int):
    super().__init__()
    self.fc = nn.Linear(dim_in, dim_out)

  def forward(self, x):
    return F.normalize(self.fc(x), dim=1)


class ContextGatingReasoning(nn.Module):
  def __init__(self, dim: int):
    super().__init__()
    self.fc = nn.Linear(dim, dim)
    self.batch_norm = nn.BatchNorm1d(dim)
    self.batch_norm2 = nn.BatchNorm1d(dim)

  def forward(self, x, mask):
    return x * torch.sigmoid(self.batch_norm(mask) + self.batch_norm2(self.fc(x)))


class GatedEmbeddingUnitReasoning(nn.Module):
  def __init__(self, dim: int):
    super().__init__()
    self.cg = ContextGatingReasoning(dim)

  def forward(self, x, mask):
    return F.normalize(self.cg(x, mask), dim=1)


class Heads(nn.Module):
  """The reference's `ce` submodule: mixture weights, text GEUs and the audio head."""

  def __init__(self, variant: str, modalities, vlad_dims, text_vlad: int, shared: int):
    super().__init__()
    self.variant, self.modalities = variant, modalities
    raw = [RAW_DIMS[m] for m in modalities]
    out = [shared] * len(modalities) if variant == 'ce' else raw
    self.moe_fc = nn.Linear(text_vlad, len(modalities))
    if variant == 'ce':
      self.video_dim_reduce = nn.ModuleList(ReduceDim(d, shared) for d in vlad_dims)
      self.g_reason_1 = nn.Linear(2 * shared, shared)
      self.g_reason_shared = nn.Sequential(
          nn.BatchNorm1d(shared), nn.Mish(), nn.Linear(shared, shared),
          nn.BatchNorm1d(shared), nn.Mish(), nn.Linear(shared, shared))
      self.video_GU = nn.ModuleList(GatedEmbeddingUnitReasoning(shared) for _ in modalities)
    else:
      self.video_GU = nn.ModuleList(GatedEmbeddingUnit(i, o) for i, o in zip(vlad_dims, raw))
    self.text_GU = nn.ModuleList(GatedEmbeddingUnit(text_vlad, o) for o in out)

  def audio(self, pooled, ind):
    """Per-expert audio embeddings; CE gates expert i in place, in expert order (§2.3.6)."""
    if self.variant != 'ce':
      return [gu(x) for gu, x in zip(self.video_GU, pooled)]
    emb = [reduce(x) for reduce, x in zip(self.video_dim_reduce, pooled)]
    for i in range(len(emb)):
      total, count = 0.0, 0.0
      for j in range(len(emb)):
        pair = self.g_reason_1(torch.cat([emb[i], emb[j]], dim=1))
        a = (ind[:, i] * ind[:, j])[:, None]
        total, count = total + a * self.g_reason_shared(pair), count + a
      emb[i] = self.video_GU[i](emb[i], total / (count + 1e-11))
    return emb


class CENet(nn.Module):
  """CE-pairwise ('ce') or MoEE ('moee') with the reference's state_dict names (§3.2)."""

  def __init__(self, variant: str, modalities, clusters: int = 16, text_clusters: int = 20,
               ghost: int = 1, shared: int = 768, text_dim: int = 300):
    super().__init__()
    if variant not in ('ce', 'moee'):
      raise ValueError(f'variant {variant!r}: the baseline builds ce or moee')
    self.modalities = sorted(modalities)  # reference order (§2.1)
    self.pooling = nn.ModuleDict({m: NetVLAD(RAW_DIMS[m], clusters) for m in self.modalities})
    self.text_pooling = NetVLAD(text_dim, text_clusters, ghost)
    self.ce = Heads(variant, self.modalities, [RAW_DIMS[m] * clusters for m in self.modalities],
                    text_dim * text_clusters, shared)

  def forward(self, experts: dict, ind, text):
    """Similarities `[Q, B]`; `experts` ref name -> `[B, T, D]`, `ind` `[B, M]`, `text` `[Q, T, 300]`."""
    audio = self.embed_audio(experts, ind)
    texts, w = self.embed_text(text)
    return similarity(texts, w, audio, ind)

  def embed_audio(self, experts: dict, ind):
    """The audio tower: per-expert item embeddings `[B, d_i]` (missing experts zero-filled)."""
    pooled = []
    for i, m in enumerate(self.modalities):
      x = torch.where(ind[:, i, None, None] > 0, experts[m], torch.zeros((), dtype=experts[m].dtype))
      pooled.append(self.pooling[m](x))
    return self.ce.audio(pooled, ind)

  def embed_text(self, text):
    """The text tower: per-expert caption embeddings `[Q, d_i]` and mixture weights `[Q, M]`."""
    vlad = self.text_pooling(text)
    w = F.softmax(self.ce.moe_fc(vlad), dim=1)  # [Q, M]
    return [gu(vlad) for gu in self.ce.text_GU], w


def similarity(texts, w, audio, ind):
  """S[q, j] = sum_i W[q, j, i] <T_i[q], E_i[j]>, W renormalised over j's experts (§2.3.7)."""
  weights = w[:, None, :] * ind[None, :, :]  # [Q, N, M]
  weights = weights / weights.sum(dim=2, keepdim=True)
  return sum(weights[:, :, i] * (t @ a.t()) for i, (t, a) in enumerate(zip(texts, audio)))


def max_margin_loss(s, margin: float = 0.2):
  """The reference's loss (§4.1, fix_norm): mean of the 2n(n-1) off-diagonal hinge terms,
  gathered into one column as the reference does."""
  n = s.shape[0]
  positive = torch.diag(s)[:, None].expand(n, n).reshape(-1, 1).repeat(2, 1)  # d_i, twice
  scores = torch.cat([s.reshape(-1, 1), s.t().reshape(-1, 1)])  # S[i,j] row-major, then S^T
  keep = (1.0 - torch.eye(n, dtype=s.dtype)).reshape(-1).repeat(2).nonzero().flatten()
  return F.relu(margin - (positive[keep] - scores[keep])).mean()


class Ranger(torch.optim.Optimizer):
  """Ranger 9.3.19 as §4.2 describes it: per-parameter RAdam (eps outside the uncorrected
  sqrt, decoupled decay), LookAhead every k steps; a Python loop over the parameters."""

  def __init__(self, params, lr=0.01, weight_decay=1e-3, betas=(0.95, 0.999), eps=1e-5,
               threshold=5.0, k=6, alpha=0.5):
    super().__init__(params, dict(lr=lr, weight_decay=weight_decay, betas=betas, eps=eps,
                                  threshold=threshold, k=k, alpha=alpha))

  @staticmethod
  def _step_size(t: int, b1: float, b2: float, threshold: float):
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    rho = rho_inf - 2.0 * t * b2 ** t / (1.0 - b2 ** t)
    if rho > threshold:
      return math.sqrt((1.0 - b2 ** t) * (rho - 4.0) / (rho_inf - 4.0) * (rho - 2.0) / rho *
                       rho_inf / (rho_inf - 2.0)) / (1.0 - b1 ** t), True
    return 1.0 / (1.0 - b1 ** t), False

  @torch.no_grad()
  def step(self):
    for group in self.param_groups:
      b1, b2 = group['betas']
      lr = group['lr']
      for p in group['params']:
        if p.grad is None:
          continue
        state = self.state[p]
        if not state:
          state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p),
                       slow_buffer=p.detach().clone())
        state['step'] += 1
        t, m, v, g = state['step'], state['exp_avg'], state['exp_avg_sq'], p.grad
        v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
        m.mul_(b1).add_(g, alpha=1.0 - b1)
        size, adaptive = self._step_size(t, b1, b2, group['threshold'])
        p.add_(p, alpha=-group['weight_decay'] * lr)
        if adaptive:
          p.addcdiv_(m, v.sqrt().add_(group['eps']), value=-size * lr)
        else:
          p.add_(m, alpha=-size * lr)
        if t % group['k'] == 0:
          slow = state['slow_buffer']
          slow.add_(p - slow, alpha=group['alpha'])
          p.copy_(slow)


def train_step(model: CENet, optimizer: Ranger, batch: dict, margin: float = 0.2) -> float:
  """Forward (BatchNorm in training mode), loss, backward, Ranger step; returns the loss."""
  model.train()
  optimizer.zero_grad(set_to_none=True)
  loss = max_margin_loss(model(batch['experts'], batch['ind'], batch['text']), margin)
  loss.backward()
  optimizer.step()
  return loss.item()


@torch.no_grad()
def similarities(model: CENet, experts: dict, ind, text) -> np.ndarray:
  """The evaluation matrix `[Q, N]` in one forward pass in eval mode, as the reference's
  test (§4.3: one pass on CPU)."""
  model.eval()
  return model(experts, ind, text).numpy()


def _tie_averaged(sorted_rows: np.ndarray, values: np.ndarray) -> np.ndarray:
  """Mean position of each `values[i]` among the equal entries of `sorted_rows[i]`."""
  first = np.array([np.searchsorted(r, v, 'left') for r, v in zip(sorted_rows, values)])
  last = np.array([np.searchsorted(r, v, 'right') for r, v in zip(sorted_rows, values)])
  return (first + last - 1) / 2.0


def retrieval_ranks(sims: np.ndarray, query_masks: np.ndarray):
  """t2a and a2t ranks of §5 by sorting the distance rows of the whole `[N * K, N]` matrix,
  as the reference computes them: `chunked_retrieval_ranks` with one block each way."""
  n, k = query_masks.shape
  return chunked_retrieval_ranks(lambda rows, items: sims[rows, items], query_masks,
                                 query_chunk=n * k, item_chunk=n)


@torch.no_grad()
def embeddings(model: CENet, experts: dict, ind, text, chunk: int):
  """The eval-mode towers' outputs, `((texts, w), audio)` as `CENet.embed_text` and
  `embed_audio` give them, for captions and items `chunk` rows at a time (in eval mode a
  row's embedding does not depend on the others' — the reference's validation feeds text in
  chunks, §4.3 — and chunks bound the memory that one pass over a large pool takes)."""
  model.eval()
  parts = [model.embed_text(text[i:i + chunk]) for i in range(0, len(text), chunk)]
  texts = [torch.cat([p[0][e] for p in parts]) for e in range(len(model.modalities))]
  items = [model.embed_audio({m: x[i:i + chunk] for m, x in experts.items()}, ind[i:i + chunk])
           for i in range(0, len(ind), chunk)]
  audio = [torch.cat([p[e] for p in items]) for e in range(len(model.modalities))]
  return (texts, torch.cat([p[1] for p in parts])), audio


def block_scores(texts, w, audio, ind):
  """`score(rows, items)`: the block `sims[rows, items]` of the `[Q, N]` matrix that
  `similarity` gives for these embeddings, computed by `similarity` on those rows and items."""

  @torch.no_grad()
  def score(rows: slice, items: slice) -> np.ndarray:
    return similarity([t[rows] for t in texts], w[rows], [a[items] for a in audio],
                      ind[items]).numpy()

  return score


def chunked_retrieval_ranks(score, query_masks: np.ndarray, query_chunk: int, item_chunk: int):
  """The reference's sort-based tie-averaged ranks (t2a for every real caption, a2t per
  item from its best own caption) block by block: t2a ranks sort the rows of
  `[query_chunk, N]` blocks, a2t ranks the rows of transposed `[N * K, item_chunk]`
  blocks, both from `score(rows, items)` (`block_scores`; one block each way is
  `retrieval_ranks`). BLAS may round a block's products differently from the whole
  matrix's in the last bit, so ranks can differ only between scores within a rounding."""
  n, k = query_masks.shape
  real = query_masks.reshape(-1) > 0
  t2a = []
  for start in range(0, n * k, query_chunk):
    rows = np.arange(start, min(start + query_chunk, n * k))
    dists = -score(slice(rows[0], rows[-1] + 1), slice(0, n))
    t2a.append(_tie_averaged(np.sort(dists, axis=1), dists[rows - start, rows // k]))
  a2t = []
  for start in range(0, n, item_chunk):
    items = np.arange(start, min(start + item_chunk, n))
    d = (-score(slice(0, n * k), slice(items[0], items[-1] + 1))).T.copy()  # [n', N * K]
    d[:, ~real] = 1e8
    sorted_d = np.sort(d, axis=1)
    best = np.full(len(items), np.inf)
    for c in range(k):
      ranks = _tie_averaged(sorted_d, d[items - start, items * k + c])
      best = np.where(real.reshape(n, k)[items, c], np.minimum(best, ranks), best)
    a2t.append(best)
  return np.concatenate(t2a)[real], np.concatenate(a2t)


def from_spec(spec) -> CENet:
  """The baseline model of a jaxretrieval `ModelSpec` (temporal experts, CE or MoEE)."""
  from jaxretrieval.data.registry import EXPERTS
  clusters = {e.clusters for e in spec.experts}
  if len(clusters) != 1 or any(e.temporal != 'vlad' for e in spec.experts):
    raise ValueError('the baseline builds models whose experts are all NetVLAD-pooled with '
                     f'one cluster count; got {spec.experts}')
  return CENet(spec.variant, [EXPERTS[e.name].reference_name for e in spec.experts],
               clusters.pop(), spec.text_clusters, spec.text_ghost_clusters, spec.shared_dim,
               spec.text_dim)


def batch_from_host(batch: dict, words: np.ndarray) -> dict:
  """The baseline's training batch from a jaxretrieval host batch (`train_batches`): experts
  under reference names, availability, and the captions' word vectors, as the reference's
  data loader hands them over."""
  from jaxretrieval.data.registry import EXPERTS
  return {'experts': {EXPERTS[e].reference_name: torch.from_numpy(np.ascontiguousarray(x))
                      for e, x in batch['experts'].items()},
          'ind': torch.from_numpy(np.ascontiguousarray(batch['availability'], np.float32)),
          'text': torch.from_numpy(words[batch['text_ids']])}
