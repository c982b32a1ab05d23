"""Entry point: `python launch.py --config configs/ce_clotho.py [--workdir DIR] [--mode eval]`.

Any config field can be overridden, e.g. `--config.seed=1`. `--mode=eval` evaluates the
best checkpoint of a workdir (trained, or written by jaxretrieval.import_torch), reading
`WORKDIR/config.json` when no --config is given. Multi-host: pass the coordinator flags.
"""

import json
import logging as std_logging
import pathlib

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

from jaxretrieval import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'experiment config file',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'where checkpoints, logs and results go '
                               '(default: workdirs/<config name>)')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval'], 'train (and test) or eval only')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'multi-host: host:port of '
                                   'process 0')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'multi-host: number of processes')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'multi-host: this process')


class _QuietLibraries(std_logging.Filter):
  """Keeps orbax's per-checkpoint INFO chatter out of the console; warnings still show."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or '/orbax/' not in record.pathname


def main(argv):
  del argv
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().python_handler.addFilter(_QuietLibraries())
  if _COORDINATOR.value:
    if jax.default_backend() == 'cpu':
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config = _CONFIG.value
  workdir = _WORKDIR.value
  if workdir is None:
    if config is None:
      raise app.UsageError('pass --config or --workdir')
    workdir = str(pathlib.Path('workdirs') / pathlib.Path(flags.FLAGS['config'].config_filename
                                                          .split(':')[0]).stem)
  if config is None:
    saved = pathlib.Path(workdir) / 'config.json'
    if not saved.is_file():
      raise app.UsageError(f'no --config given and no {saved}')
    config = ml_collections.ConfigDict(json.loads(saved.read_text()))
  if _MODE.value == 'train':
    train.train_and_evaluate(config, workdir)
  else:
    train.evaluate(config, workdir)


if __name__ == '__main__':
  app.run(main)
