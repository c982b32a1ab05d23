"""The retrieval model: expert pooling, text tower, audio head and similarity (REFERENCE §2)."""

from collections.abc import Mapping
import dataclasses
import functools
from typing import Sequence

from flax import struct
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxretrieval.models.ce import CollaborativeGating, SingleExpertGating
from jaxretrieval.models.gating import GatedEmbeddingUnit
from jaxretrieval.models.layers import Array, Dtype, Linear
from jaxretrieval.models.moee import MixtureOfEmbeddedExperts
from jaxretrieval.models.netvlad import NetVLAD
from jaxretrieval.models.similarity import mixture_similarity

VARIANTS = ('ce', 'mimic', 'moee')


@dataclasses.dataclass(frozen=True)
class ExpertSpec:
  """One audio (or visual) expert as the model sees it.

  `temporal='vlad'`: a `[T, dim]` sequence pooled by NetVLAD(dim, clusters);
  `temporal='avg'`: an already pooled `[dim]` vector (`clusters` is then 1).
  """
  name: str
  dim: int
  temporal: str = 'vlad'
  clusters: int = 16


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Architecture of a CE / MoEE model.

  `experts` are in the reference's order (sorted by reference name, REFERENCE §7.1), which
  indexes the mixture weights and decides CE's sequential gating order.
  Variants: 'ce' (CE-pairwise, >= 2 experts), 'mimic' (the single-expert "CE" rows),
  'moee' (Mixture of Embedded Experts).
  """
  variant: str
  experts: tuple[ExpertSpec, ...]
  text_dim: int = 300
  text_clusters: int = 20
  text_ghost_clusters: int = 1
  shared_dim: int = 768
  use_mask: bool = False
  # InfoNCE: a learned temperature, kept as the parameter `logit_scale` = log(1 / T).
  initial_temperature: float | None = None

  def __post_init__(self):
    if self.variant not in VARIANTS:
      raise ValueError(f'model variant {self.variant!r}: expected one of {VARIANTS}')
    if not self.experts:
      raise ValueError('a model needs at least one expert')
    if self.variant == 'ce' and len(self.experts) < 2:
      raise ValueError("variant 'ce' (pairwise gating) needs >= 2 experts; "
                       "use 'mimic' for a single expert")
    if self.variant == 'mimic' and len(self.experts) != 1:
      raise ValueError("variant 'mimic' takes exactly one expert")
    for e in self.experts:
      if e.temporal not in ('vlad', 'avg'):
        raise ValueError(f'expert {e.name}: temporal {e.temporal!r} not in (vlad, avg)')

  @property
  def expert_names(self) -> tuple[str, ...]:
    return tuple(e.name for e in self.experts)

  def embed_dims(self) -> tuple[int, ...]:
    """Width of each expert's joint embedding (768 for CE variants, raw dim for MoEE)."""
    if self.variant == 'moee':
      return tuple(e.dim for e in self.experts)
    return (self.shared_dim,) * len(self.experts)


@struct.dataclass
class Batch:
  """The inputs of a RetrievalModel.

  `experts[e]` is `[B, T_e, D_e]` (vlad) or `[B, D_e]` (avg); `availability` `[B, M]` in the
  model's expert order; `text` `[Q, T_text, 300]` word vectors (one row per caption).
  `row_mask` `[B]` / `text_row_mask` `[Q]` mark the real rows of a padded batch, keeping
  padding out of the BatchNorm statistics (None: every row is real); the lengths (real
  frames / tokens) are only read when `spec.use_mask`.
  """
  experts: dict[str, Array]
  availability: Array
  text: Array
  expert_lengths: dict[str, Array] | None = None
  text_lengths: Array | None = None
  row_mask: Array | None = None
  text_row_mask: Array | None = None


def dummy_inputs(spec: ModelSpec, batch_size: int = 2,
                 tokens: Mapping[str, int] | None = None) -> Batch:
  """A Batch of zeros for a model of `spec` (what `init` needs: only shapes matter), in
  NumPy: outside a trace, each jnp array of a new shape would compile a program.
  `tokens` gives the frames of each temporal expert and the text's tokens (default 2)."""
  tokens = tokens or {}
  frames = lambda name: tokens.get(name, 2)
  return Batch(
      experts={e.name: np.zeros((batch_size, frames(e.name), e.dim) if e.temporal == 'vlad'
                                else (batch_size, e.dim), np.float32) for e in spec.experts},
      availability=np.ones((batch_size, len(spec.experts)), np.float32),
      text=np.zeros((batch_size, frames('text'), spec.text_dim), np.float32))


def abstract_variables(spec: ModelSpec) -> dict:
  """Shapes and dtypes of the variables ({'params', 'batch_stats'}) of a model of `spec`;
  nothing is computed or allocated (a new tree each call: the caller may change it)."""
  return jax.tree.map(lambda x: x, _abstract_variables(spec))


