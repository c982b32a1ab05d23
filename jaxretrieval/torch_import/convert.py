"""Reference `trained_model.pth` -> Flax variables (REFERENCE §3).

The architecture comes from the reference's merged config (the published `config.json`, or
the `ConfigParser` pickled in the checkpoint) together with the tensor shapes; every key of
the state_dict must map onto the Flax tree and every Flax variable must be filled.
"""

import dataclasses
import json
import pathlib
import re
from typing import Any

import jax
import numpy as np

from jaxretrieval import checkpointing
from jaxretrieval.data.registry import EXPERTS_BY_REFERENCE_NAME as BY_REF_NAME
from jaxretrieval.models import ExpertSpec, ModelSpec, abstract_variables
from jaxretrieval.torch_import.torch_pickle import Opaque, load_pth

# Keys the reference itself deletes when loading old checkpoints (REFERENCE §3.3).
_LEGACY_PREFIXES = ('ce.moe_fc_bottleneck1.', 'ce.moe_cg.', 'ce.moe_fc_proj.')
_BUFFERS = {'running_mean': 'mean', 'running_var': 'var'}


class CheckpointMismatch(ValueError):
  """The state_dict does not fit the architecture its config describes."""


@dataclasses.dataclass
class ReferenceCheckpoint:
  state_dict: dict[str, np.ndarray]
  config: dict
  epoch: int | None
  monitor_best: float | None
  optimizer: dict | None


def short_name(ref_name: str) -> str:
  """Our name of a reference expert (`audio` -> `vggish`); unknown ones are sanitised."""
  known = BY_REF_NAME.get(ref_name)
  return known.name if known else re.sub(r'[^A-Za-z0-9_]', '_', ref_name)


def read_reference_checkpoint(path: str | pathlib.Path,
                              config_json: str | pathlib.Path | None = None) -> ReferenceCheckpoint:
  """Loads a reference checkpoint; the config comes from `config_json` or the pickle."""
  blob = load_pth(path)
  if not isinstance(blob, dict) or 'state_dict' not in blob:
    raise CheckpointMismatch(f'{path}: expected a dict with a "state_dict" (a reference '
                             f'trained_model.pth), found {type(blob).__name__}')
  if config_json is not None:
    config = json.loads(pathlib.Path(config_json).read_text())
  else:
    pickled = blob.get('config')
    config = getattr(pickled, '_config', None) if isinstance(pickled, Opaque) else pickled
    if not isinstance(config, dict):
      raise CheckpointMismatch(
          f'{path} holds no readable config; pass the config.json published next to it '
          '(--config).')
  epoch = blob.get('epoch')
  best = blob.get('monitor_best')
  return ReferenceCheckpoint(
      state_dict={k: np.asarray(v) for k, v in blob['state_dict'].items()}, config=config,
      epoch=None if epoch is None else int(epoch),
      monitor_best=None if best is None else float(best), optimizer=blob.get('optimizer'))


def spec_from_reference(config: dict, state_dict: dict[str, np.ndarray]) -> ModelSpec:
  """The ModelSpec of a reference run (REFERENCE §2.1)."""
  try:
    modalities = sorted(config['experts']['modalities'])
    args = config['arch']['args']
    aggregation = config['data_loader']['args']['feat_aggregation']
  except KeyError as e:
    raise CheckpointMismatch(f'reference config lacks {e}: is it the merged config.json?') from e
  use_ce, mimic = args.get('use_ce', ''), bool(args.get('mimic_ce_dims', 0))
  if use_ce not in ('', 'pairwise'):
    raise CheckpointMismatch(f'use_ce={use_ce!r} is not supported (only "pairwise" and "")')
  variant = 'ce' if use_ce else ('mimic' if mimic else 'moee')
  clusters = args.get('vlad_clusters', {})
  experts = []
  for i, ref in enumerate(modalities):
    temporal = aggregation.get(ref, {}).get('temporal')
    if temporal == 'vlad':
      dim, k = _shape(state_dict, f'pooling.{ref}.clusters')
      if k != clusters.get(ref, k):
        raise CheckpointMismatch(f'pooling.{ref}.clusters has {k} clusters, config says '
                                 f'{clusters[ref]}')
    elif temporal == 'avg':
      dim = aggregation[ref]['feat_dims']['embed']
      k = 1
    else:
      raise CheckpointMismatch(f'expert {ref}: temporal aggregation {temporal!r} is not '
                               'supported (vlad, avg)')
    experts.append(ExpertSpec(short_name(ref), int(dim), temporal, int(k)))
  text_dim, text_total = _shape(state_dict, 'text_pooling.clusters')
  text_clusters = int(args.get('vlad_clusters', {}).get('text', text_total))
  ghost = int(args.get('ghost_clusters', {}).get('text', 0))
  if text_clusters + ghost != text_total:
    raise CheckpointMismatch(f'text_pooling.clusters has {text_total} columns, config says '
                             f'{text_clusters} clusters + {ghost} ghost')
  return ModelSpec(variant=variant, experts=tuple(experts), text_dim=int(text_dim),
                   text_clusters=text_clusters, text_ghost_clusters=ghost,
                   shared_dim=int(config['experts'].get('ce_shared_dim', 768)))


