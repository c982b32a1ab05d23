r"""Wall time of a whole paper-protocol run at AudioCaps sizes, on synthetic features.

  python -m benchmarks.full_run [--variant=ce] [--epochs=20] [--train=49291]
      [--data_on_device] [--dtype=float32] [--workdir=DIR]

Random features and captions with AudioCaps shapes (49,291 train, 428 val, 816 test clips;
VGGish 10 x 128, VGGSound 32 x 512, text 52 tokens) go through the real
`train_and_evaluate`: every epoch trains, validates and checkpoints (latest and best), then
the best checkpoint is evaluated on the test split with 5 captions per clip. The wall
time excludes only the making of the random data. Metrics are meaningless (random data).
"""

import pathlib
import tempfile
import time

from absl import app, flags
import jax

from benchmarks.common import emit, machine, peak_host_memory_gb, synthetic_datasets, table
from configs import common
from jaxretrieval import input_pipeline, train

_VARIANT = flags.DEFINE_enum('variant', 'ce', ['ce', 'moee'], 'model variant')
_EPOCHS = flags.DEFINE_integer('epochs', 20, 'epochs')
_TRAIN = flags.DEFINE_integer('train', 49291, 'training clips (AudioCaps: 49,291)')
_ON_DEVICE = flags.DEFINE_bool('data_on_device', False, 'keep the training set on device')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'compute dtype')
_WORKDIR = flags.DEFINE_string('workdir', '', 'workdir (default: a temporary one)')


def main(argv):
  del argv
  config = common.experiment('audiocaps', _VARIANT.value, ('vggish', 'vggsound'))
  config.num_epochs, config.dtype = _EPOCHS.value, _DTYPE.value
  config.data_on_device = _ON_DEVICE.value
  data = synthetic_datasets(config, train=_TRAIN.value, val=428, test=816)
  with tempfile.TemporaryDirectory() as tmp:
    workdir = pathlib.Path(_WORKDIR.value or tmp)
    start = time.perf_counter()
    results = train.train_and_evaluate(config, str(workdir), data=data)
    seconds = time.perf_counter() - start
  steps = input_pipeline.steps_per_epoch(data.train, config.batch_size) * _EPOCHS.value
  record = {'benchmark': 'full_run', 'variant': _VARIANT.value, 'epochs': _EPOCHS.value,
            'train_clips': _TRAIN.value, 'dtype': _DTYPE.value,
            'data_on_device': _ON_DEVICE.value, 'steps': steps, 'wall_s': seconds,
            'train_loop_s': results['train_seconds'], 'steps_per_s': steps / seconds,
            'test_eval_s': results['test']['seconds'],
            'peak_host_memory_gb': peak_host_memory_gb(), **machine()}
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    record['peak_device_memory_gb'] = stats['peak_bytes_in_use'] / 1e9
  emit(record)
  print(table([record], ['variant', 'epochs', 'train_clips', 'dtype', 'data_on_device', 'steps',
                         'wall_s', 'steps_per_s', 'test_eval_s', 'peak_host_memory_gb']))


if __name__ == '__main__':
  app.run(main)
