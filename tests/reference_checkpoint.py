"""Writes reference-format checkpoints (`trained_model.pth` + merged config) for tests.

Key names, shapes and order follow REFERENCE §3.2; the file is written by torch itself,
with a pickled `parse_config.ConfigParser` object as the reference does (§3.1).
"""

import collections
import pathlib
import sys
import types

import numpy as np

# Reference expert name -> (raw dim, temporal aggregation).
REF_EXPERTS = {
    'audio': (128, 'vlad'), 'vggsound': (512, 'vlad'), 'pann': (2048, 'vlad'),
    'syncnet': (1024, 'vlad'), 'imagenet.resnext101_32x48d.0': (2048, 'avg'),
    'r2p1d.r2p1d-ig65m.0': (512, 'avg'), 'scene.densenet161.0': (2208, 'avg'),
}


def _bn(prefix, c):
  return [(f'{prefix}.{n}', (c,)) for n in ('weight', 'bias', 'running_mean', 'running_var')] + [
      (f'{prefix}.num_batches_tracked', ())]


def _linear(prefix, i, o):
  return [(f'{prefix}.weight', (o, i)), (f'{prefix}.bias', (o,))]


def reference_keys(variant: str, modalities, dims=None, clusters=16, text_clusters=20,
                   ghost=1, shared=768, text_dim=300):
  """Ordered (key, shape) pairs of a reference CENet state_dict."""
  dims = dict(REF_EXPERTS, **(dims or {}))
  mods = sorted(modalities)
  keys = []
  for m in mods:
    d, temporal = dims[m]
    if temporal == 'vlad':
      keys += [(f'pooling.{m}.clusters', (d, clusters)),
               (f'pooling.{m}.clusters2', (1, d, clusters))] + _bn(f'pooling.{m}.batch_norm',
                                                                   clusters)
  t = text_clusters
  keys += [('text_pooling.clusters', (text_dim, t + ghost)),
           ('text_pooling.clusters2', (1, text_dim, t))] + _bn('text_pooling.batch_norm',
                                                              t + ghost)
  keys += _linear('ce.moe_fc', text_dim * t, len(mods))
  in_dims = [dims[m][0] * (clusters if dims[m][1] == 'vlad' else 1) for m in mods]
  if variant in ('ce', 'mimic'):
    for i, d in enumerate(in_dims):
      keys += _linear(f'ce.video_dim_reduce.{i}.fc', d, shared)
  if variant == 'ce':
    keys += _linear('ce.g_reason_1', 2 * shared, shared)
    keys += _bn('ce.g_reason_shared.0', shared) + _linear('ce.g_reason_shared.2', shared, shared)
    keys += _bn('ce.g_reason_shared.3', shared) + _linear('ce.g_reason_shared.5', shared, shared)
  for i, d in enumerate(in_dims):
    if variant == 'moee':
      raw = dims[mods[i]][0]
      keys += _linear(f'ce.video_GU.{i}.fc', d, raw) + _linear(f'ce.video_GU.{i}.cg.fc', raw, raw)
      keys += _bn(f'ce.video_GU.{i}.cg.batch_norm', raw)
    else:
      keys += _linear(f'ce.video_GU.{i}.cg.fc', shared, shared)
      keys += _bn(f'ce.video_GU.{i}.cg.batch_norm', shared)
      if variant == 'ce':
        keys += _bn(f'ce.video_GU.{i}.cg.batch_norm2', shared)
  for i, m in enumerate(mods):
    out = dims[m][0] if variant == 'moee' else shared
    keys += _linear(f'ce.text_GU.{i}.fc', text_dim * t, out)
    keys += _linear(f'ce.text_GU.{i}.cg.fc', out, out) + _bn(f'ce.text_GU.{i}.cg.batch_norm', out)
  return keys


def random_state_dict(keys, seed=0):
  """Random tensors for `keys`, with positive running variances and varied BN affines."""
  rng = np.random.default_rng(seed)
  out = collections.OrderedDict()
  for key, shape in keys:
    if key.endswith('num_batches_tracked'):
      out[key] = np.array(7, np.int64)
    elif key.endswith('running_var'):
      out[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    elif key.endswith('running_mean'):
      out[key] = rng.normal(0, 0.1, shape).astype(np.float32)
    elif key.endswith('.weight') and len(shape) == 1:
      out[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    else:
      scale = 1.0 / np.sqrt(shape[-1] if key.endswith('weight') else max(shape[0], 1))
      out[key] = (rng.normal(0, 1, shape) * scale).astype(np.float32)
  return out


def reference_config(dataset_name: str, modalities, variant: str, max_tokens: dict,
                     num_test_captions: int = 5):
  """A merged reference config with the fields the importer reads (REFERENCE §2.1)."""
  aggregation = {}
  for m in modalities:
    d, temporal = REF_EXPERTS[m]
    aggregation[m] = {'temporal': temporal, 'type': 'embed'}
    if temporal == 'avg':
      aggregation[m]['feat_dims'] = {'embed': d, 'logits': 1000}
  return {
      'experts': {'text_feat': 'w2v', 'text_agg': 'vlad', 'modalities': list(modalities),
                  'ce_shared_dim': 768},
      'arch': {'type': 'CENet', 'args': {
          'use_ce': 'pairwise' if variant == 'ce' else '',
          'mimic_ce_dims': int(variant == 'mimic'), 'use_mish': 1, 'num_g_layers': 3,
          'vlad_clusters': {'text': 20, 'audio': 16, 'vggsound': 16, 'pann': 16, 'syncnet': 16},
          'ghost_clusters': {'text': 1}}},
      'data_loader': {'type': 'ExpertDataLoader', 'args': {
          'dataset_name': dataset_name, 'batch_size': 128, 'max_tokens': max_tokens,
          'feat_aggregation': aggregation, 'num_test_captions': 1}},
      'optimizer': {'type': 'Ranger', 'args': {'lr': 0.01, 'weight_decay': 1e-3}},
      'loss': {'type': 'MaxMarginRankingLoss', 'args': {'margin': 0.2, 'fix_norm': True}},
      'trainer': {'epochs': 20},
      'eval_settings': {'data_loader': {'args': {'split_name': 'test',
                                                 'num_test_captions': num_test_captions}}},
  }


def _parse_config_module():
  """A stand-in for the reference's parse_config module, so torch pickles the object."""
  if 'parse_config' not in sys.modules:
    module = types.ModuleType('parse_config')

    class ConfigParser:

      def __init__(self, config):
        self._config = config
        self._save_dir = pathlib.Path('data/saved/models/exp/run')
        self.resume = None

    ConfigParser.__module__ = 'parse_config'
    ConfigParser.__qualname__ = 'ConfigParser'
    module.ConfigParser = ConfigParser
    sys.modules['parse_config'] = module
  return sys.modules['parse_config']


def write_reference_checkpoint(path, state_dict, config, epoch=12, monitor_best=33.3,
                               optimizer=None):
  """torch.save of the reference's checkpoint dict (REFERENCE §3.1)."""
  import torch  # test-only dependency
  sd = collections.OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in state_dict.items())
  blob = {'arch': 'CENet', 'epoch': epoch, 'state_dict': sd,
          'monitor_best': np.float64(monitor_best),
          'config': _parse_config_module().ConfigParser(config)}
  if optimizer is not None:
    blob['optimizer'] = optimizer
  torch.save(blob, path)
