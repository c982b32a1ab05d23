r"""Input pipeline throughput against the training step's consumption.

  python -m benchmarks.input_pipeline [--datasets=audiocaps,clotho] [--items=4096]
      [--tfds_name=synthcaps/small]

Training reads each split from TFDS once into host memory, then every step gathers its
batch (a random caption per item, padded experts) on the host, shards it over the local
devices and prefetches it (or, with data_on_device, sends only row indices). Measured:

1. TFDS -> host: clips/s of `load_split` over a built TFDS dataset (SynthCaps by default,
   built first when missing, about a minute), and its MB/s of expert features.
2. Host batches: clips/s of `train_batches` + `shard` at AudioCaps and CLOTHO shapes.
3. The step: clips/s of the pmapped CE step on batches already on the device, and of the
   training loop as it runs (host batches, prefetch to device, step). A pipeline that keeps
   up makes the loop as fast as the step alone.
"""

import time

from absl import app, flags
import jax

from benchmarks.common import emit, machine, synthetic_datasets, table
from configs import ce_synthcaps, common
from jaxretrieval import input_pipeline, replicas, train
from jaxretrieval.data import splits
from jaxretrieval.models.spec import model_spec

_DATASETS = flags.DEFINE_list('datasets', ['audiocaps', 'clotho'], 'shapes of these datasets')
_ITEMS = flags.DEFINE_integer('items', 4096, 'training items per synthetic split')
_TFDS_NAME = flags.DEFINE_string('tfds_name', 'synthcaps/small', 'TFDS dataset to read')


def tfds_read() -> dict:
  config = ce_synthcaps.get_config()
  config.tfds_name = _TFDS_NAME.value
  builder = splits.tfds_builder(config)
  spec = model_spec(config, train.expert_dims(builder))
  start = time.perf_counter()
  data = splits.load_split(builder, config.train_split, config, spec,
                                   splits.CaptionVocab())
  seconds = time.perf_counter() - start
  megabytes = sum(v.nbytes for v in data.experts.values()) / 1e6
  return {'benchmark': 'input_pipeline', 'stage': 'tfds_to_host', 'dataset': config.tfds_name,
          'clips': len(data), 'seconds': seconds, 'clips_per_s': len(data) / seconds,
          'expert_mb_per_s': megabytes / seconds, **machine()}


def batches_and_step(dataset: str) -> list[dict]:
  config = common.experiment(dataset, 'ce', ('vggish', 'vggsound'))
  data = synthetic_datasets(config, train=_ITEMS.value, val=8, test=8)
  run = train.Experiment(config, None, data)
  devices = jax.local_device_count()
  steps = input_pipeline.steps_per_epoch(data.train, config.batch_size)
  base = {'benchmark': 'input_pipeline', 'dataset_shapes': dataset, 'batch': config.batch_size,
          **machine()}

  start = time.perf_counter()
  [input_pipeline.shard(b, devices) for b in input_pipeline.train_batches(
      data.train, 0, config.seed, config.batch_size)]
  host_s = time.perf_counter() - start

  state = replicas.replicate(run.new_state(config.optimizer.learning_rate))
  step = run.compile_train_step(config.optimizer.learning_rate)
  on_device = list(run.batches(0))  # sharded over the devices, as the loop gets them
  for b in on_device[:2]:
    state, metrics = step(state, b)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for b in on_device:
    state, metrics = step(state, b)
  jax.block_until_ready((state, metrics))
  step_s = time.perf_counter() - start

  start = time.perf_counter()
  for b in run.batches(1):
    state, metrics = step(state, b)
  jax.block_until_ready((state, metrics))
  loop_s = time.perf_counter() - start

  clips = steps * config.batch_size
  return [dict(base, stage='host_batches', clips_per_s=clips / host_s, seconds=host_s),
          dict(base, stage='step_only', clips_per_s=clips / step_s, seconds=step_s),
          dict(base, stage='training_loop', clips_per_s=clips / loop_s, seconds=loop_s,
               loop_vs_step=step_s / loop_s)]


def main(argv):
  del argv
  rows = [tfds_read()]
  emit(rows[0])
  for dataset in _DATASETS.value:
    for record in batches_and_step(dataset):
      emit(record)
      rows.append(record)
  print(table(rows, ['stage', 'dataset', 'dataset_shapes', 'clips_per_s', 'seconds',
                     'expert_mb_per_s', 'loop_vs_step']))


if __name__ == '__main__':
  app.run(main)
