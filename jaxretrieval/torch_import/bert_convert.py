"""PyTorch BERT state_dicts -> Flax `BertModel` parameters, every tensor mapped and checked.

Reads Hugging Face checkpoints (`model.safetensors` through safetensors' NumPy API, or a
zip-serialised `pytorch_model.bin` through the torch-free reader) and the BERT blocks inside
an MMT `trained_model.pth`. Accepted spellings: `LayerNorm` or `layer_norm` (the original MMT's
audio BERT), `weight`/`bias` or the old `gamma`/`beta`. Pre-training heads (`cls.*`) are not
part of the encoder: they are dropped and reported; any other unknown key is an error.
"""

import json
import pathlib
import re
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from safetensors import numpy as safetensors_numpy

from jaxretrieval.models.bert import BertConfig, BertModel
from jaxretrieval.torch_import.torch_pickle import load_pth

# torch module path inside one encoder layer -> our module name.
_LAYER_MODULES = {
    'attention.self.query': 'attention_query', 'attention.self.key': 'attention_key',
    'attention.self.value': 'attention_value', 'attention.output.dense': 'attention_output',
    'attention.output.LayerNorm': 'attention_LayerNorm', 'intermediate.dense': 'intermediate',
    'output.dense': 'output', 'output.LayerNorm': 'output_LayerNorm',
}
_EMBEDDINGS = ('word_embeddings', 'position_embeddings', 'token_type_embeddings')
# Weight files of a Hugging Face model folder, in order of preference.
WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')


class BertCheckpointError(ValueError):
  """A BERT state_dict does not fit the architecture it is loaded into."""


def config_values(c: dict) -> dict:
  """BertConfig fields from a Hugging Face-style BERT config dict (raises KeyError)."""
  return dict(vocab_size=c.get('vocab_size'), hidden_size=c['hidden_size'],
              num_layers=c['num_hidden_layers'], num_heads=c['num_attention_heads'],
              intermediate_size=c['intermediate_size'],
              max_positions=c['max_position_embeddings'],
              type_vocab_size=c['type_vocab_size'],
              layer_norm_eps=c.get('layer_norm_eps', 1e-12),
              hidden_dropout=c['hidden_dropout_prob'],
              attention_dropout=c['attention_probs_dropout_prob'],
              initializer_range=c.get('initializer_range', 0.02))


def config_from_hf_json(path: str | pathlib.Path, **overrides) -> BertConfig:
  """The BertConfig of a Hugging Face `config.json` (dropout rates from it unless overridden)."""
  try:
    c = json.loads(pathlib.Path(path).read_text())
    values = config_values(c)
    values['vocab_size'] = c['vocab_size']
  except (OSError, json.JSONDecodeError, KeyError) as e:
    raise BertCheckpointError(f'{path}: not a readable BERT config.json ({e!r})') from e
  if c.get('hidden_act', 'gelu') != 'gelu':
    raise BertCheckpointError(f'{path}: hidden_act {c["hidden_act"]!r}; only exact "gelu" is '
                              'implemented')
  values.update(overrides)
  return BertConfig(**values)


def flax_path(torch_key: str) -> tuple[str, ...]:
  """Flax parameter path of an encoder-relative torch key (e.g. `encoder.layer.0...weight`)."""
  key = re.sub(r'\.layer_norm\.', '.LayerNorm.', torch_key)
  module, _, leaf = key.rpartition('.')
  if module == 'embeddings.LayerNorm':
    path = ('embeddings', 'LayerNorm')
  elif module.startswith('embeddings.') and module[len('embeddings.'):] in _EMBEDDINGS:
    if leaf != 'weight':
      raise BertCheckpointError(f'{torch_key}: an embedding table has only a weight')
    return ('embeddings', module[len('embeddings.'):], 'embedding')
  elif module == 'pooler.dense':
    path = ('pooler',)
  else:
    m = re.fullmatch(r'encoder\.layer\.(\d+)\.(.+)', module)
    if not m or m.group(2) not in _LAYER_MODULES:
      raise BertCheckpointError(f'{torch_key}: not a BERT encoder parameter')
    path = (f'layer_{m.group(1)}', _LAYER_MODULES[m.group(2)])
  is_norm = path[-1].endswith('LayerNorm')
  names = {'weight': 'scale' if is_norm else 'kernel', 'bias': 'bias',
           'gamma': 'scale', 'beta': 'bias'}
  if leaf not in names or (leaf in ('gamma', 'beta') and not is_norm):
    raise BertCheckpointError(f'{torch_key}: unknown tensor kind {leaf!r}')
  return path + (names[leaf],)


