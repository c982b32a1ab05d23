r"""MMT: the pmapped train step and a CLOTHO-sized evaluation, with CE measured alongside.

  python -m benchmarks.mmt [--sizes=tiny,full] [--batches=32,128] [--steps=3] [--rounds=3]
      [--eval_items=1045] [--eval_sizes=tiny,full] [--nobaseline]

Random data at CLOTHO shapes (VGGish 31 and VGGSound 95 frames per item, queries of 21 BERT
tokens, 5 captions per test item) through the real `train.Experiment`: its step (`mmt_batches`,
dropout, the global-batch max-margin loss, Adam) and its evaluation (`MMTEmbedder`: every item
once, every distinct query once). `full` is the original architecture (BERT-base text tower,
4-layer audio transformer: 127M parameters with these experts); `tiny` the test suite's
(1-layer, 32-wide). The baseline is CE (VGGish + VGGSound) at the same batch and split size,
timed in alternation with MMT so that a noisy neighbour slows both alike. The evaluation is
timed once, after one untimed compile pass, with its audio tower, text tower and scoring parts.
"""

import itertools
import time

from absl import app, flags
import jax
import numpy as np

from benchmarks.common import alternate, emit, machine, peak_host_memory_gb, synthetic_datasets
from configs import common, mmt_clotho
from jaxretrieval import input_pipeline, replicas, train
from jaxretrieval.data import splits
from jaxretrieval.data.splits import SplitArrays
from jaxretrieval.evaluation import eval_queries, split_metrics
from jaxretrieval.models import mmt

_SIZES = flags.DEFINE_list('sizes', ['tiny', 'full'], 'model sizes for the train step')
_BATCHES = flags.DEFINE_list('batches', ['32', '128'], 'global batch sizes')
_STEPS = flags.DEFINE_integer('steps', 3, 'steps per timed round')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'timed rounds (MMT and CE alternate)')
_EVAL_ITEMS = flags.DEFINE_integer('eval_items', 1045, 'test items (CLOTHO: 1,045)')
_EVAL_SIZES = flags.DEFINE_list('eval_sizes', ['tiny', 'full'], 'model sizes to evaluate')
_BASELINE = flags.DEFINE_bool('baseline', True, 'time CE alongside')

FRAMES = {'vggish': (31, 128), 'vggsound': (95, 512)}  # CLOTHO: frames per item, width
TINY_MODEL = dict(same_dim=32, audio_layers=1, audio_heads=2, audio_intermediate=64)
TINY_TEXT = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def mmt_config(size: str, batch: int):
  c = mmt_clotho.get_config()
  c.batch_size, c.model.pretrained_text = batch, False
  if size == 'tiny':
    c.model.update(TINY_MODEL)
    c.model.text_bert.update(TINY_TEXT)
  return c


def mmt_split(config, name: str, n: int, captions: int, rng) -> SplitArrays:
  """A random split as `splits.load_split` makes it for MMT: every frame of every
  item, BERT token ids ([CLS] = 101, [SEP] = 102, 0-padded) of random lengths."""
  length = config.max_tokens.text
  experts = {e: splits.object_array(
      [rng.standard_normal((t, d), np.float32) for _ in range(n)]) for e, (t, d) in FRAMES.items()}
  lengths = rng.integers(8, length + 1, n * captions)
  ids = rng.integers(1000, config.model.text_bert.vocab_size, (n * captions, length))
  ids[:, 0] = 101
  ids[np.arange(len(ids)), lengths - 1] = 102
  ids[np.arange(length)[None] >= lengths[:, None]] = 0
  return SplitArrays(name, [f'{name}{i}' for i in range(n)], [''] * n, experts,
                   {e: np.full(n, t, np.int32) for e, (t, _) in FRAMES.items()},
                   np.ones((n, len(FRAMES)), np.float32), ids.astype(np.int32),
                   lengths.astype(np.int32), np.arange(n) * captions, np.full(n, captions),
                   [''] * (n * captions))


def mmt_data(config, train_items: int, test_items: int, seed: int = 0) -> train.ExperimentData:
  rng = np.random.default_rng(seed)
  test = mmt_split(config, 'test', test_items, 5, rng)
  return train.ExperimentData(mmt_split(config, 'train', train_items, 1, rng), test, test, None,
                        {e: (d, 'vlad') for e, (_, d) in FRAMES.items()})


def ce_run(batch: int, test_items: int) -> train.Experiment:
  config = common.experiment('clotho', 'ce', ('vggish', 'vggsound'))
  config.batch_size = batch
  return train.Experiment(config, None, synthetic_datasets(config, train=4 * batch, val=8,
                                                    test=test_items))


def stepper(run: train.Experiment):
  """A blocking `steps` -> None closure over the run's compiled step, compiled first."""
  lr = run.config.optimizer.learning_rate
  box = {'state': replicas.replicate(run.new_state(lr, run.init_variables()))}
  step = run.compile_train_step(lr)
  batches = list(itertools.islice(run.batches(0), 4))
  for b in batches[:2]:
    box['state'], metrics = step(box['state'], b)
  jax.block_until_ready(metrics)

  def steps():
    for i in range(_STEPS.value):
      box['state'], _ = step(box['state'], batches[i % len(batches)])
    jax.block_until_ready(box['state'])

  return steps


