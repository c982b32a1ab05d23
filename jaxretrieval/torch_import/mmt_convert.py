"""The original MMT's `trained_model.pth` -> Flax variables of `models.mmt.MMT`.

The architecture comes from the original config (`arch.args` of the `config.json` published
with the checkpoint, or the one pickled inside it) and is cross-checked against the tensor
shapes. Every state_dict key is mapped (the `num_batches_tracked` counters and a
`position_ids` buffer equal to 0..n-1 are checked and dropped) and every Flax variable filled.

Released AudioCaps model (seed 0; seeds 1 and 2 alike):
http://www.robots.ox.ac.uk/~vgg/research/collaborative-experts/data/models/audiocaps-train-vggish-vggsound-mmt/seed-0/trained_model.pth
"""

import dataclasses
import pathlib
import re
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxretrieval.data import registry
from jaxretrieval.models.bert import BERT_BASE_CASED, BertConfig
from jaxretrieval.models.mmt import TOKEN_TYPES, MMTExpert, MMTSpec, abstract_variables, mmt_spec
from jaxretrieval.torch_import import bert_convert
from jaxretrieval.torch_import.bert_convert import BertCheckpointError
from jaxretrieval.torch_import.convert import ReferenceCheckpoint, write_workdir

# The only configuration ported (AudioCaps_mmt.json, Clotho_mmt.json); see models/mmt.py.
SUPPORTED_FLAGS = dict(txt_inp='bertftn', txt_agg='bertftn', txt_pro='gbn', txt_wgh='emb',
                       vid_wgh='none', vid_cont='bert', vid_inp='both', pos_enc='tint',
                       out_tok='mxp')
# Dataset name of the original configs -> ours.
DATASETS = {'AudioCaps': 'audiocaps', 'Clotho': 'clotho'}
_BN_BUFFERS = {'running_mean': 'mean', 'running_var': 'var'}


def is_mmt_config(config: dict) -> bool:
  """Whether a reference config describes an MMT run (rather than CE / MoEE)."""
  return 'vid_cont' in config.get('arch', {}).get('args', {})


def spec_from_config(config: dict, state_dict: dict[str, np.ndarray]) -> MMTSpec:
  """The MMTSpec of an original MMT config, checked against the state_dict's shapes."""
  try:
    args = config['arch']['args']
    modalities = sorted(config['experts']['modalities'])
    vid = args['vid_bert_params']
  except KeyError as e:
    raise BertCheckpointError(f'MMT config lacks {e}: is it the config.json of an MMT run?') from e
  for flag, value in SUPPORTED_FLAGS.items():
    if args.get(flag) != value:
      raise BertCheckpointError(f'MMT config has {flag}={args.get(flag)!r}; only the '
                                f'benchmark configuration ({flag}={value!r}) is ported')
  if args.get('l2renorm') or not args.get('normalize_experts', True):
    raise BertCheckpointError('MMT config: only l2renorm=false with normalize_experts=true is '
                              'ported')
  if vid.get('hidden_act', 'gelu') != 'gelu':
    raise BertCheckpointError(f'vid_bert_params.hidden_act={vid["hidden_act"]!r}: only gelu')
  same_dim = int(args.get('same_dim', 512))
  experts = []
  for m in modalities:
    if m not in TOKEN_TYPES:
      raise BertCheckpointError(f'MMT expert {m!r} is not supported: expected one of '
                                f'{sorted(TOKEN_TYPES)}')
    key = f'video_dim_reduce.{m}.fc.weight'
    if key not in state_dict:
      raise BertCheckpointError(f'state_dict has no {key!r} for expert {m}')
    experts.append(MMTExpert(m, int(state_dict[key].shape[1]), TOKEN_TYPES[m]))
  audio = BertConfig(**dict(bert_convert.config_values(vid), vocab_size=None))
  txt = args.get('txt_bert_params') or {'hidden_dropout_prob': vid['hidden_dropout_prob'],
                                        'attention_probs_dropout_prob':
                                            vid['hidden_dropout_prob']}
  text = dataclasses.replace(_text_bert_shape(state_dict),
                             hidden_dropout=txt['hidden_dropout_prob'],
                             attention_dropout=txt['attention_probs_dropout_prob'])
  return MMTSpec(experts=tuple(experts), text_bert=text, audio_bert=audio, same_dim=same_dim,
                 weight_dropout=txt['hidden_dropout_prob'],
                 keep_missing_modalities=bool(args['keep_missing_modalities']))


