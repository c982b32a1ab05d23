"""Flax BERT against a torch BERT, Hugging Face checkpoint reading, and BERT tokens."""

import jax
import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy
import torch

from jaxretrieval.bert_tokens import BertTokens
from jaxretrieval.models.bert import BertConfig, BertModel
from jaxretrieval.torch_import import bert_convert
from tests.models import mmt_torch_reference as ref

VOCAB = 30


def _flax_config(c, vocab_size):
  return BertConfig(vocab_size=vocab_size, hidden_size=c.hidden_size,
                    num_layers=c.num_hidden_layers, num_heads=c.num_attention_heads,
                    intermediate_size=c.intermediate_size,
                    max_positions=c.max_position_embeddings,
                    type_vocab_size=c.type_vocab_size)


def random_torch_bert(vocab_size, norm_name, seed=0):
  """A tiny torch BERT with every tensor random (LayerNorms too, so they are exercised)."""
  torch.manual_seed(seed)
  c = ref.tiny_bert_config(vocab_size)
  model = ref.Bert(c, norm_name).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn_like(p) * 0.2)
  return model, c


def _text_inputs(rng, n=3, length=9):
  ids = rng.integers(0, VOCAB, (n, length))
  mask = np.ones((n, length), np.int64)
  mask[1, 5:] = 0
  mask[2, 2:] = 0
  types = rng.integers(0, 2, (n, length))
  pos = np.broadcast_to(np.arange(length), (n, length)).copy()
  return ids, mask, types, pos


def _torch_out(model, ids, mask, types, pos, features=None):
  t = lambda a: torch.as_tensor(a)
  with torch.no_grad():
    seq, pooled = model(None if ids is None else t(ids), t(mask), t(types), t(pos),
                        None if features is None else t(features))
  return seq.numpy(), pooled.numpy()


def _hf_checkpoint(model, old_names):
  """The torch state_dict as a Hugging Face BertForPreTraining file would hold it."""
  out = {}
  for k, v in model.state_dict().items():
    if old_names and 'LayerNorm' in k:
      k = k.replace('.weight', '.gamma').replace('.bias', '.beta')
    out[f'bert.{k}'] = v.numpy()
  out['cls.predictions.bias'] = np.zeros(VOCAB, np.float32)  # a pre-training head
  return out


@pytest.mark.parametrize('fmt', ['safetensors', 'bin'])
def test_text_bert_matches_torch_from_hf_checkpoint(tmp_path, fmt):
  model, c = random_torch_bert(VOCAB, 'LayerNorm')
  state = _hf_checkpoint(model, old_names=fmt == 'safetensors')
  if fmt == 'safetensors':
    path = tmp_path / 'model.safetensors'
    safetensors_numpy.save_file(state, str(path))
  else:
    path = tmp_path / 'pytorch_model.bin'
    torch.save({k: torch.as_tensor(v) for k, v in state.items()}, path)
  params = bert_convert.load_pretrained(path, _flax_config(c, VOCAB))
  inputs = _text_inputs(np.random.default_rng(0))
  seq, pooled = BertModel(_flax_config(c, VOCAB)).apply({'params': params}, *inputs)
  want_seq, want_pooled = _torch_out(model, *inputs)
  valid = inputs[1].astype(bool)  # padded rows attend too, but only valid rows matter
  np.testing.assert_allclose(np.asarray(seq)[valid], want_seq[valid], atol=1e-5)
  np.testing.assert_allclose(pooled, want_pooled, atol=1e-5)


def test_feature_bert_matches_torch_with_original_layer_norm_names():
  model, c = random_torch_bert(None, 'layer_norm', seed=1)
  rng = np.random.default_rng(1)
  _, mask, types, pos = _text_inputs(rng)
  features = rng.normal(size=mask.shape + (c.hidden_size,)).astype(np.float32)
  config = _flax_config(c, None)
  params = bert_convert.params_from_state_dict(
      {k: v.numpy() for k, v in model.state_dict().items()}, config)
  seq, pooled = BertModel(config).apply({'params': params}, None, mask, types, pos, features)
  want_seq, want_pooled = _torch_out(model, None, mask, types, pos, features)
  np.testing.assert_allclose(seq, want_seq, atol=1e-5)
  np.testing.assert_allclose(pooled, want_pooled, atol=1e-5)


def test_dropout_is_active_in_training_only():
  model, c = random_torch_bert(VOCAB, 'LayerNorm')
  config = _flax_config(c, VOCAB)
  params = bert_convert.params_from_state_dict(
      {k: v.numpy() for k, v in model.state_dict().items()}, config)
  inputs = _text_inputs(np.random.default_rng(0))
  bert = BertModel(config)
  run = lambda seed: bert.apply({'params': params}, *inputs, train=True,
                                rngs={'dropout': jax.random.key(seed)})[0]
  assert not np.allclose(run(0), run(1))
  np.testing.assert_array_equal(bert.apply({'params': params}, *inputs)[0],
                                bert.apply({'params': params}, *inputs)[0])


