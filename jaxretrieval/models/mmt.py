"""Multi-Modal Transformer (MMT, Gabeur et al. 2020) as configured by the benchmark.

A port of the original's `mmt/model/model.py` (`CENet`) for the configuration that
`mmt/configs/AudioCaps_mmt.json` and `Clotho_mmt.json` select (127.08M parameters on
AudioCaps with VGGish + VGGSound). What each flag means in the original and what this port does:

- `txt_inp = bertftn`, `txt_agg = bertftn`: the text tower is a pre-trained `bert-base-cased`
  (`models/bert.py`), fine-tuned with everything else. Its input is the query's WordPiece ids
  (`bert_tokens.py`) with token type 0 and positions 0..L-1. The query vector is the LAST
  LAYER'S [CLS] ROW (the regex's third group is empty, so `post_agg = 'cls'`), not the pooler:
  the pooler is unused, yet built (and counted in the 127.08M, and imported).
- `txt_pro = gbn`: per expert, a gated embedding unit with BatchNorm: L2(ContextGating(fc(text)))
  from 768 to `same_dim` = 512 (`gating.GatedEmbeddingUnit`, PyTorch BatchNorm semantics).
- `txt_wgh = emb`: mixture weights softmax_e(fc_e(dropout(text))), one Linear(768, 1) per
  expert, dropout = `txt_bert_params.hidden_dropout_prob` (0.1); then L1-normalised.
- `vid_inp = both`: each expert enters as an aggregated token AND its frame tokens. Both go
  through the expert's ReduceDim (L2(fc) to 512, shared between the two).
- `out_tok = mxp`: the aggregated token's feature is the reduced MAX-POOLED expert (the
  max over all the expert's frames; the average-pooled one is computed and unused in the
  original, and not here). Pooled features are `[B, D]`: the original's batching makes them
  `[B, 1, D]` and its model then fails when stacking tokens, so as released it cannot run on
  these experts end to end; this port takes `[B, D]` (the evident intent).
- `vid_cont = bert`, `vid_bert_params`: a 4-layer, 4-head, 512-wide BERT without word
  embeddings (`vocab_size=None`) over the token sequence [CLS], then for each expert (sorted
  by name) [AGG] + its frames. Token types: 0 for [CLS], the expert's index of the original's
  `compute_dims` for its tokens (VGGish 2, VGGSound 3; `TOKEN_TYPES`). [CLS] has a zero feature.
  The expert's embedding is the last layer's row of its [AGG] token; the [CLS] row would feed
  `vid_wgh = emb`, which these configs do not use.
- `pos_enc = tint`: frame positions are the frames' times: frame k of a 1 s-wide expert is
  centred at k + 0.5 s, shifted by 2 and truncated to an integer, so k -> k + 2, clamped to
  `max_position_embeddings - 1` = 101. [CLS] and [AGG] have position 0; padding frames and a
  missing expert's frames have position 1 (`expert_tokens` prepares these per item).
- Attention masks: [CLS] 1; [AGG] the expert's availability; frames their validity.
- `vid_wgh = none`: audio-side weights are all 1 (L1-normalised to 1/M).
- `keep_missing_modalities = true`: a MISSING EXPERT IS NOT REMOVED FROM THE SIMILARITY. Its
  tokens are masked from attention (its inputs are zeros, as the original's loader makes them),
  but its [AGG] row still attends to the other tokens, and its cosine enters the similarity at
  its full text weight: S[q, j] = sum_e w_e(q) <t_e(q), a_e(j)>. With `False`, the weights are
  renormalised over the item's present experts, as CE does.
- `l2renorm = false`, `normalize_experts` (default true): both sides' embeddings are
  L2-normalised before the similarity.
- `test_caption_mode = indep`: at test time each query is scored independently (training
  averages over captions per item, but uses one caption per item, so that is the identity).
- Loss (`MaxMarginRankingLoss`, margin 0.05, `fix_norm`): `losses.max_margin_ranking_loss`.

The original overwrites entries of the caller's input dicts (the projected frames and the
clamped times); this port computes from its inputs without changing them.
"""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxretrieval.models.bert import BERT_BASE_CASED, BertConfig, BertModel
from jaxretrieval.models.gating import GatedEmbeddingUnit, ReduceDim
from jaxretrieval.models.layers import Array, Dtype, Linear, l2_normalize
from jaxretrieval.models.similarity import mixture_similarity