def _text_bert_shape(state_dict: dict[str, np.ndarray]) -> BertConfig:
  """The text BERT (bert-base-cased in the original), its sizes read from the tensors."""
  try:
    vocab, hidden = state_dict['txt_bert.embeddings.word_embeddings.weight'].shape
    positions = state_dict['txt_bert.embeddings.position_embeddings.weight'].shape[0]
    types = state_dict['txt_bert.embeddings.token_type_embeddings.weight'].shape[0]
    inter = state_dict['txt_bert.encoder.layer.0.intermediate.dense.weight'].shape[0]
  except KeyError as e:
    raise BertCheckpointError(f'state_dict has no {e} (the text BERT)') from e
  layers = 1 + max(int(m.group(1)) for k in state_dict
                   if (m := re.match(r'txt_bert\.encoder\.layer\.(\d+)\.', k)))
  # Head count is not in the tensors: every released BERT uses 64-wide heads (base: 12).
  heads = hidden // 64
  return dataclasses.replace(BERT_BASE_CASED, vocab_size=int(vocab), hidden_size=int(hidden),
                             num_layers=layers, num_heads=heads, intermediate_size=int(inter),
                             max_positions=int(positions), type_vocab_size=int(types))


def flax_location(key: str, value: np.ndarray, expert_names: tuple[str, ...]):
  """(collection, path) of a state_dict key; None for a counter or buffer we check and drop."""
  module, _, leaf = key.rpartition('.')
  if leaf == 'num_batches_tracked':
    return None
  for prefix, ours in (('txt_bert.', 'txt_bert'), ('vid_bert.', 'vid_bert')):
    if key.startswith(prefix):
      if key[len(prefix):] == 'embeddings.position_ids':
        bert_convert.check_position_ids(value, key)
        return None
      return 'params', (ours,) + bert_convert.flax_path(key[len(prefix):])
  m = re.fullmatch(r'(video_dim_reduce|text_GU|moe_fc_txt)\.([^.]+)((?:\.[a-z_]+)*)', module)
  if not m or m.group(2) not in expert_names:
    raise BertCheckpointError(f'state_dict key {key!r} has no place in an MMT model with '
                              f'experts {list(expert_names)}')
  kind, expert, rest = m.group(1), m.group(2), tuple(filter(None, m.group(3).split('.')))
  prefix = {'video_dim_reduce': 'video_dim_reduce', 'text_GU': 'text_gu',
            'moe_fc_txt': 'moe_fc'}[kind]
  path = (f'{prefix}_{expert}',) + rest
  if leaf in _BN_BUFFERS:
    return 'batch_stats', path + (_BN_BUFFERS[leaf],)
  if leaf == 'weight':
    return 'params', path + ('scale' if rest[-1:] == ('batch_norm',) else 'kernel',)
  if leaf == 'bias':
    return 'params', path + ('bias',)
  raise BertCheckpointError(f'state_dict key {key!r}: unknown tensor kind {leaf!r}')


def convert_state_dict(state_dict: dict[str, np.ndarray], spec: MMTSpec) -> dict[str, Any]:
  """Flax {'params', 'batch_stats'} of `MMT(spec)` from an original MMT state_dict."""
  expected = {(c,) + p: s for c, tree in abstract_variables(spec).items()
              for p, s in bert_convert.flat_shapes(tree).items()}
  flat = {}
  for key, value in state_dict.items():
    located = flax_location(key, np.asarray(value), spec.expert_names)
    if located is not None:
      collection, path = located
      bert_convert.place(flat, (collection,) + path, np.asarray(value), expected,
                         f'state_dict key {key!r}')
  bert_convert.check_complete(flat, expected, 'the MMT state_dict')
  return bert_convert.nest(flat)


