"""The towers in eval mode over all local devices: a split's items and captions embedded
in fixed-size chunks (BatchNorm uses running statistics, so chunking changes nothing)."""

import functools

import jax
import numpy as np

from jaxretrieval import input_pipeline
from jaxretrieval.data.splits import SplitArrays
from jaxretrieval.models import RetrievalModel, mmt
from jaxretrieval.replicas import AXIS


class Embedder:
  """Pmapped audio and text towers in eval mode."""

  def __init__(self, model: RetrievalModel, chunk: int):
    self.chunk = chunk
    self.devices = jax.local_device_count()
    self.names = tuple(model.spec.expert_names)  # the order of weights/availability columns
    self._audio, self._text = _towers(model)

  def _chunks(self, fn, arrays: dict, n: int):
    """fn over `arrays` (leading dim n) in equal rounds of at most devices x chunk rows; the
    per-device rows are rounded up to a multiple of 8, so little padding is computed and a
    split of a given size compiles once."""
    rounds = max(1, -(-n // (self.devices * self.chunk)))
    chunk = -(-n // (rounds * self.devices * 8)) * 8
    per_round = self.devices * chunk
    outputs = []
    for start in range(0, n, per_round):
      index = np.arange(start, start + per_round)
      index = np.where(index < n, index, start)  # pad with a real row; dropped below
      part = jax.tree.map(lambda a: a[index].reshape((self.devices, chunk) + a.shape[1:]),
                          arrays)
      outputs.append(jax.tree.map(lambda x: np.asarray(x).reshape((per_round,) + x.shape[2:]),
                                  fn(part)))
    return jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *outputs)

  def items(self, variables, data: SplitArrays):
    arrays = {'experts': data.experts, 'availability': data.availability,
              'expert_lengths': data.lengths}
    return self._chunks(lambda b: self._audio(variables, b), arrays, len(data))

  def captions(self, variables, data: SplitArrays, rows: np.ndarray, table):
    """Text embeddings and mixture weights of the caption `rows`. Each distinct caption
    (token ids and length) goes through the text tower once: absent captions repeat their
    item's first caption, and the same sentence can describe several items."""
    keys = np.concatenate([data.caption_ids[rows], data.caption_lengths[rows, None]], axis=1)
    distinct, inverse = np.unique(keys, axis=0, return_inverse=True)
    arrays = {'text_ids': distinct[:, :-1], 'text_lengths': distinct[:, -1]}
    out = self._chunks(lambda b: self._text(variables, b, table), arrays, len(distinct))
    return jax.tree.map(lambda x: x[inverse.reshape(-1)], out)


class MMTEmbedder(Embedder):
  """MMT's towers in eval mode over all local devices: every item embedded once from the
  original's evaluation-time frame tokens (built once per split), every distinct query once
  (per-caption text caching: the BERT text tower is most of an evaluation's cost)."""

  def __init__(self, model: mmt.MMT, chunk: int, config):  # pylint: disable=super-init-not-called
    self.chunk, self.devices = chunk, jax.local_device_count()
    self.spec, self.config = model.spec, config
    self._audio, self._text = _mmt_towers(model)
    self._audio_inputs = {}  # split name -> its items' audio inputs (fixed at evaluation)

  def audio_inputs(self, data: SplitArrays) -> dict:
    if data.name not in self._audio_inputs:
      c = self.config
      self._audio_inputs[data.name] = input_pipeline.mmt_audio(
          data, np.arange(len(data)), self.spec, c.max_tokens, None, c.model.frame_width)
    return self._audio_inputs[data.name]

  def items(self, variables, data: SplitArrays):
    return self._chunks(lambda b: self._audio(variables, b), self.audio_inputs(data), len(data))

  def captions(self, variables, data: SplitArrays, rows: np.ndarray, table=None):
    del table  # MMT's captions are token ids
    tokens = data.caption_ids[rows]
    unique, first, inverse = np.unique(tokens, axis=0, return_index=True, return_inverse=True)
    arrays = {'tokens': unique, 'token_mask': input_pipeline.token_mask(
        data.caption_lengths[rows][first], tokens.shape[1])}
    text, weights = self._chunks(lambda b: self._text(variables, b), arrays, len(unique))
    return jax.tree.map(lambda x: x[inverse.reshape(-1)], (text, weights))


# The pmapped towers of a model, shared by every Embedder of an equal model in this process
# (a resume, a seed sweep, the tests): each program is traced and compiled once.
@functools.lru_cache(maxsize=8)
def _towers(model: RetrievalModel):
  def audio(variables, batch):
    return model.apply(variables, batch['experts'], batch['availability'], False,
                       lengths=batch['expert_lengths'], method=RetrievalModel.encode_audio)

  def text(variables, batch, table):
    return model.apply(variables, table[batch['text_ids']], False,
                       lengths=batch['text_lengths'], method=RetrievalModel.encode_text)

  # The word table is replicated too.
  return jax.pmap(audio, axis_name=AXIS), jax.pmap(text, axis_name=AXIS)


@functools.lru_cache(maxsize=8)
def _mmt_towers(model: mmt.MMT):
  def audio(variables, batch):
    return model.apply(variables, batch, False, method=mmt.MMT.encode_audio)

  def text(variables, batch):
    return model.apply(variables, batch['tokens'], batch['token_mask'], False,
                       method=mmt.MMT.encode_text)

  return jax.pmap(audio, axis_name=AXIS), jax.pmap(text, axis_name=AXIS)
