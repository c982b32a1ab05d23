"""Conversion of a released reference checkpoint (CE, MoEE or MMT) into a workdir; the
command line is `python -m jaxretrieval.torch_import` (`__main__.py`)."""

import pathlib

import jax
import ml_collections

from jaxretrieval.data import registry
from jaxretrieval.models.spec import model_spec
from jaxretrieval.torch_import import convert, mmt_convert


def config_from_reference(ref: dict, spec,
                          base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A jaxretrieval config reproducing a reference run's model, data protocol and training.

  `base` holds every other field (the experiment defaults, `configs/common.py`); it is
  copied, not changed.
  """
  loader = ref.get('data_loader', {}).get('args', {})
  name = loader.get('dataset_name')
  if name not in registry.DATASETS_BY_REFERENCE_NAME:
    raise ValueError(f'reference dataset {name!r} is not supported: expected one of '
                     f'{sorted(registry.DATASETS_BY_REFERENCE_NAME)}')
  c = registry.configure(ml_collections.ConfigDict(base.to_dict()),
                         registry.DATASETS_BY_REFERENCE_NAME[name].name)
  c.experts = spec.expert_names
  c.model.variant = 'moee' if spec.variant == 'moee' else 'ce'
  clusters = {e.clusters for e in spec.experts if e.temporal == 'vlad'}
  if len(clusters) > 1:
    raise ValueError(f'experts use different VLAD cluster counts {sorted(clusters)}; '
                     'jaxretrieval configs take one value (model.vlad_clusters)')
  c.model.vlad_clusters = clusters.pop() if clusters else c.model.vlad_clusters
  c.model.text_clusters = spec.text_clusters
  c.model.text_ghost_clusters = spec.text_ghost_clusters
  c.model.shared_dim = spec.shared_dim
  tokens = loader.get('max_tokens', {})
  for ref_name, value in tokens.items():
    ours = 'text' if ref_name == 'text' else convert.short_name(ref_name)
    if ours == 'text' or ours in spec.expert_names:
      c.max_tokens[ours] = int(value)
  c.fuse_captions = bool(loader.get('fuse_captions', c.fuse_captions))
  test_args = ref.get('eval_settings', {}).get('data_loader', {}).get('args', {})
  c.num_test_captions = int(test_args.get('num_test_captions', c.num_test_captions))
  optimizer = ref.get('optimizer', {}).get('args', {})
  c.optimizer.learning_rate = float(optimizer.get('lr', c.optimizer.learning_rate))
  c.optimizer.weight_decay = float(optimizer.get('weight_decay', c.optimizer.weight_decay))
  c.loss.margin = float(ref.get('loss', {}).get('args', {}).get('margin', c.loss.margin))
  c.num_epochs = int(ref.get('trainer', {}).get('epochs', c.num_epochs))
  c.batch_size = int(loader.get('batch_size', c.batch_size))
  c.seed = int(ref.get('seed', c.seed))
  return c


def import_checkpoint(checkpoint: str, out: str, base: ml_collections.ConfigDict,
                      config_json: str | None = None, data_dir: str = '',
                      mmt_base: ml_collections.ConfigDict | None = None) -> dict:
  """Writes the workdir (its config over the defaults `base`, or for an MMT checkpoint over
  the MMT recipe `mmt_base`); returns its meta record."""
  ref = convert.read_reference_checkpoint(checkpoint, config_json)
  if mmt_convert.is_mmt_config(ref.config):
    if mmt_base is None:
      raise ValueError(f'{checkpoint} is an MMT checkpoint: pass the MMT recipe '
                       '(--mmt_base_config=configs/mmt_audiocaps.py:protocol=original)')
    return mmt_convert.import_checkpoint(ref, checkpoint, out, mmt_base, data_dir)
  spec = convert.spec_from_reference(ref.config, ref.state_dict)
  variables = convert.convert_state_dict(ref.state_dict, spec)
  config = config_from_reference(ref.config, spec, base)
  config.data_dir = data_dir
  if model_spec(config, {e.name: (e.dim, e.temporal) for e in spec.experts}) != spec:
    raise AssertionError('the written config would not rebuild the imported architecture')
  ranger = None
  if isinstance(ref.optimizer, dict):
    ranger = convert.convert_ranger_state(ref.optimizer, ref.state_dict, spec)
  epoch = ref.epoch or 0
  meta = {'epoch': epoch, 'step': 0, 'source': str(pathlib.Path(checkpoint).absolute()),
          'val_t2a_geometric_mean': ref.monitor_best, 'variant': spec.variant,
          'experts': list(spec.expert_names),
          'num_parameters': int(sum(a.size for a in jax.tree.leaves(variables['params']))),
          # The Ranger state and its learning rate (the reference scheduler's decayed rate),
          # which a fine-tuning run resumes (config.init_from, REFERENCE §7.18).
          'optimizer_format': 'reference_ranger' if ranger is not None else None,
          'optimizer': 'ranger' if ranger is not None else None,
          'optimizer_steps': int(ranger['step']) if ranger is not None else None,
          'learning_rate': float(ranger['learning_rate']) if ranger is not None else None}
  optimizer = ranger if ranger is not None and ranger['step'] > 0 else None
  convert.write_workdir(out, config, ref.config, epoch, {
      'params': variables['params'], 'batch_stats': variables['batch_stats']}, meta, optimizer)
  return meta
