"""Retrieval evaluation: embed a split's items and captions, score, rank (REFERENCE §5).

Items and captions are embedded separately in fixed-size chunks over all local devices
(BatchNorm uses running statistics, so chunking changes nothing), then every caption is
scored against every item with the mixture-weighted similarity and ranked on device, in
chunks of captions.
"""

import functools
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxretrieval.input_pipeline import SplitArrays, eval_queries
from jaxretrieval.metrics import metrics_from_scores
from jaxretrieval.models import RetrievalModel, mixture_similarity

METRIC_COLUMNS = ('R1', 'R5', 'R10', 'R50', 'MedR', 'MeanR', 'geometric_mean_R1-R5-R10')


class Embedder:
  """Pmapped audio and text towers in eval mode."""

  def __init__(self, model: RetrievalModel, chunk: int):
    self.chunk = chunk
    self.devices = jax.local_device_count()
    self.names = tuple(model.spec.expert_names)  # the order of weights/availability columns

    def audio(variables, batch):
      return model.apply(variables, batch['experts'], batch['availability'], False,
                         lengths=batch['expert_lengths'], method=RetrievalModel.encode_audio)

    def text(variables, batch, table):
      return model.apply(variables, table[batch['text_ids']], False,
                         lengths=batch['text_lengths'], method=RetrievalModel.encode_text)

    self._audio = jax.pmap(audio, axis_name='batch')
    self._text = jax.pmap(text, axis_name='batch')  # the word table is replicated too

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


@functools.partial(jax.jit, static_argnames='names')
def _similarity_rows(text, weights, audio, availability, rows, names):
  """Similarities `[C, N]` of the captions `rows` `[C]` against every item."""
  return mixture_similarity({e: t[rows] for e, t in text.items()}, weights[rows], audio,
                            availability, names)


@functools.partial(jax.jit, static_argnames=('k', 'names'))
def _ground_truth_scores(text, weights, audio, availability, k: int, names):
  """S[r, r // k] for every caption row r: the mixture similarity of each caption with its
  own item, as a row-wise product (equal to the matrix entries up to rounding)."""
  own = lambda x: jnp.repeat(x, k, axis=0)
  avail = own(availability.astype(jnp.float32))  # [Q, M]
  w = weights.astype(jnp.float32) * avail
  dots = jnp.stack([jnp.sum(t.astype(jnp.float32) * own(audio[e]).astype(jnp.float32), axis=-1)
                    for e, t in ((e, text[e]) for e in names)], axis=-1)  # [Q, M]
  return jnp.sum(w * dots, axis=-1) / jnp.sum(w, axis=-1)


def split_metrics(text: dict, weights: np.ndarray, audio: dict, availability: np.ndarray,
                  query_masks: np.ndarray, names: tuple[str, ...]) -> dict:
  """t2a and a2t metrics of embedded captions (item-major, `[N * K, ...]`) and items `[N, ...]`,
  scored on device in query chunks, each chunk once; `names`: the experts in the order of
  the `weights` and `availability` columns."""
  names = tuple(names)
  text, weights, audio, availability = jax.device_put((text, weights, audio, availability))
  targets = _ground_truth_scores(text, weights, audio, availability, k=query_masks.shape[1],
                                 names=names)
  return metrics_from_scores(
      lambda rows: _similarity_rows(text, weights, audio, availability, rows, names=names),
      np.asarray(targets), len(availability), query_masks)


def evaluate_split(embedder: Embedder, variables, data: SplitArrays, num_captions: int,
                   table) -> dict:
  """t2a and a2t metrics of a split with `num_captions` independent queries per item."""
  start = time.time()
  audio = embedder.items(variables, data)
  rows, masks = eval_queries(data, num_captions)
  text, weights = embedder.captions(variables, data, rows, table)
  metrics = split_metrics(text, weights, audio, data.availability, masks, embedder.names)
  metrics['seconds'] = time.time() - start
  metrics['num_items'] = len(data)
  return metrics


def markdown_table(rows: list[tuple[str, dict]], title: str = 'experiment') -> str:
  """A paper-style table: one row per entry, t2a then a2t columns."""
  names = ['R@1', 'R@5', 'R@10', 'R@50', 'MdR', 'MnR', 'Geom']
  header = f'| {title} | ' + ' | '.join(f't2a {c}' for c in names) + ' | ' + ' | '.join(
      f'a2t {c}' for c in names) + ' |'
  lines = [header, '|' + '---|' * (1 + 2 * len(names))]
  for name, cells in rows:
    lines.append(f'| {name} | ' + ' | '.join(cells[d][c] for d in ('t2a', 'a2t')
                                             for c in METRIC_COLUMNS) + ' |')
  return '\n'.join(lines) + '\n'


def format_metrics(metrics: dict) -> dict:
  """Metric values as table cells (one decimal, like the paper)."""
  return {d: {c: f'{metrics[d][c]:.1f}' for c in METRIC_COLUMNS} for d in ('t2a', 'a2t')}


def write_results(workdir: pathlib.Path, results: dict, name: str = 'results') -> None:
  """`<name>.json` (everything) and `<name>.md` (the test table) in the workdir."""
  workdir = pathlib.Path(workdir)
  (workdir / f'{name}.json').write_text(json.dumps(results, indent=2, default=float))
  label = f"{results['variant']} — {'+'.join(results['experts'])} on {results['dataset']}"
  text = markdown_table([(label, format_metrics(results['test']))])
  text += (f"\nTest split `{results['test_split']}`: {results['test']['num_items']} items, "
           f"{results['test']['t2a']['num_queries']} text queries. Best epoch "
           f"{results.get('best_epoch')} of {results.get('epochs_trained')}; "
           f"{results['num_parameters']:,} parameters.\n")
  (workdir / f'{name}.md').write_text(text)