# The original's token type per expert (`compute_dims` of mmt/utils/util.py); 0 is [CLS].
TOKEN_TYPES = {'s3d': 1, 'vggish': 2, 'vggsound': 3, 'audio': 4, 'rgb': 5, 'speech': 6,
               'ocr': 7, 'flow': 8, 'scene': 9}
# `vid_bert_params` of AudioCaps_mmt.json / Clotho_mmt.json.
AUDIO_BERT = BertConfig(vocab_size=None, hidden_size=512, num_layers=4, num_heads=4,
                        intermediate_size=3072, max_positions=102, type_vocab_size=10)
# Position ids of the audio tokens (pos_enc = tint).
SPECIAL_POSITION, PAD_POSITION, FIRST_FRAME_POSITION = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class MMTExpert:
  """One expert: its name, feature width and token type."""
  name: str
  dim: int
  token_type: int


@dataclasses.dataclass(frozen=True)
class MMTSpec:
  """Architecture of an MMT model; the defaults are the original AudioCaps/CLOTHO configs."""
  experts: tuple[MMTExpert, ...]
  text_bert: BertConfig = BERT_BASE_CASED
  audio_bert: BertConfig = AUDIO_BERT
  same_dim: int = 512
  weight_dropout: float = 0.1  # dropout before the text mixture-weight layers
  keep_missing_modalities: bool = True

  def __post_init__(self):
    if not self.experts:
      raise ValueError('an MMT model needs at least one expert')
    if self.audio_bert.vocab_size is not None:
      raise ValueError('the audio BERT takes features: its vocab_size must be None')
    if self.audio_bert.hidden_size != self.same_dim:
      raise ValueError(f'audio BERT width {self.audio_bert.hidden_size} != same_dim '
                       f'{self.same_dim}: the expert tokens are the BERT input')
    for e in self.experts:
      if not 0 < e.token_type < self.audio_bert.type_vocab_size:
        raise ValueError(f'expert {e.name}: token type {e.token_type} outside 1..'
                         f'{self.audio_bert.type_vocab_size - 1}')

  @property
  def expert_names(self) -> tuple[str, ...]:
    return tuple(e.name for e in self.experts)

  @property
  def variant(self) -> str:
    return 'mmt'


def scored_availability(spec: MMTSpec, availability: Array) -> Array:
  """The availability the similarity (and so the loss and the ranking) sees: all ones with
  `keep_missing_modalities` (a missing expert counts at full text weight), else the items'."""
  return jnp.ones_like(availability) if spec.keep_missing_modalities else availability


def mmt_experts(dims: dict[str, int]) -> tuple[MMTExpert, ...]:
  """Experts sorted by name (the original's order); unknown names get the free token types."""
  free = iter(sorted(set(range(1, 10)) - set(TOKEN_TYPES[n] for n in dims if n in TOKEN_TYPES)))
  experts = []
  for name in sorted(dims):
    token_type = TOKEN_TYPES.get(name) or next(free, None)
    if token_type is None:
      raise ValueError(f'too many experts for the audio BERT\'s 9 token types: {sorted(dims)}')
    experts.append(MMTExpert(name, int(dims[name]), token_type))
  return tuple(experts)


