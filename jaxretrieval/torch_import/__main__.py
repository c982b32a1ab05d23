r"""Converts a released reference checkpoint (CE, MoEE or MMT) into a jaxretrieval workdir.

  python -m jaxretrieval.torch_import --checkpoint trained_model.pth \
      [--config config.json] --out DIR [--base_config configs/common.py]

DIR then holds `config.json` (a jaxretrieval config equivalent to the reference's: the
defaults of `--base_config`, the dataset's protocol from the registry and what the
reference's config sets), `reference_config.json` and `checkpoints/<epoch>/` with the model
(and the Ranger state, for fine-tuning); `python launch.py --workdir DIR --mode=eval`
evaluates it. torch is not needed.
"""

import sys

from absl import app, flags
import ml_collections
from ml_collections import config_flags


def main(argv):
  del argv
  f = flags.FLAGS
  bases = {}
  for name, default in (('base_config', 'configs/common.py'),
                        ('mmt_base_config', 'configs/mmt_audiocaps.py')):
    bases[name] = f[name].value
    if not isinstance(bases[name], ml_collections.ConfigDict):  # config_flags defers errors
      sys.exit(f'torch_import: cannot load --{name}={f[name].config_filename} (the experiment '
               f'defaults): run from the repository root, or pass --{name}=PATH/{default}')
  # Imported once the flags are checked: a wrong flag, a missing base config or --help
  # answers in a fraction of a second instead of 3 s (JAX and Orbax load).
  from jaxretrieval.torch_import import importer  # pylint: disable=g-import-not-at-top
  meta = importer.import_checkpoint(f.checkpoint, f.out, bases['base_config'], f.config,
                                    f.data_dir, bases['mmt_base_config'])
  if meta['optimizer_format'] is None:
    ranger = 'no optimizer state'
  elif meta['optimizer_steps']:
    ranger = f'Ranger state after {meta["optimizer_steps"]} steps, lr {meta["learning_rate"]:g}'
  else:
    ranger = f'the Ranger state is empty (never stepped), lr {meta["learning_rate"]:g}'
  print(f'imported {meta["variant"]} model with experts {meta["experts"]} '
        f'({meta["num_parameters"]:,} parameters, epoch {meta["epoch"]}; {ranger}) into '
        f'{f.out}; evaluate it with: python launch.py --mode=eval --workdir {f.out}')


if __name__ == '__main__':
  config_flags.DEFINE_config_file(
      'base_config', 'configs/common.py', 'the experiment defaults the written config of a '
      'CE/MoEE checkpoint starts from (relative paths: from the repository root)')
  config_flags.DEFINE_config_file(
      'mmt_base_config', 'configs/mmt_audiocaps.py:protocol=original', 'the MMT recipe the '
      'written config of an MMT checkpoint starts from (its dataset comes from the checkpoint)')
  flags.DEFINE_string('checkpoint', None, 'reference trained_model.pth', required=True)
  flags.DEFINE_string('config', None, 'the config.json published with it (default: the config '
                      'pickled inside the checkpoint)')
  flags.DEFINE_string('out', None, 'output workdir', required=True)
  flags.DEFINE_string('data_dir', '', 'TFDS data_dir recorded in the written config (default: '
                      'TFDS default)')
  app.run(main)