def abstract_params(config: BertConfig) -> dict:
  """Shapes of the Flax parameters of `BertModel(config)` (nothing allocated)."""
  ids = jnp.zeros((1, 2), jnp.int32)
  features = None if config.vocab_size else jnp.zeros((1, 2, config.hidden_size))
  model = BertModel(config)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), None if features is not None
                                           else ids, ids, ids, ids, features))['params']


def flat_shapes(tree: dict) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Path tuple -> shape of every leaf of a (possibly abstract) tree."""
  return {tuple(k.key for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def place(flat: dict, path: tuple[str, ...], value: np.ndarray, expected: dict,
          source: str) -> None:
  """Puts `value` (torch layout) at `path`, transposing Linear weights; checks the shape."""
  if path not in expected:
    raise BertCheckpointError(f'{source} maps to {"/".join(path)}, which the model lacks')
  if path[-1] == 'kernel':
    value = value.T
  if tuple(value.shape) != expected[path]:
    raise BertCheckpointError(f'{source} has shape {tuple(value.shape)}; the model expects '
                              f'{expected[path]} at {"/".join(path)}')
  if path in flat:
    raise BertCheckpointError(f'{source} fills {"/".join(path)} a second time')
  flat[path] = np.asarray(value, np.float32)


def nest(flat: dict[tuple[str, ...], np.ndarray]) -> dict[str, Any]:
  """{path tuple: array} -> nested dict."""
  tree: dict[str, Any] = {}
  for path, array in flat.items():
    node = tree
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = array
  return tree


def check_complete(flat: dict, expected: dict, what: str) -> None:
  """Raises naming the model parameters the checkpoint left unfilled."""
  missing = sorted('/'.join(p) for p in set(expected) - set(flat))
  if missing:
    raise BertCheckpointError(f'{what} does not fill {len(missing)} model parameters: '
                              f'{missing[:8]}')


def check_position_ids(value: np.ndarray, source: str) -> None:
  """The `position_ids` buffer of newer checkpoints must be 0..n-1 (we do not store it)."""
  if not np.array_equal(np.asarray(value).reshape(-1), np.arange(np.asarray(value).size)):
    raise BertCheckpointError(f'{source}: position_ids buffer is not 0..n-1; such a '
                              'checkpoint is not supported')


def params_from_state_dict(state_dict: dict[str, np.ndarray], config: BertConfig,
                           source: str = 'state_dict') -> dict[str, Any]:
  """Flax params of `BertModel(config)` from an encoder-relative state_dict (no prefix)."""
  expected = flat_shapes(abstract_params(config))
  flat = {}
  for key, value in state_dict.items():
    if key == 'embeddings.position_ids':
      check_position_ids(value, f'{source}: {key}')
      continue
    place(flat, flax_path(key), np.asarray(value), expected, f'{source}: {key}')
  check_complete(flat, expected, source)
  return nest(flat)


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Tensors of a `.safetensors` file or a zip-serialised `.bin`/`.pth`, as NumPy arrays."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'no BERT checkpoint at {path}: download model.safetensors of '
                            'bert-base-cased (see the README, "MMT")')
  if path.suffix == '.safetensors':
    try:
      return dict(safetensors_numpy.load_file(str(path)))
    except Exception as e:  # safetensors raises its own SafetensorError
      raise BertCheckpointError(f'{path}: not a readable safetensors file ({e})') from e
  blob = load_pth(path)
  if isinstance(blob, dict) and isinstance(blob.get('state_dict'), dict):
    blob = blob['state_dict']
  if not isinstance(blob, dict):
    raise BertCheckpointError(f'{path}: expected a state_dict, found {type(blob).__name__}')
  return {k: np.asarray(v) for k, v in blob.items()}


def load_pretrained(path: str | pathlib.Path, config: BertConfig) -> dict[str, Any]:
  """Flax params of a Hugging Face BERT checkpoint (`bert.` prefix optional, `cls.*` dropped)."""
  state_dict = read_state_dict(path)
  encoder, heads = {}, []
  for key, value in state_dict.items():
    if key.startswith('cls.'):
      heads.append(key)
    else:
      encoder[key[len('bert.'):] if key.startswith('bert.') else key] = value
  if heads:
    logging.info('%s: dropped %d pre-training head tensors (cls.*), not part of the encoder',
                 path, len(heads))
  return params_from_state_dict(encoder, config, str(path))


def weights_in(bert_dir: str | pathlib.Path) -> pathlib.Path:
  """The weight file of a Hugging Face BERT folder (model.safetensors or pytorch_model.bin)."""
  folder = pathlib.Path(bert_dir).expanduser()
  for name in WEIGHT_FILES:
    if (folder / name).is_file():
      return folder / name
  raise FileNotFoundError(f'{folder} holds neither {" nor ".join(WEIGHT_FILES)}: download '
                          'bert-base-cased\'s model.safetensors and vocab.txt into it (see the '
                          'README, "MMT") and pass it as --config.model.bert_dir')