def mmt_spec(config, dims: dict[str, int]) -> MMTSpec:
  """The MMTSpec of an experiment config (`configs/mmt_*.py`); `dims`: expert -> width."""
  m = config.model
  missing = [e for e in config.experts if e not in dims]
  if missing:
    raise ValueError(f'experts {missing} of config.experts are not in the dataset (it has '
                     f'{sorted(dims)})')
  drop = dict(hidden_dropout=m.dropout, attention_dropout=m.dropout)
  audio = BertConfig(vocab_size=None, hidden_size=m.same_dim, num_layers=m.audio_layers,
                     num_heads=m.audio_heads, intermediate_size=m.audio_intermediate,
                     max_positions=m.audio_max_positions,
                     type_vocab_size=m.audio_type_vocab, **drop)
  return MMTSpec(mmt_experts({e: dims[e] for e in config.experts}),
                 text_bert=BertConfig(**m.text_bert.to_dict(), **drop), audio_bert=audio,
                 same_dim=m.same_dim, weight_dropout=m.dropout,
                 keep_missing_modalities=m.keep_missing_modalities)


class MMT(nn.Module):
  """Text tower (BERT) and audio tower (transformer over expert tokens) of MMT.

  Batch keys (`Q` queries, `B` items, `M` experts in spec order, `T_e` frames of expert e):
    tokens `[Q, L]` int WordPiece ids and token_mask `[Q, L]` (`bert_tokens.BertTokens`);
    experts {e: `[B, T_e, D_e]`} frames, expert_masks {e: `[B, T_e]`} 1 for real frames,
    expert_positions {e: `[B, T_e]`} int positions, pooled {e: `[B, D_e]`} max-pooled
    features (`expert_tokens` makes these per item); availability `[B, M]`;
    optional row_mask `[B]` / text_row_mask `[Q]` keep padding rows out of BatchNorm.
  """
  spec: MMTSpec
  axis_name: str | None = None
  dtype: Dtype = jnp.float32

  def setup(self):
    spec, dt = self.spec, self.dtype
    self.txt_bert = BertModel(spec.text_bert, dt)
    self.vid_bert = BertModel(spec.audio_bert, dt)
    self.text_gu = {e: GatedEmbeddingUnit(spec.same_dim, self.axis_name, dt)
                    for e in spec.expert_names}
    self.moe_fc = {e: Linear(1, dtype=jnp.float32) for e in spec.expert_names}
    self.video_dim_reduce = {e.name: ReduceDim(spec.same_dim, dt) for e in spec.experts}
    self.weight_dropout = nn.Dropout(spec.weight_dropout)

  def encode_text(self, tokens: Array, token_mask: Array, train: bool,
                  row_mask: Array | None = None) -> tuple[dict[str, Array], Array]:
    """Per-expert unit-norm query embeddings (expert -> `[Q, same_dim]`), weights `[Q, M]`."""
    q, length = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(length), (q, length))
    last, _ = self.txt_bert(tokens, token_mask, jnp.zeros_like(tokens), positions,
                            train=train)
    text = last[:, 0]  # the [CLS] row of the last layer (post_agg = 'cls')
    embeddings = {e: l2_normalize(self.text_gu[e](text, train, row_mask))
                  for e in self.spec.expert_names}
    dropped = self.weight_dropout(text.astype(jnp.float32), deterministic=not train)
    logits = jnp.concatenate([self.moe_fc[e](dropped) for e in self.spec.expert_names], -1)
    weights = nn.softmax(logits, axis=-1)
    weights = weights / jnp.maximum(jnp.sum(jnp.abs(weights), -1, keepdims=True), 1e-12)
    return embeddings, weights

  def encode_audio(self, batch: dict, train: bool) -> dict[str, Array]:
    """Per-expert unit-norm item embeddings, expert -> `[B, same_dim]`."""
    availability = batch['availability']
    b = availability.shape[0]
    max_position = self.spec.audio_bert.max_positions - 1
    features = [jnp.zeros((b, 1, self.spec.same_dim), self.dtype)]  # [CLS]
    types, positions, masks = [jnp.zeros((b, 1), jnp.int32)], [], [jnp.ones((b, 1), jnp.int32)]
    positions.append(jnp.full((b, 1), SPECIAL_POSITION, jnp.int32))
    agg_index, count = {}, 1
    for i, e in enumerate(self.spec.experts):
      present = availability[:, i] > 0  # [B]
      pooled, frames = batch['pooled'][e.name], batch['experts'][e.name]
      if pooled.ndim != 2 or frames.ndim != 3:
        raise ValueError(f'expert {e.name}: pooled must be [B, D] and frames [B, T, D]; got '
                         f'{pooled.shape} and {frames.shape}')
      # A missing expert enters as zeros, as the original's loader fills it.
      pooled = jnp.where(present[:, None], pooled, 0.0)
      frames = jnp.where(present[:, None, None], frames, 0.0)
      frame_mask = (batch['expert_masks'][e.name] > 0) & present[:, None]  # [B, T]
      frame_pos = jnp.where(frame_mask, batch['expert_positions'][e.name], PAD_POSITION)
      reduce = self.video_dim_reduce[e.name]
      features += [reduce(pooled)[:, None], reduce(frames)]
      t = frames.shape[1]
      types.append(jnp.full((b, 1 + t), e.token_type, jnp.int32))
      positions += [jnp.full((b, 1), SPECIAL_POSITION, jnp.int32),
                    jnp.clip(frame_pos, 0, max_position).astype(jnp.int32)]
      masks += [present[:, None].astype(jnp.int32), frame_mask.astype(jnp.int32)]
      agg_index[e.name] = count
      count += 1 + t
    last, _ = self.vid_bert(None, jnp.concatenate(masks, 1), jnp.concatenate(types, 1),
                            jnp.concatenate(positions, 1), jnp.concatenate(features, 1),
                            train=train)
    return {e: l2_normalize(last[:, k]) for e, k in agg_index.items()}

  def embed(self, batch: dict, train: bool):
    """(text embeddings, text weights, audio embeddings) of a batch."""
    text, weights = self.encode_text(batch['tokens'], batch['token_mask'], train,
                                     batch.get('text_row_mask'))
    return text, weights, self.encode_audio(batch, train)

  def similarity(self, text: dict[str, Array], weights: Array, audio: dict[str, Array],
                 availability: Array) -> Array:
    """`[Q, N]` similarities (see the module docstring on missing experts)."""
    return mixture_similarity(text, weights, audio, scored_availability(self.spec, availability),
                              self.spec.expert_names)

  def __call__(self, batch: dict, train: bool) -> Array:
    """Similarity matrix `[Q, B]` between the batch's queries and items."""
    text, weights, audio = self.embed(batch, train)
    return self.similarity(text, weights, audio, batch['availability'])


