"""Entry point: `python launch.py --config configs/ce_clotho.py [--workdir DIR] [--mode eval]`.

Any config field can be overridden, e.g. `--config.seed=1`. `--mode=eval` evaluates the
best checkpoint of a workdir (trained, or written by jaxretrieval.torch_import), reading
`WORKDIR/config.json` when no --config is given. Multi-host: pass the coordinator flags.
"""

import ast
import json
import logging as std_logging
import pathlib
import sys

from absl import app, flags, logging
import jax
import ml_collections
from ml_collections import config_flags

from jaxretrieval import checkpointing

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
  # Imported once the flags are parsed: a wrong flag or --help answers without loading
  # TensorFlow (train's summary writers), in about 2 s instead of 8.
  from jaxretrieval import train  # pylint: disable=g-import-not-at-top
  try:
    if _MODE.value == 'train':
      train.train_and_evaluate(config, workdir)
      name = 'results'
    else:
      train.evaluate_workdir(config, workdir)
      name = 'eval_results'
  except (checkpointing.CheckpointError, FloatingPointError, FileNotFoundError) as e:
    sys.exit(f'launch.py: {e}')
  if jax.process_index() == 0:
    print((pathlib.Path(workdir) / f'{name}.md').read_text(), end='')


def _parse_flags(argv):
  """absl's flag parsing, with a wrong config field reported in one line (with the nearest
  valid name) instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'launch.py: {e}\nPass --help for the flags.')
  except (AttributeError, KeyError) as e:
    # ml_collections reports an unknown field of a --config.X override as the repr of
    # "'key'\nDid you mean ..."; any other error (e.g. inside a config file) is raised.
    text = str(e)
    try:
      text = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      pass
    key = text.split("'")[1] if text.count("'") >= 2 else ''
    arg = next((a for a in argv if a.startswith('--config.') and
                a.split('=')[0].endswith(f'.{key}')), None)
    if arg is None:
      raise
    sys.exit(f'launch.py: {arg}: unknown config field {key!r}. '
             + ' '.join(text.splitlines()[1:]))

if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
