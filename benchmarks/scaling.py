r"""Data-parallel scaling of the training step over 1, 2, 4, 8 devices.

  python -m benchmarks.scaling [--devices=1,2,4,8] [--variant=ce] [--dataset=audiocaps]
      [--steps=10] [--platform=cpu]

Each device count runs in its own process (on CPU the devices are forced with
XLA_FLAGS=--xla_force_host_platform_device_count=N, so they share the same cores: the
numbers measure the overhead of splitting the batch and all-gathering embeddings, not a
speed-up). Every process trains the same global batches of 128 from the same
initialisation; the parameters after the timed steps are compared with the 1-device run
(max |difference|, relative to the largest parameter). On an accelerator host, pass
--platform=gpu to use real devices (up to those present).

Before them, one more process times the PyTorch original's step (benchmarks/torch_baseline.py,
float32, on the CPU with every core as PyTorch threads) on the same global batches, and each
row gives the ratio original / ours (> 1: ours is faster); `--nobaseline` leaves it out.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app, flags
import numpy as np

from benchmarks.common import emit, table

_DEVICES = flags.DEFINE_list('devices', ['1', '2', '4', '8'], 'device counts')
_VARIANT = flags.DEFINE_enum('variant', 'ce', ['ce', 'moee'], 'model variant')
_DATASET = flags.DEFINE_enum('dataset', 'audiocaps', ['audiocaps', 'clotho'], 'shapes')
_STEPS = flags.DEFINE_integer('steps', 10, 'timed steps')
_PLATFORM = flags.DEFINE_enum('platform', 'cpu', ['cpu', 'gpu'], 'device platform')
_BASELINE = flags.DEFINE_bool('baseline', True, "time the PyTorch original's step too")
_WORKER = flags.DEFINE_string('worker_out', '', 'internal: run one device count, write here')
_WORKER_ORIGINAL = flags.DEFINE_bool('worker_original', False,
                                     "internal: the worker times the original's step")


def _experiment():
  """The config and synthetic data every process trains on: `--steps` global batches."""
  from benchmarks.common import synthetic_datasets
  from configs import common

  config = common.experiment(_DATASET.value, _VARIANT.value, ('vggish', 'vggsound'))
  return config, synthetic_datasets(config, train=config.batch_size * _STEPS.value, val=8, test=8)


def worker(out: pathlib.Path) -> None:
  """One device count: compile, time `--steps` steps, save the final parameters."""
  import jax

  from benchmarks.common import machine
  from jaxretrieval import replicas, train

  config, data = _experiment()
  run = train.Experiment(config, None, data)
  state = replicas.replicate(run.new_state(config.optimizer.learning_rate))
  step = run.compile_train_step(config.optimizer.learning_rate)
  batches = list(run.batches(0))
  start = time.perf_counter()
  state, metrics = step(state, batches[0])
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for b in batches[1:]:
    state, metrics = step(state, b)
  jax.block_until_ready((state, metrics))
  seconds = (time.perf_counter() - start) / (len(batches) - 1)
  params = jax.tree.leaves(jax.device_get(jax.tree.map(lambda x: x[0], state.params)))
  np.savez(out.with_suffix('.npz'), *params)
  out.write_text(json.dumps({'step_ms': 1000 * seconds, 'first_step_s': compile_s,
                             'loss': float(metrics.loss.compute()[0]), **machine()}))


def original_worker(out: pathlib.Path) -> None:
  """The original's step on the same global batches: the first step, then `--steps` - 1
  timed."""
  from benchmarks import torch_baseline
  from benchmarks.common import set_threads
  from jaxretrieval import input_pipeline
  from jaxretrieval.models.spec import model_spec

  set_threads(os.cpu_count())
  config, data = _experiment()
  model = torch_baseline.from_spec(model_spec(config))
  optimizer = torch_baseline.Ranger(model.parameters(), lr=config.optimizer.learning_rate,
                                    weight_decay=config.optimizer.weight_decay)
  batches = [torch_baseline.batch_from_host(b, data.words) for b in
             input_pipeline.train_batches(data.train, 0, config.seed, config.batch_size)]
  start = time.perf_counter()
  torch_baseline.train_step(model, optimizer, batches[0], config.loss.margin)
  first = time.perf_counter() - start
  start = time.perf_counter()
  for b in batches[1:]:
    loss = torch_baseline.train_step(model, optimizer, b, config.loss.margin)
  seconds = (time.perf_counter() - start) / (len(batches) - 1)
  out.write_text(json.dumps({'original_step_ms': 1000 * seconds, 'original_first_step_s': first,
                             'original_loss': loss, 'torch_threads': os.cpu_count()}))


def main(argv):
  del argv
  if _WORKER.value:
    (original_worker if _WORKER_ORIGINAL.value else worker)(pathlib.Path(_WORKER.value))
    return
  rows, reference, original = [], None, {}
  with tempfile.TemporaryDirectory() as tmp:
    if _BASELINE.value:
      out = pathlib.Path(tmp) / 'original.json'
      subprocess.run([sys.executable, '-m', 'benchmarks.scaling', f'--worker_out={out}',
                      '--worker_original', f'--variant={_VARIANT.value}',
                      f'--dataset={_DATASET.value}', f'--steps={_STEPS.value}'], check=True,
                     stderr=subprocess.DEVNULL)
      original = json.loads(out.read_text())
    for n in map(int, _DEVICES.value):
      out = pathlib.Path(tmp) / f'devices{n}.json'
      env = dict(os.environ)
      if _PLATFORM.value == 'cpu':
        env.update(JAX_PLATFORMS='cpu',
                   XLA_FLAGS=f'{env.get("XLA_FLAGS", "")} '
                             f'--xla_force_host_platform_device_count={n}'.strip())
      else:
        env['CUDA_VISIBLE_DEVICES'] = ','.join(map(str, range(n)))
      subprocess.run([sys.executable, '-m', 'benchmarks.scaling', f'--worker_out={out}',
                      f'--variant={_VARIANT.value}', f'--dataset={_DATASET.value}',
                      f'--steps={_STEPS.value}'], env=env, check=True,
                     stderr=subprocess.DEVNULL)
      record = json.loads(out.read_text())
      params = list(np.load(out.with_suffix('.npz')).values())
      if reference is None:
        reference = params
      scale = max(float(np.abs(p).max()) for p in reference)
      diff = max(float(np.abs(a - b).max()) for a, b in zip(params, reference))
      record.update(benchmark='scaling', dataset_shapes=_DATASET.value, variant=_VARIANT.value,
                    requested_devices=n, clips_per_s=128 / (record['step_ms'] / 1000),
                    max_param_diff_vs_1=diff, relative_param_diff=diff / scale)
      if rows:
        record['step_time_vs_1'] = record['step_ms'] / rows[0]['step_ms']
      if original:
        record.update(original, ratio=original['original_step_ms'] / record['step_ms'])
      emit(record)
      rows.append(record)
  print(table(rows, ['requested_devices', 'devices', 'device_kind', 'original_step_ms', 'step_ms',
                     'ratio', 'clips_per_s', 'step_time_vs_1', 'first_step_s',
                     'max_param_diff_vs_1', 'relative_param_diff']))


if __name__ == '__main__':
  app.run(main)