def dummy_batch(spec: MMTSpec, items: int = 2, frames: int = 3, tokens: int = 4) -> dict:
  """A batch of zeros of the right structure (for initialisation and shape inference), in
  NumPy: outside a trace, each jnp array of a new shape would compile a program."""
  names = spec.expert_names
  return {
      'tokens': np.zeros((items, tokens), np.int32),
      'token_mask': np.ones((items, tokens), np.int32),
      'experts': {e.name: np.zeros((items, frames, e.dim), np.float32) for e in spec.experts},
      'expert_masks': {n: np.ones((items, frames), np.int32) for n in names},
      'expert_positions': {n: np.full((items, frames), FIRST_FRAME_POSITION, np.int32)
                           for n in names},
      'pooled': {e.name: np.zeros((items, e.dim), np.float32) for e in spec.experts},
      'availability': np.ones((items, len(names)), np.float32),
  }


def abstract_variables(spec: MMTSpec) -> dict:
  """Shapes of MMT(spec)'s variables ({'params', 'batch_stats'}), nothing allocated (a new
  tree each call: the caller may change it)."""
  return jax.tree.map(lambda x: x, _abstract_variables(spec))


@functools.lru_cache(maxsize=16)
def _abstract_variables(spec: MMTSpec) -> dict:
  # Tracing the model's init takes about a second: a spec's checkpoint conversion, parameter
  # count and pre-trained text tower share one trace.
  model = MMT(spec)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), dummy_batch(spec), train=False))


