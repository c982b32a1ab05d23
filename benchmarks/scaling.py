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
_WORKER = flags.DEFINE_string('worker_out', '', 'internal: run one device count, write here')


def worker(out: pathlib.Path) -> None:
  """One device count: compile, time `--steps` steps, save the final parameters."""
  import jax

  from benchmarks.common import machine, synthetic_datasets
  from configs import common
  from jaxretrieval import train

  config = common.experiment(_DATASET.value, _VARIANT.value, ('vggish', 'vggsound'))
  data = synthetic_datasets(config, train=config.batch_size * _STEPS.value, val=8, test=8)
  run = train.Experiment(config, None, data)
  state = train.replicate(run.new_state(config.optimizer.learning_rate))
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


def main(argv):
  del argv
  if _WORKER.value:
    worker(pathlib.Path(_WORKER.value))
    return
  rows, reference = [], None
  with tempfile.TemporaryDirectory() as tmp:
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
      emit(record)
      rows.append(record)
  print(table(rows, ['requested_devices', 'devices', 'device_kind', 'step_ms', 'clips_per_s',
                     'step_time_vs_1', 'first_step_s', 'max_param_diff_vs_1',
                     'relative_param_diff']))


if __name__ == '__main__':
  app.run(main)
