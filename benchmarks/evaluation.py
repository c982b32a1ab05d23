r"""Full retrieval evaluation time against the size of the pool, beside the PyTorch original.

  python -m benchmarks.evaluation [--pools=1045,1000,5000,20000] [--variant=ce]
      [--dataset=clotho] [--captions=5] [--rounds=3] [--threads=N] [--baseline_max_gb=8]
      [--baseline_chunk_gb=1]

Each pool of N items with 5 captions each (CLOTHO shapes by default: VGGish 31, VGGSound
95, text 21 tokens) is evaluated exactly as `evaluate_split` does at test time: embed the
items and the N x 5 captions over all local devices, the [5N, N] similarity matrix, then
t2a and a2t ranks and metrics (similarities and ranks on device, in caption chunks). Times
are after compilation (validation runs every epoch with the same shapes, so it compiles once
per run); the first call's time is reported too.

The original (benchmarks/torch_baseline.py, same weights and data) runs the reference's
test: one eval-mode forward pass over all items and captions giving the whole matrix, then
sort-based ranks in NumPy (`original_form`: whole matrix). A pool whose matrix, mixture
weights and sort copies would exceed `--baseline_max_gb` runs the same computation chunked
(`original_form`: chunked) in blocks of at most `--baseline_chunk_gb`: the original's
towers embed the captions and items once, in chunks, then its similarity and sort-based
ranks run on blocks of captions (t2a, `[q, N]`) and of items (a2t, `[N * K, n]`). Rounds
of ours and the original alternate. Both give the same metrics (checked and printed).
"""

import os
import time

from absl import app, flags
import jax
import numpy as np
import torch

from benchmarks import torch_baseline
from benchmarks.common import alternate, emit, machine, set_threads, synthetic_split, table
from configs import common
from jaxretrieval import replicas
from jaxretrieval.data.registry import EXPERTS
from jaxretrieval.embedding import Embedder
from jaxretrieval.evaluation import eval_queries, split_metrics
from jaxretrieval.metrics import metrics_from_ranks
from jaxretrieval.models import RetrievalModel
from jaxretrieval.models.spec import model_spec
from jaxretrieval.torch_import import convert

_POOLS = flags.DEFINE_list('pools', ['1045', '1000', '5000', '20000'], 'items per pool')
_VARIANT = flags.DEFINE_enum('variant', 'ce', ['ce', 'moee'], 'model variant')
_DATASET = flags.DEFINE_enum('dataset', 'clotho', ['clotho', 'audiocaps'], 'shapes')
_CAPTIONS = flags.DEFINE_integer('captions', 5, 'captions (queries) per item')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'timed rounds (ours and the original alternate)')
_THREADS = flags.DEFINE_integer('threads', os.cpu_count(), 'PyTorch threads')
_BASELINE_MAX_GB = flags.DEFINE_float('baseline_max_gb', 8.0,
                                      "largest [Q, N] matrix + [Q, N, M] weights the "
                                      'original may allocate; beyond it, it runs chunked')
_BASELINE_CHUNK_GB = flags.DEFINE_float('baseline_chunk_gb', 1.0,
                                        'blocks of the chunked original: scores, weights and '
                                        'sort copies')