def test_checkpoint_errors_name_the_tensor():
  model, c = random_torch_bert(VOCAB, 'LayerNorm')
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  config = _flax_config(c, VOCAB)
  missing = dict(state)
  del missing['encoder.layer.1.output.dense.bias']
  with pytest.raises(bert_convert.BertCheckpointError, match='layer_1/output/bias'):
    bert_convert.params_from_state_dict(missing, config)
  wrong = dict(state, **{'pooler.dense.weight': np.zeros((3, 3), np.float32)})
  with pytest.raises(bert_convert.BertCheckpointError, match='pooler.dense.weight'):
    bert_convert.params_from_state_dict(wrong, config)
  unknown = dict(state, **{'encoder.layer.0.crossattention.dense.weight': np.zeros(1)})
  with pytest.raises(bert_convert.BertCheckpointError, match='crossattention'):
    bert_convert.params_from_state_dict(unknown, config)
  with pytest.raises(bert_convert.BertCheckpointError, match='position_ids'):
    bert_convert.params_from_state_dict(
        dict(state, **{'embeddings.position_ids': np.array([[0, 2, 1]])}), config)
  params = bert_convert.params_from_state_dict(
      dict(state, **{'embeddings.position_ids': np.arange(40)[None]}), config)
  assert params['pooler']['kernel'].shape == (64, 64)


def test_bert_base_cased_parameter_count():
  shapes = bert_convert.flat_shapes(bert_convert.abstract_params(BertConfig()))
  assert sum(int(np.prod(s)) for s in shapes.values()) == 108_310_272


def test_config_from_hf_json(tmp_path):
  path = tmp_path / 'config.json'
  path.write_text('{"vocab_size": 28996, "hidden_size": 768, "num_hidden_layers": 12, '
                  '"num_attention_heads": 12, "intermediate_size": 3072, '
                  '"max_position_embeddings": 512, "type_vocab_size": 2, '
                  '"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, '
                  '"hidden_act": "gelu"}')
  assert bert_convert.config_from_hf_json(path) == BertConfig()
  assert bert_convert.config_from_hf_json(path, hidden_dropout=0.2).hidden_dropout == 0.2


WORDS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '.', ',', 'a', 'dog', 'barks', 'cafe', 'bark',
         '##s', 'the', 'car', 'passes', 'Dog', '!']


@pytest.fixture
def vocab(tmp_path):
  path = tmp_path / 'vocab.txt'
  path.write_text('\n'.join(WORDS) + '\n')
  return path


def _ids(*words):
  return [WORDS.index(w) for w in words]


def test_tokens_lowercase_strip_accents_period_and_padding(vocab):
  tokens = BertTokens(vocab, max_tokens=8)
  ids, mask = tokens.encode([['A', 'Dog', 'barks', 'Café'], ['the', 'dog', 'bark!'],
                             ['zebra']])
  assert ids[0].tolist() == _ids('[CLS]', 'a', 'dog', 'barks', 'cafe', '.', '[SEP]') + [0]
  assert ids[1].tolist() == _ids('[CLS]', 'the', 'dog', 'bark', '!', '[SEP]') + [0, 0]
  assert ids[2].tolist() == _ids('[CLS]', '[UNK]', '.', '[SEP]') + [0] * 4
  assert mask.tolist()[0] == [1] * 7 + [0] and mask[2].sum() == 4
  cased = BertTokens(vocab, max_tokens=8, lowercase=False)
  # Without lower-casing the cased vocabulary is used as is (and capitalize() applies).
  assert cased.encode([['dog', 'barks']])[0][0, :3].tolist() == _ids('[CLS]', 'Dog', 'barks')


def test_tokens_cut_words_then_tokens_last_is_sep(vocab):
  tokens = BertTokens(vocab, max_tokens=5)
  ids, mask = tokens.encode([['a', 'dog', 'barks', 'a', 'car', 'passes', 'the', 'dog']])
  # Words cut to 5, a period added, then [CLS] + 7 tokens + [SEP] cut to 5 with [SEP] last.
  assert ids[0].tolist() == _ids('[CLS]', 'a', 'dog', 'barks', '[SEP]')
  assert mask[0].tolist() == [1] * 5
  # Word pieces count as tokens: "barks" is one piece, "barkss" two.
  assert BertTokens(vocab, 6).encode([['barkss']])[0][0].tolist() == _ids(
      '[CLS]', 'barks', '##s', '.', '[SEP]') + [0]


def test_fused_captions_are_one_query(vocab):
  tokens = BertTokens(vocab, max_tokens=10)
  ids, _ = tokens.encode_captions(['a dog barks', 'the car passes'], fuse=True)
  assert ids.tolist() == [_ids('[CLS]', 'a', 'dog', 'barks', 'the', 'car', 'passes', '.',
                               '[SEP]') + [0]]
  assert tokens.encode_captions(['a dog barks', 'the car passes'])[0].shape == (2, 10)


def test_bad_vocabulary_is_refused(tmp_path):
  with pytest.raises(FileNotFoundError, match='vocab.txt'):
    BertTokens(tmp_path / 'vocab.txt', 8)
  path = tmp_path / 'v.txt'
  path.write_text('a\n[UNK]\n[CLS]\n[SEP]\n')
  with pytest.raises(ValueError, match=r"lacks \['\[PAD\]'\]"):
    BertTokens(path, 8)


def test_unreadable_checkpoints_are_refused(tmp_path):
  bad = tmp_path / 'model.safetensors'
  bad.write_bytes(b'not a safetensors file')
  with pytest.raises(bert_convert.BertCheckpointError, match='model.safetensors: not a readable'):
    bert_convert.load_pretrained(bad, BertConfig())
  with pytest.raises(FileNotFoundError, match='bert-base-cased'):
    bert_convert.load_pretrained(tmp_path / 'missing.safetensors', BertConfig())
