"""BERT encoder in Flax with PyTorch semantics, for MMT's text and audio transformers.

Both of MMT's transformers are this encoder (Gabeur et al. 2020, the original's `mmt/model/bert.py`
and Hugging Face's `BertModel`): post-LayerNorm layers, LayerNorm eps 1e-12 with the exact
(two-pass) variance, exact erf GELU, and the additive attention mask (1 - mask) * -10000 of the
original. They differ only in their embeddings:

- the text tower (`vocab_size` set) embeds token ids: word + position + token type;
- the audio tower (`vocab_size=None`) has no word embeddings: the caller passes `features`
  (already projected expert tokens) and they are added to position + token type embeddings.

Submodules are named after the Hugging Face state_dict (`embeddings/word_embeddings`,
`layer_3/attention_query`, ...); `checkpoints/bert_convert.py` holds the mapping. The pooler
(tanh(dense(first token))) is built so that the parameter count and imported checkpoints match
the original, although MMT reads the last layer's first row, not the pooler.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxretrieval.models.layers import Array, Dtype


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Hyper-parameters of a BERT encoder (names as Hugging Face's `BertConfig`, shortened)."""
  vocab_size: int | None = 28996  # None: no word embeddings; `features` are added instead
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_positions: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  hidden_dropout: float = 0.1
  attention_dropout: float = 0.1
  initializer_range: float = 0.02

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f'BERT hidden_size {self.hidden_size} is not a multiple of num_heads '
                       f'{self.num_heads}')


# Hugging Face `bert-base-cased` (its config.json), the text tower of MMT.
BERT_BASE_CASED = BertConfig()


def _dense(config: BertConfig, features: int, dtype: Dtype, name: str) -> nn.Dense:
  """A Linear layer initialised as BERT's: N(0, initializer_range) weights, zero bias."""
  return nn.Dense(features, dtype=dtype, name=name,
                  kernel_init=nn.initializers.normal(config.initializer_range))


def _layer_norm(config: BertConfig, name: str) -> nn.LayerNorm:
  """torch.nn.LayerNorm: biased variance computed as E[(x - mean)^2], in float32."""
  return nn.LayerNorm(epsilon=config.layer_norm_eps, use_fast_variance=False,
                      dtype=jnp.float32, name=name)


def gelu(x: Array) -> Array:
  """The exact GELU of BERT: x * Phi(x) = x / 2 * (1 + erf(x / sqrt(2)))."""
  return jax.nn.gelu(x, approximate=False)


class BertEmbeddings(nn.Module):
  """LayerNorm(word or features + position + token type embeddings), then dropout."""
  config: BertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: Array | None, token_type_ids: Array, position_ids: Array,
               features: Array | None, train: bool) -> Array:
    c = self.config
    embed = lambda n, name: nn.Embed(n, c.hidden_size, name=name,
                                     embedding_init=nn.initializers.normal(c.initializer_range))
    x = embed(c.max_positions, 'position_embeddings')(position_ids)
    x = x + embed(c.type_vocab_size, 'token_type_embeddings')(token_type_ids)
    if c.vocab_size is None:
      x = x + features.astype(jnp.float32)
    else:
      x = x + embed(c.vocab_size, 'word_embeddings')(input_ids)
    x = _layer_norm(c, 'LayerNorm')(x)
    return nn.Dropout(c.hidden_dropout, deterministic=not train)(x).astype(self.dtype)


class BertLayer(nn.Module):
  """One post-LN transformer layer: self-attention, then the GELU feed-forward block."""
  config: BertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask_bias: Array, train: bool) -> Array:
    c = self.config
    heads, head_dim = c.num_heads, c.hidden_size // c.num_heads

    def split_heads(y):  # [B, L, H] -> [B, heads, L, head_dim]
      return y.reshape(y.shape[:2] + (heads, head_dim)).transpose(0, 2, 1, 3)

    q = split_heads(_dense(c, c.hidden_size, self.dtype, 'attention_query')(x))
    k = split_heads(_dense(c, c.hidden_size, self.dtype, 'attention_key')(x))
    v = split_heads(_dense(c, c.hidden_size, self.dtype, 'attention_value')(x))
    scores = jnp.einsum('bhqd,bhkd->bhqk', q, k).astype(jnp.float32) / math.sqrt(head_dim)
    probs = jax.nn.softmax(scores + mask_bias, axis=-1)
    # Dropout on the attention probabilities drops whole tokens, as in the original.
    probs = nn.Dropout(c.attention_dropout, deterministic=not train)(probs)
    context = jnp.einsum('bhqk,bhkd->bhqd', probs.astype(self.dtype), v)
    context = context.transpose(0, 2, 1, 3).reshape(x.shape[:2] + (c.hidden_size,))
    h = _dense(c, c.hidden_size, self.dtype, 'attention_output')(context)
    h = nn.Dropout(c.hidden_dropout, deterministic=not train)(h)
    x = _layer_norm(c, 'attention_LayerNorm')(h + x).astype(self.dtype)
    h = gelu(_dense(c, c.intermediate_size, self.dtype, 'intermediate')(x))
    h = _dense(c, c.hidden_size, self.dtype, 'output')(h)
    h = nn.Dropout(c.hidden_dropout, deterministic=not train)(h)
    return _layer_norm(c, 'output_LayerNorm')(h + x).astype(self.dtype)


class BertModel(nn.Module):
  """BERT encoder: returns (last layer `[B, L, H]`, pooler output `[B, H]`).

  Args of `__call__`:
    input_ids: `[B, L]` token ids (text tower) or None (audio tower).
    attention_mask: `[B, L]`, 1 for tokens that may be attended to.
    token_type_ids, position_ids: `[B, L]` ints.
    features: `[B, L, H]` token features (audio tower only).
    train: dropout on.
  """
  config: BertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids: Array | None, attention_mask: Array, token_type_ids: Array,
               position_ids: Array, features: Array | None = None,
               train: bool = False) -> tuple[Array, Array]:
    c = self.config
    if (c.vocab_size is None) != (input_ids is None) or (c.vocab_size is None) != (
        features is not None):
      raise ValueError('a BERT with a vocabulary takes input_ids, one without (vocab_size=None) '
                       'takes features')
    x = BertEmbeddings(c, self.dtype, name='embeddings')(input_ids, token_type_ids,
                                                         position_ids, features, train)
    # [B, 1, 1, L]: 0 where attended, -10000 where masked (the original's constant, not -inf).
    mask_bias = (1.0 - attention_mask.astype(jnp.float32))[:, None, None, :] * -10000.0
    for i in range(c.num_layers):
      x = BertLayer(c, self.dtype, name=f'layer_{i}')(x, mask_bias, train)
    pooled = jnp.tanh(_dense(c, c.hidden_size, self.dtype, 'pooler')(x[:, 0]))
    return x, pooled