def with_pretrained_text(variables: dict, bert_dir: str | pathlib.Path, spec: MMTSpec) -> dict:
  """`variables` with the text tower replaced by the pre-trained BERT of `bert_dir`.

  The original starts training from `bert-base-cased` (`txt_inp = bertftn`); the rest of the
  model keeps its random initialisation.
  """
  text = bert_convert.load_pretrained(bert_convert.weights_in(bert_dir), spec.text_bert)
  return {**variables, 'params': {**variables['params'], 'txt_bert': text}}


def config_from_reference(ref: dict, spec: MMTSpec,
                          base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The jaxretrieval MMT config of an original run: the MMT recipe `base` (e.g.
  `configs/mmt_audiocaps.py`) on the run's dataset, with the original protocol."""
  try:
    mix = ref['train_sets'][0]['args']['mix'][0]
  except (KeyError, IndexError, TypeError) as e:
    raise BertCheckpointError(f'MMT config lacks train_sets[0].args.mix[0] ({e!r})') from e
  name = mix.get('dataset_name')
  if name not in DATASETS:
    raise BertCheckpointError(f'MMT dataset {name!r} is not supported: expected one of '
                              f'{sorted(DATASETS)}')
  # The published numbers come from the original protocol (fused queries, see the config).
  c = registry.configure(ml_collections.ConfigDict(base.to_dict()), DATASETS[name])
  c.fuse_captions, c.num_test_captions = True, 1
  c.experts = spec.expert_names
  c.max_tokens = ml_collections.ConfigDict(
      {'text': int(mix['max_text_words']),
       **{e: int(mix['max_expert_tokens']) for e in spec.expert_names}})
  if mix.get('query_shuffling', 'cat') != 'cat':
    raise BertCheckpointError(f'query_shuffling={mix["query_shuffling"]!r}: only "cat" is ported')
  text, audio = spec.text_bert, spec.audio_bert
  c.model.text_bert = ml_collections.ConfigDict({k: getattr(text, k) for k in c.model.text_bert})
  c.model.update(same_dim=spec.same_dim, audio_layers=audio.num_layers,
                 audio_heads=audio.num_heads, audio_intermediate=audio.intermediate_size,
                 audio_max_positions=audio.max_positions, audio_type_vocab=audio.type_vocab_size,
                 dropout=audio.hidden_dropout)
  c.model.keep_missing_modalities = spec.keep_missing_modalities
  c.batch_size = int(ref['train_sets'][0]['args'].get('batch_size', c.batch_size))
  c.optimizer.learning_rate = float(ref.get('optimizer', {}).get('args', {}).get(
      'lr', c.optimizer.learning_rate))
  c.loss.margin = float(ref.get('loss', {}).get('args', {}).get('margin', c.loss.margin))
  c.num_epochs = int(ref.get('trainer', {}).get('epochs', c.num_epochs))
  return c


def import_checkpoint(ref: ReferenceCheckpoint, checkpoint: str, out: str,
                      base: ml_collections.ConfigDict, data_dir: str = '') -> dict:
  """Writes a workdir (config.json, reference_config.json, one checkpoint); returns its meta."""
  spec = spec_from_config(ref.config, ref.state_dict)
  variables = convert_state_dict(ref.state_dict, spec)
  config = config_from_reference(ref.config, spec, base)
  config.data_dir = data_dir
  if mmt_spec(config, {e.name: e.dim for e in spec.experts}) != spec:
    raise BertCheckpointError('the original config describes an MMT that this project\'s '
                              'config cannot rebuild (different dropout rates in its parts)')
  epoch = ref.epoch or 0
  meta = {'epoch': epoch, 'step': 0, 'source': str(pathlib.Path(checkpoint).absolute()),
          'val_t2a_geometric_mean': None, 'variant': 'mmt',
          'experts': list(spec.expert_names),
          'num_parameters': int(sum(a.size for a in jax.tree.leaves(variables['params']))),
          'optimizer_format': None}
  write_workdir(out, config, ref.config, epoch, variables, meta)
  return meta