def _shape(state_dict, key):
  if key not in state_dict:
    raise CheckpointMismatch(f'state_dict has no {key!r}')
  return state_dict[key].shape


def _module_path(module: str, spec: ModelSpec) -> tuple[str, ...] | None:
  """Flax module path of a reference module path, or None if it is not one of ours."""
  for ref, name in _ref_names(spec).items():
    if module == f'pooling.{ref}':
      return (f'pooling_{name}',)
    if module == f'pooling.{ref}.batch_norm':
      return (f'pooling_{name}', 'batch_norm')
  parts = module.split('.')
  if parts[0] == 'text_pooling':
    return tuple(parts)
  if parts[0] != 'ce' or len(parts) < 2:
    return None
  if parts[1:] == ['moe_fc']:
    return ('moe_fc',)
  if parts[1:] == ['g_reason_1']:
    return ('audio_head', 'relation', 'fc_in')
  names = spec.expert_names
  if parts[1] in ('text_GU', 'video_GU', 'video_dim_reduce') and len(parts) >= 3:
    i = int(parts[2])
    if i >= len(names):
      return None
    prefix = {'text_GU': (f'text_gu_{names[i]}',),
              'video_GU': ('audio_head', f'gate_{names[i]}'),
              'video_dim_reduce': ('audio_head', f'reduce_{names[i]}')}[parts[1]]
    return prefix + tuple(parts[3:])
  if parts[1] == 'g_reason_shared' and len(parts) == 3:
    # [BN, Mish, Linear] repeated: index 3r is the BatchNorm, 3r + 2 the Linear of repeat r.
    k = int(parts[2])
    kind = {0: 'bn', 2: 'fc'}.get(k % 3)
    return None if kind is None else ('audio_head', 'relation', f'{kind}_{k // 3}')
  return None


def _ref_names(spec: ModelSpec) -> dict[str, str]:
  """Reference name -> our name, for the spec's vlad experts."""
  by_short = {e.name: ref for ref, e in BY_REF_NAME.items()}
  return {by_short.get(e.name, e.name): e.name for e in spec.experts if e.temporal == 'vlad'}


def flax_location(key: str, value: np.ndarray, spec: ModelSpec):
  """(collection, path, array) for a state_dict entry, None for buffers we drop."""
  module, _, leaf = key.rpartition('.')
  path = _module_path(module, spec)
  if path is None:
    raise CheckpointMismatch(f'state_dict key {key!r} has no place in a {spec.variant} model '
                             f'with experts {list(spec.expert_names)}')
  if leaf == 'num_batches_tracked':
    return None
  if leaf in _BUFFERS:
    return 'batch_stats', path + (_BUFFERS[leaf],), value
  if leaf == 'weight':
    if value.ndim == 2:
      return 'params', path + ('kernel',), value.T
    return 'params', path + ('scale',), value
  if leaf in ('bias', 'clusters', 'clusters2'):
    return 'params', path + (leaf,), value
  raise CheckpointMismatch(f'state_dict key {key!r}: unknown tensor kind {leaf!r}')