def measure_step(size: str, batch: int) -> dict:
  config = mmt_config(size, batch)
  run = train.Experiment(config, None, mmt_data(config, 4 * batch, 8))
  contenders = {'mmt': stepper(run)}
  if _BASELINE.value:
    contenders['ce'] = stepper(ce_run(batch, 8))
  times = alternate(contenders, _ROUNDS.value)
  step_s = {k: v['median_s'] / _STEPS.value for k, v in times.items()}
  # Host time to build one MMT batch (tokens, frame subsets, pooling) on this host.
  start = time.perf_counter()
  list(itertools.islice(input_pipeline.mmt_batches(run.train, 1, 0, batch, run.spec, config), 4))
  batch_ms = 1000 * (time.perf_counter() - start) / 4
  record = {'benchmark': 'mmt_train_step', 'size': size, 'batch': batch,
            'parameters': mmt.num_parameters(run.spec), 'step_ms': 1000 * step_s['mmt'],
            'clips_per_s': batch / step_s['mmt'], 'host_batch_ms': batch_ms,
            'peak_host_gb': peak_host_memory_gb(), **machine()}
  if 'ce' in step_s:
    record.update(ce_step_ms=1000 * step_s['ce'], mmt_over_ce=step_s['mmt'] / step_s['ce'])
  return record


def timed_evaluation(run: train.Experiment, variables) -> dict:
  """Seconds of the audio tower, the text tower and the scoring of the test split."""
  data, embedder = run.test, run.embedder
  rows, masks = eval_queries(data, run.config.num_test_captions)
  parts = {}
  start = time.perf_counter()
  audio = jax.block_until_ready(embedder.items(variables, data))
  parts['audio_s'] = time.perf_counter() - start
  start = time.perf_counter()
  text, weights = jax.block_until_ready(embedder.captions(variables, data, rows,
                                                          run.word_table))
  parts['text_s'] = time.perf_counter() - start
  start = time.perf_counter()
  availability = (np.asarray(mmt.scored_availability(run.spec, data.availability))
                  if run.mmt else data.availability)
  metrics = split_metrics(text, weights, audio, availability, masks, run.spec.expert_names)
  parts['scoring_s'] = time.perf_counter() - start
  parts['total_s'] = parts['audio_s'] + parts['text_s'] + parts['scoring_s']
  parts['queries'] = metrics['t2a']['num_queries']
  return parts


def measure_eval(size: str) -> dict:
  n = _EVAL_ITEMS.value
  config = mmt_config(size, 32)
  run = train.Experiment(config, None, mmt_data(config, 64, n))
  variables = replicas.replicate(run.init_variables())
  timed_evaluation(run, variables)  # compiles
  ours = timed_evaluation(run, variables)
  record = {'benchmark': 'mmt_eval', 'size': size, 'items': n, 'captions_per_item': 5,
            **{f'mmt_{k}': v for k, v in ours.items()},
            'distinct_queries': len(np.unique(run.test.caption_ids, axis=0)),
            'peak_host_gb': peak_host_memory_gb(), **machine()}
  if _BASELINE.value:
    ce = ce_run(32, n)
    ce_variables = replicas.replicate(ce.init_variables())
    timed_evaluation(ce, ce_variables)
    record.update({f'ce_{k}': v for k, v in timed_evaluation(ce, ce_variables).items()})
  return record


def main(argv):
  del argv
  rows = []
  for size in _SIZES.value:
    for batch in map(int, _BATCHES.value):
      rows.append(measure_step(size, batch))
      emit(rows[-1])
  for size in _EVAL_SIZES.value:
    rows.append(measure_eval(size))
    emit(rows[-1])
  print('\n| train step | batch | MMT ms | CE ms | MMT / CE | clips/s | host batch ms |')
  print('|---|---|---|---|---|---|---|')
  for r in (r for r in rows if r['benchmark'] == 'mmt_train_step'):
    print(f"| {r['size']} ({r['parameters']:,} params) | {r['batch']} | {r['step_ms']:.0f} | "
          f"{r.get('ce_step_ms', float('nan')):.0f} | {r.get('mmt_over_ce', float('nan')):.1f} | "
          f"{r['clips_per_s']:.1f} | {r['host_batch_ms']:.1f} |")
  print('\n| evaluation | items | queries (distinct) | MMT audio s | MMT text s | MMT scoring s '
        '| MMT total s | CE total s |')
  print('|---|---|---|---|---|---|---|---|')
  for r in (r for r in rows if r['benchmark'] == 'mmt_eval'):
    print(f"| {r['size']} | {r['items']} | {r['mmt_queries']} ({r['distinct_queries']}) | "
          f"{r['mmt_audio_s']:.2f} | {r['mmt_text_s']:.2f} | {r['mmt_scoring_s']:.2f} | "
          f"{r['mmt_total_s']:.2f} | {r.get('ce_total_s', float('nan')):.2f} |")


if __name__ == '__main__':
  app.run(main)
