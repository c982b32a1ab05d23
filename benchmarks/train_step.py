r"""Training-step throughput against the PyTorch original: CE and MoEE, batch 128.

  python -m benchmarks.train_step [--variants=ce,moee] [--datasets=audiocaps,clotho]
      [--dtypes=float32,bfloat16] [--steps=5] [--rounds=4] [--threads=N] [--data_on_device]
      [--nobaseline]

Runs the real pmapped step of jaxretrieval.train over all local devices on random data
(AudioCaps: text 52, VGGish 10, VGGSound 32 tokens; CLOTHO: 21 / 31 / 95) and, in the same
process on the same batches, the reference's step in PyTorch (benchmarks/torch_baseline.py:
forward, max-margin loss, backward, Ranger), alternating `--steps` steps of each for
`--rounds` rounds so that a noisy neighbour hits both. The original runs float32 only (as
the reference trains), so a bfloat16 row times our bfloat16 step against the original's
float32 step (`original_dtype`). Reports the median step time of each, the ratio original /
ours (> 1: ours is faster), the step's FLOPs (XLA cost analysis) and achieved FLOP/s, and
peak host and device memory. PyTorch runs on `--threads` threads
(default: every core, as XLA:CPU does).
"""

import functools
import os

from absl import app, flags
import jax

from benchmarks import torch_baseline
from benchmarks.common import (
  alternate,
  cpu_peak_flops,
  emit,
  machine,
  matmul_flops,
  peak_host_memory_gb,
  set_threads,
  synthetic_datasets,
  table,
)
from configs import common
from jaxretrieval import input_pipeline, replicas, train
from jaxretrieval.replicas import AXIS
from jaxretrieval.step import train_step

_VARIANTS = flags.DEFINE_list('variants', ['ce', 'moee'], 'model variants')
_DATASETS = flags.DEFINE_list('datasets', ['audiocaps', 'clotho'], 'shapes of these datasets')
_DTYPES = flags.DEFINE_list('dtypes', ['float32'], 'compute dtypes (float32, bfloat16)')
_STEPS = flags.DEFINE_integer('steps', 5, 'steps per timed round')
_ROUNDS = flags.DEFINE_integer('rounds', 4, 'timed rounds (ours and the baseline alternate)')
_THREADS = flags.DEFINE_integer('threads', os.cpu_count(), 'PyTorch threads')
_BASELINE = flags.DEFINE_bool('baseline', True, 'time the PyTorch original alongside')
_BATCH = flags.DEFINE_integer('batch', 128, 'global batch')
_ON_DEVICE = flags.DEFINE_bool('data_on_device', False, 'gather batches on the device')


def measure(dataset: str, variant: str, dtype: str) -> dict:
  config = common.experiment(dataset, variant, ('vggish', 'vggsound'))
  config.dtype, config.batch_size, config.data_on_device = dtype, _BATCH.value, _ON_DEVICE.value
  data = synthetic_datasets(config, train=4 * _BATCH.value, val=8, test=8)
  run = train.Experiment(config, None, data)
  state = replicas.replicate(run.new_state(config.optimizer.learning_rate))
  step = run.compile_train_step(config.optimizer.learning_rate)
  batches = list(run.batches(0))
  for batch in batches[:2]:  # compile (and check that a second call does not recompile)
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  box = {'state': state}

  def ours():
    s = box['state']
    for i in range(_STEPS.value):
      s, m = step(s, batches[i % len(batches)])
    box['state'] = jax.block_until_ready(s)

  contenders = {'ours': ours}
  if _BASELINE.value:
    contenders['original'] = _baseline_steps(run, data, config)
  times = alternate(contenders, _ROUNDS.value)
  seconds = times['ours']['median_s'] / _STEPS.value
  state = box['state']
  record = {'benchmark': 'train_step', 'dataset_shapes': dataset, 'variant': variant,
            'dtype': dtype, 'batch': _BATCH.value, 'data_on_device': _ON_DEVICE.value,
            'step_ms': 1000 * seconds, 'steps_per_s': 1 / seconds,
            'clips_per_s': _BATCH.value / seconds, 'torch_threads': _THREADS.value, **machine()}
  if _BASELINE.value:
    original = times['original']['median_s'] / _STEPS.value
    record.update(original_dtype='float32', original_step_ms=1000 * original,
                  ratio=original / seconds)
  flops = _step_flops(run, state, batches[0])
  if flops:
    record['gflop_per_step'] = flops / 1e9
    record['achieved_gflops'] = flops / seconds / 1e9
    record['fraction_of_matmul_peak'] = flops / seconds / _matmul_peak()
    if jax.default_backend() == 'cpu' and cpu_peak_flops():
      record['fraction_of_nominal_cpu_peak'] = flops / seconds / cpu_peak_flops()
  record['peak_host_memory_gb'] = peak_host_memory_gb()
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    record['peak_device_memory_gb'] = stats['peak_bytes_in_use'] / 1e9
  return record


def _baseline_steps(run, data, config):
  """`--steps` steps of the PyTorch original on this run's training batches (host batches
  converted once, outside the timing, as the reference's data loader prepares them)."""
  model = torch_baseline.from_spec(run.spec)
  optimizer = torch_baseline.Ranger(model.parameters(), lr=config.optimizer.learning_rate,
                                    weight_decay=config.optimizer.weight_decay)
  host = input_pipeline.train_batches(run.train, 0, config.seed, config.batch_size)
  batches = [torch_baseline.batch_from_host(b, data.words) for b in host]
  for b in batches[:2]:
    torch_baseline.train_step(model, optimizer, b, config.loss.margin)

  def original():
    for i in range(_STEPS.value):
      torch_baseline.train_step(model, optimizer, batches[i % len(batches)], config.loss.margin)

  return original


@functools.cache
def _matmul_peak() -> float:
  return matmul_flops()


def _step_flops(run, state, batch) -> float | None:
  """FLOPs of one global step (host-gathered batches), summed over devices, from XLA."""
  if run.device_data is not None:
    return None
  opt = run.optimisation(run.config.optimizer.learning_rate)
  fn = jax.pmap(lambda s, b, t: train_step(s, b, t, model=run.model,
                                           loss_config=run.config.loss,
                                           schedule=opt.schedule, update=opt.update),
                axis_name=AXIS)
  cost = fn.lower(state, batch, run.word_table).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  flops = (cost or {}).get('flops')
  return None if flops is None else float(flops) * jax.local_device_count()


def main(argv):
  del argv
  set_threads(_THREADS.value)
  rows = []
  for dataset in _DATASETS.value:
    for variant in _VARIANTS.value:
      for dtype in _DTYPES.value:
        record = measure(dataset, variant, dtype)
        emit(record)
        rows.append(record)
  print(f'float32 matmul (4096^3): {_matmul_peak() / 1e9:.0f} GFLOP/s', end='')
  if cpu_peak_flops() and jax.default_backend() == 'cpu':
    print(f'; nominal CPU peak at the listed clock: {cpu_peak_flops() / 1e9:.0f} GFLOP/s', end='')
  print()
  print(table(rows, ['dataset_shapes', 'variant', 'dtype', 'original_dtype', 'original_step_ms',
                     'step_ms', 'ratio', 'clips_per_s', 'gflop_per_step', 'achieved_gflops', 'fraction_of_matmul_peak',
                     'peak_host_memory_gb', 'peak_device_memory_gb']))


if __name__ == '__main__':
  app.run(main)