def convert_state_dict(state_dict: dict[str, np.ndarray], spec: ModelSpec) -> dict[str, Any]:
  """Flax {'params', 'batch_stats'} from a reference state_dict, checked against `spec`."""
  expected = {jax.tree_util.keystr(p, simple=True, separator='/'): leaf for p, leaf in
              jax.tree_util.tree_flatten_with_path(abstract_variables(spec))[0]}
  flat = {}
  for key, value in state_dict.items():
    if key.startswith(_LEGACY_PREFIXES):
      continue
    located = flax_location(key, np.asarray(value), spec)
    if located is None:
      continue
    collection, path, array = located
    name = '/'.join((collection,) + path)
    if name not in expected:
      raise CheckpointMismatch(f'state_dict key {key!r} maps to {name}, which the model lacks')
    if tuple(expected[name].shape) != array.shape:
      raise CheckpointMismatch(f'state_dict key {key!r} has shape {array.shape}; the model '
                               f'expects {tuple(expected[name].shape)} at {name}')
    flat[name] = array.astype(np.float32)
  missing = sorted(set(expected) - set(flat))
  if missing:
    raise CheckpointMismatch(f'the state_dict does not fill {len(missing)} model variables: '
                             f'{missing[:8]}')
  return _nest(flat)


def _nest(flat: dict[str, np.ndarray]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for name, array in flat.items():
    node = tree
    *parents, leaf = name.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = array
  return tree


def convert_ranger_state(optimizer: dict, state_dict: dict[str, np.ndarray],
                         spec: ModelSpec) -> dict[str, Any]:
  """The reference Ranger state as {'step', 'learning_rate', 'mu', 'nu', 'slow'}.

  `mu`, `nu` and `slow` (exp_avg, exp_avg_sq, slow_buffer) are trees shaped like
  `params`; a Ranger that never stepped (the reference's trainer saves such files) has no
  per-parameter state: then only `step` (0) and `learning_rate` are returned. Ranger indexes its state by parameter position, which is the order of the
  state_dict's parameters (buffers left out). Note (REFERENCE §3.1): this is the state at
  the *last* epoch, while the weights are those of the best epoch.
  """
  try:
    group, = optimizer['param_groups']
    per_param = optimizer['state']
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointMismatch(f'optimizer state is not a single-group Ranger state ({e})') from e
  keys = [k for k, v in state_dict.items()
          if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))
          and not k.startswith(_LEGACY_PREFIXES)]
  if not per_param:
    return {'step': np.int32(0), 'learning_rate': np.float32(group['lr'])}
  if len(group['params']) != len(keys):
    raise CheckpointMismatch(f'optimizer state covers {len(group["params"])} parameters, the '
                             f'state_dict has {len(keys)}')
  trees = {'mu': {}, 'nu': {}, 'slow': {}}
  steps = set()
  for index, key in zip(group['params'], keys):
    if index not in per_param:
      raise CheckpointMismatch(f'optimizer state has no entry for parameter {index} ({key})')
    entry = per_param[index]
    steps.add(int(entry['step']))
    for ours, theirs in (('mu', 'exp_avg'), ('nu', 'exp_avg_sq'), ('slow', 'slow_buffer')):
      _, path, array = flax_location(key, np.asarray(entry[theirs]), spec)
      trees[ours]['/'.join(path)] = array.astype(np.float32)
  if len(steps) != 1:
    raise CheckpointMismatch(f'parameters disagree on the Ranger step count: {sorted(steps)}')
  return {'step': np.int32(steps.pop()), 'learning_rate': np.float32(group['lr']),
          **{k: _nest(v) for k, v in trees.items()}}


def write_workdir(out: str | pathlib.Path, config, reference_config: dict, epoch: int,
                  variables: dict, meta: dict, optimizer: Any = None) -> None:
  """The workdir of an imported checkpoint: `config.json` (ours), `reference_config.json`
  (the original's) and one checkpoint at `epoch` (model variables, meta, optimizer state)."""
  out_dir = pathlib.Path(out)
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  (out_dir / 'reference_config.json').write_text(json.dumps(reference_config, indent=2,
                                                            default=str))
  checkpointing.save(checkpointing.manager(out_dir), epoch, variables, meta, optimizer)