def num_parameters(spec: MMTSpec) -> int:
  """Number of trainable parameters (BatchNorm statistics excluded, as torch counts them)."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract_variables(spec)['params']))


def expert_tokens(frames: np.ndarray | None, max_tokens: int, rng: np.random.RandomState | None,
                  dim: int, frame_width: float = 1.0) -> dict[str, np.ndarray]:
  """One item's inputs for one expert, as the original's loader prepares them.

  Args:
    frames: `[T, D]` features, or None / NaN-filled when the expert is missing.
    max_tokens: the original's `max_expert_tokens` (AudioCaps 32, CLOTHO 95).
    rng: training: frames beyond `max_tokens` are a random subset drawn with it (kept in
      time order); None (evaluation): the original's fixed subset, `RandomState(0)`.
    dim: the expert's width (for a missing expert).
    frame_width: seconds per frame (1.0 for VGGish and VGGSound in the original).

  Returns:
    frames `[max_tokens, D]`, mask `[max_tokens]`, positions `[max_tokens]` (int32, frame at
    time t -> int(t + 2), padding 1, clamped by the model) and pooled `[D]`, the max over ALL
    frames (taken before the subset).
  """
  out = dict(frames=np.zeros((max_tokens, dim), np.float32), mask=np.zeros(max_tokens, np.int32),
             positions=np.full(max_tokens, PAD_POSITION, np.int32),
             pooled=np.zeros(dim, np.float32))
  if frames is None or len(frames) == 0 or np.isnan(frames[0, 0]):
    return out
  frames = np.asarray(frames, np.float32)
  if frames.ndim != 2 or frames.shape[1] != dim:
    raise ValueError(f'expert frames of shape {frames.shape}; expected [T, {dim}]')
  centres = (np.arange(len(frames)) + 0.5) * frame_width
  keep = min(len(frames), max_tokens)
  if len(frames) > max_tokens:  # (a subset of every frame is all of them, in order)
    pick = np.sort((rng or np.random.RandomState(0)).choice(len(frames), size=keep,
                                                            replace=False))
  else:
    pick = np.arange(keep)
  out['frames'][:keep] = frames[pick]
  out['mask'][:keep] = 1
  out['positions'][:keep] = np.floor(centres[pick] + FIRST_FRAME_POSITION).astype(np.int32)
  out['pooled'] = frames.max(axis=0)
  return out


def audio_batch(items: list[dict[str, np.ndarray | None]], spec: MMTSpec,
                max_tokens: dict[str, int], rng: np.random.RandomState | None,
                frame_width: float = 1.0) -> dict[str, object]:
  """The audio part of an MMT batch from items' raw expert frames.

  Args:
    items: per item, expert name -> `[T, D]` frames (None, absent or NaN when missing).
    spec: the model's experts.
    max_tokens: frames kept per expert (`config.max_tokens`).
    rng: training subset draws (see `expert_tokens`); None at evaluation.
    frame_width: seconds per frame.

  Returns:
    experts, expert_masks, expert_positions, pooled (expert -> stacked arrays) and
    availability `[B, M]`, as `MMT` takes them.
  """
  out = {k: {} for k in ('experts', 'expert_masks', 'expert_positions', 'pooled')}
  available = np.zeros((len(items), len(spec.experts)), np.float32)
  for i, e in enumerate(spec.experts):
    tokens = [expert_tokens(item.get(e.name), max_tokens[e.name], rng, e.dim, frame_width)
              for item in items]
    available[:, i] = [t['mask'].any() for t in tokens]
    for ours, key in (('experts', 'frames'), ('expert_masks', 'mask'),
                      ('expert_positions', 'positions'), ('pooled', 'pooled')):
      out[ours][e.name] = np.stack([t[key] for t in tokens])
  return {**out, 'availability': available}