def main(argv):
  del argv
  set_threads(_THREADS.value)
  config = common.experiment(_DATASET.value, _VARIANT.value, ('vggish', 'vggsound'))
  spec = model_spec(config)
  model = RetrievalModel(spec)
  torch.manual_seed(0)
  original = torch_baseline.from_spec(spec)
  variables = replicas.replicate(convert.convert_state_dict(
      {k: v.numpy() for k, v in original.state_dict().items()}, spec))
  embedder = Embedder(model, max(1, config.eval_chunk // jax.local_device_count()))
  rng = np.random.default_rng(0)
  words = rng.standard_normal((1000, 300), np.float32)
  table_ = replicas.replicate(words)
  rows = []
  for n in map(int, _POOLS.value):
    data = synthetic_split(config, spec, n, rng, captions=_CAPTIONS.value)
    parts = {}

    query_rows, masks = eval_queries(data, _CAPTIONS.value)
    results = {}

    def ours():
      t0 = time.perf_counter()
      audio = embedder.items(variables, data)
      t1 = time.perf_counter()
      text, weights = embedder.captions(variables, data, query_rows, table_)
      t2 = time.perf_counter()
      results['ours'] = split_metrics(text, weights, audio, data.availability, masks,
                                      embedder.names)
      t3 = time.perf_counter()
      parts.update(embed_items_s=t1 - t0, embed_captions_s=t2 - t1,
                   similarity_and_ranks_s=t3 - t2)

    start = time.perf_counter()
    ours()
    first = time.perf_counter() - start
    contenders = {'ours': ours}
    q = n * _CAPTIONS.value
    row_bytes = 4 * (len(spec.experts) + 3)  # sims, weights, sort copies per matrix entry
    whole = q * n * row_bytes <= _BASELINE_MAX_GB.value * 1e9
    contenders['original'] = _original(
        original, data, words, query_rows, masks, results,
        None if whole else _BASELINE_CHUNK_GB.value * 1e9 / row_bytes)
    times = alternate(contenders, _ROUNDS.value)
    record = {'benchmark': 'evaluation', 'dataset_shapes': _DATASET.value,
              'variant': _VARIANT.value, 'items': n, 'queries': q,
              'total_s': times['ours']['median_s'], 'first_call_s': first, **parts,
              'original_s': times['original']['median_s'],
              'original_form': 'whole matrix' if whole else 'chunked',
              'ratio': times['original']['median_s'] / times['ours']['median_s'],
              'same_metrics': _same(results['ours'], results['original']),
              'torch_threads': _THREADS.value, **machine()}
    emit(record)
    rows.append(record)
  print(table(rows, ['items', 'queries', 'original_form', 'original_s', 'total_s', 'ratio',
                     'embed_items_s', 'embed_captions_s', 'similarity_and_ranks_s',
                     'first_call_s', 'same_metrics']))


def _original(model, data, words, query_rows, masks, results, max_entries):
  """The reference's test evaluation of `data` (inputs converted once, outside the timing):
  the whole matrix, or with `max_entries` blocks of at most that many scores (and tower
  chunks of as many rows as a caption block has)."""
  ref = {e: EXPERTS[e].reference_name for e in data.experts}
  experts = {ref[e]: torch.from_numpy(x) for e, x in data.experts.items()}
  ind = torch.from_numpy(np.ascontiguousarray(data.availability, np.float32))
  text = torch.from_numpy(words[data.caption_ids[query_rows]])

  def whole():
    sims = torch_baseline.similarities(model, experts, ind, text)
    return torch_baseline.retrieval_ranks(sims, masks)

  def chunked():
    n, q = masks.shape[0], masks.size
    query_chunk, item_chunk = max(1, int(max_entries // n)), max(1, int(max_entries // q))
    (texts, w), audio = torch_baseline.embeddings(model, experts, ind, text, query_chunk)
    return torch_baseline.chunked_retrieval_ranks(
        torch_baseline.block_scores(texts, w, audio, ind), masks, query_chunk, item_chunk)

  def run():
    t2a, a2t = whole() if max_entries is None else chunked()
    results['original'] = {'t2a': metrics_from_ranks(t2a), 'a2t': metrics_from_ranks(a2t)}

  return run


def _same(ours: dict, original: dict) -> bool:
  """Whether both evaluations give the same metrics (to 0.01 points: float32 rounding may
  reorder a near-tie)."""
  return all(abs(ours[d][m] - original[d][m]) < 1e-2 for d in ('t2a', 'a2t')
             for m in ('R1', 'R5', 'R10', 'MedR'))


if __name__ == '__main__':
  app.run(main)