@functools.lru_cache(maxsize=16)
def _abstract_variables(spec: ModelSpec) -> dict:
  # Tracing a full-size model's init takes about half a second: the checkpoint loads,
  # conversions and index updates of one spec in a process share one trace.
  return jax.eval_shape(lambda: RetrievalModel(spec).init(jax.random.key(0), dummy_inputs(spec),
                                                          train=False))


class RetrievalModel(nn.Module):
  """Text-audio retrieval model of the paper (the reference's `CENet`); inputs: `Batch`."""
  spec: ModelSpec
  axis_name: str | None = None
  dtype: Dtype = jnp.float32

  def setup(self):
    spec, ax, dt = self.spec, self.axis_name, self.dtype
    self.pooling = {e.name: NetVLAD(e.clusters, use_mask=spec.use_mask, axis_name=ax, dtype=dt)
                    for e in spec.experts if e.temporal == 'vlad'}
    self.text_pooling = NetVLAD(spec.text_clusters, spec.text_ghost_clusters,
                                use_mask=spec.use_mask, axis_name=ax, dtype=dt)
    self.moe_fc = Linear(len(spec.experts), dtype=jnp.float32)
    self.text_gu = {e.name: GatedEmbeddingUnit(d, ax, dt)
                    for e, d in zip(spec.experts, spec.embed_dims())}
    names = spec.expert_names
    if spec.variant == 'ce':
      self.audio_head = CollaborativeGating(names, spec.shared_dim, ax, dt)
    elif spec.variant == 'mimic':
      self.audio_head = SingleExpertGating(names[0], spec.shared_dim, ax, dt)
    else:
      self.audio_head = MixtureOfEmbeddedExperts(names, spec.embed_dims(), ax, dt)
    if spec.initial_temperature is not None:
      self.logit_scale = self.param('logit_scale', nn.initializers.constant(
          -np.log(spec.initial_temperature)), ())

  def encode_audio(self, experts: dict[str, Array], availability: Array, train: bool,
                   row_mask: Array | None = None,
                   lengths: dict[str, Array] | None = None) -> dict[str, Array]:
    """Per-expert unit-norm audio embeddings, expert -> `[B, d_e]`."""
    pooled = {}
    for i, e in enumerate(self.spec.experts):
      x = experts[e.name]
      present = availability[:, i] > 0
      # Missing experts enter as zeros (they still shape the BatchNorm statistics).
      x = jnp.where(present.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0.0)
      if e.temporal == 'vlad':
        x = self.pooling[e.name](x, train, row_mask, None if lengths is None else lengths[e.name])
      pooled[e.name] = x.astype(self.dtype)
    return self.audio_head(pooled, availability, train, row_mask)

  def encode_text(self, text: Array, train: bool, row_mask: Array | None = None,
                  lengths: Array | None = None) -> tuple[dict[str, Array], Array]:
    """Per-expert unit-norm query embeddings (expert -> `[Q, d_e]`) and mixture weights `[Q, M]`."""
    vlad = self.text_pooling(text, train, row_mask, lengths)  # [Q, 300 * clusters]
    weights = nn.softmax(self.moe_fc(vlad.astype(jnp.float32)), axis=-1)
    embeddings = {e: self.text_gu[e](vlad, train, row_mask) for e in self.spec.expert_names}
    return embeddings, weights

  def embed(self, batch: Batch, train: bool):
    """Both towers: (text embeddings, mixture weights, audio embeddings)."""
    audio = self.encode_audio(batch.experts, batch.availability, train, batch.row_mask,
                              batch.expert_lengths)
    text, weights = self.encode_text(batch.text, train, batch.text_row_mask, batch.text_lengths)
    return text, weights, audio

  def __call__(self, batch: Batch, train: bool) -> Array:
    """Similarity matrix `[Q, B]` between the batch's captions and items."""
    text, weights, audio = self.embed(batch, train)
    return mixture_similarity(text, weights, audio, batch.availability, self.spec.expert_names)


class MissingExpertsError(ValueError):
  """An item has none of the model's experts, so no similarity can be defined for it."""


def check_availability(availability: np.ndarray, ids: Sequence[str],
                       experts: Sequence[str]) -> None:
  """Raises MissingExpertsError naming every item of `availability` `[N, M]` with no expert."""
  empty = np.flatnonzero(~np.any(np.asarray(availability) > 0, axis=1))
  if empty.size:
    shown = ', '.join(str(ids[i]) for i in empty[:10])
    more = f' (and {empty.size - 10} more)' if empty.size > 10 else ''
    raise MissingExpertsError(
        f'{empty.size} item(s) have none of the experts {list(experts)}: {shown}{more}. '
        'The similarity of such an item is undefined; remove it from the split list or add '
        'an expert it has.')
