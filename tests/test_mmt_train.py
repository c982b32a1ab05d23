"""MMT through train.py and launch.py on synthcaps/tiny: it learns, evaluates, and its pipeline
draws batches, tokens and frames as the original does."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tokenizers import pre_tokenizers

from configs import mmt_synthcaps
from jaxretrieval import checkpointing, input_pipeline, replicas, train
from jaxretrieval.bert_tokens import BertTokens
from jaxretrieval.models import mmt
from tests import in_process

ROOT = pathlib.Path(__file__).resolve().parents[1]
# A model that trains in seconds: 1-layer, 32-wide transformers, BERT trained from scratch on
# a vocabulary of SynthCaps' words; 4 epochs of 50 batches of 16 drawn with replacement (as
# far above chance as 100 batches: test t2a R@1 >= 21, R@5 >= 70, a2t R@1 >= 25, R@5 >= 56 with
# seeds 0, 1 and 2).
TINY = {'tfds_name': 'synthcaps/tiny', 'batch_size': 16, 'num_epochs': 4,
        'max_samples_per_epoch': 16 * 50, 'log_every_steps': 50,
        'optimizer.learning_rate': 3e-3, 'loss.margin': 0.2,
        'model.pretrained_text': False, 'model.text_bert.hidden_size': 32,
        'model.text_bert.num_layers': 1, 'model.text_bert.num_heads': 2,
        'model.text_bert.intermediate_size': 64, 'model.text_bert.max_positions': 40,
        'model.same_dim': 32, 'model.audio_layers': 1, 'model.audio_heads': 2,
        'model.audio_intermediate': 64, 'model.audio_max_positions': 64}


@pytest.fixture(scope='module')
def vocab_dir(synthcaps_tiny, tmp_path_factory):
  """A BERT folder whose vocab.txt holds the [PAD]/[UNK]/[CLS]/[SEP] tokens and every
  lower-cased word and punctuation mark of synthcaps/tiny's captions."""
  from jaxretrieval.data import tfds_builders  # noqa: F401  (importing registers the builders)
  builder = tfds.builder('synthcaps/tiny', data_dir=str(synthcaps_tiny))
  split = pre_tokenizers.BertPreTokenizer().pre_tokenize_str
  words = set()
  for name in ('train', 'val', 'test'):
    for example in tfds.as_numpy(builder.as_dataset(split=name)):
      for caption in example['captions']:
        words.update(w for w, _ in split(caption.decode().lower()))
  folder = tmp_path_factory.mktemp('bert')
  vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '.'] + sorted(words - {'.'})
  (folder / 'vocab.txt').write_text('\n'.join(vocab) + '\n')
  return folder


def _parent(config, key: str):
  """(the ConfigDict holding a dotted key, the key's last part)."""
  *parents, leaf = key.split('.')
  for p in parents:
    config = config[p]
  return config, leaf


def tiny_mmt_config(data_dir, bert_dir, arg=None, **overrides):
  c = mmt_synthcaps.get_config(arg)
  c.data_dir, c.model.bert_dir = str(data_dir), str(bert_dir)
  c.model.text_bert.vocab_size = len((pathlib.Path(bert_dir) / 'vocab.txt').read_text().split())
  for key, value in {**TINY, **overrides}.items():
    target, leaf = _parent(c, key)
    target[leaf] = value
  return c


def _flags(config) -> list[str]:
  """The launch.py flags that make configs/mmt_synthcaps.py into `config`."""
  keys = ['data_dir', 'model.bert_dir', 'model.text_bert.vocab_size', *TINY]
  return [f'--config.{k}={(lambda t, leaf: t[leaf])(*_parent(config, k))}' for k in keys]


@pytest.fixture(scope='module')
def launched(synthcaps_tiny, vocab_dir, tmp_path_factory):
  """A tiny MMT trained and tested by `launch.py --config configs/mmt_synthcaps.py`."""
  workdir = tmp_path_factory.mktemp('mmt_run')
  config = tiny_mmt_config(synthcaps_tiny, vocab_dir)
  # `python launch.py ...`, run in this process (tests.in_process).
  done = in_process.run_module('launch', ['--config', str(ROOT / 'configs' / 'mmt_synthcaps.py'),
                                          f'--workdir={workdir}', *_flags(config)])
  assert done.returncode == 0, f'launch.py failed ({done.returncode}):\n{done.stderr[-5000:]}'
  return workdir, config, done.stdout


@pytest.mark.slow
def test_launch_trains_a_tiny_mmt_well_above_chance(launched):
  workdir, _, stdout = launched
  results = json.loads((workdir / 'results.json').read_text())
  assert results['variant'] == 'mmt' and results['experts'] == ['logmel', 'spectral']
  assert '| mmt — logmel+spectral on synthcaps |' in stdout
  # The paper's protocol: 16 test clips x 5 captions, each an independent query.
  test = results['test']
  assert (test['num_items'], test['t2a']['num_queries']) == (16, 80)
  # Chance: t2a R@1 6.25, R@5 31.25, mean rank 8.5 of 16 items; a2t (5 of 80 captions are
  # right) R@1 6.25, R@5 about 28.
  assert (test['t2a']['R1'] >= 12.5 and test['t2a']['R5'] >= 55
          and test['t2a']['MeanR'] <= 6), test['t2a']
  assert test['a2t']['R1'] >= 12.5 and test['a2t']['R5'] >= 40, test['a2t']
  # 'last_epoch' selection (the original's): the last epoch is tested, whatever validation says.
  assert results['epochs_trained'] == results['best_epoch'] == 4
  assert results['checkpoint'].endswith('checkpoints/4')
  meta = checkpointing.restore(checkpointing.manager(workdir), 4, ('meta',))['meta']
  assert meta['step'] == 4 * 50 and meta['val']['t2a']['num_queries'] == 16


def test_eval_mode_reproduces_the_test_metrics(launched):
  workdir, config, _ = launched
  evaluated = train.evaluate_workdir(config, str(workdir))
  trained = json.loads((workdir / 'results.json').read_text())
  for d in ('t2a', 'a2t'):
    for k in ('R1', 'R5', 'R10', 'MeanR'):
      assert evaluated['test'][d][k] == pytest.approx(trained['test'][d][k]), (d, k)


@pytest.fixture(scope='module')
def tiny_run(synthcaps_tiny, vocab_dir, tmp_path_factory):
  """A Run (data, model, compiled functions) of the tiny MMT, nothing trained."""
  return train.Experiment(tiny_mmt_config(synthcaps_tiny, vocab_dir), tmp_path_factory.mktemp('r'))


def test_captions_become_bert_tokens_of_the_whole_split(tiny_run, vocab_dir):
  data, c = tiny_run.test, tiny_run.config
  tokens = BertTokens(vocab_dir / 'vocab.txt', c.max_tokens.text)
  assert data.caption_count.tolist() == [5] * 16
  for i in (0, 7):
    rows = slice(data.caption_start[i], data.caption_start[i] + 5)
    ids, mask = tokens.encode_captions(data.captions[rows])
    np.testing.assert_array_equal(data.caption_ids[rows], ids)
    np.testing.assert_array_equal(data.caption_lengths[rows], mask.sum(1))
  assert (data.caption_ids[:, 0] == 2).all() and (data.caption_ids > 1).any(1).all()


def test_original_protocol_evaluates_one_fused_query_per_item(synthcaps_tiny, vocab_dir,
                                                             tmp_path):
  config = tiny_mmt_config(synthcaps_tiny, vocab_dir, 'protocol=original')
  run = train.Experiment(config, tmp_path, train.load_datasets(config, test_only=True))
  data = run.test
  assert data.caption_count.tolist() == [1] * 16 and config.num_test_captions == 1
  tokens = BertTokens(vocab_dir / 'vocab.txt', config.max_tokens.text)
  ids, _ = tokens.encode_captions([data.captions[3]], fuse=True)
  np.testing.assert_array_equal(data.caption_ids[3:4], ids)
  metrics = run.validate(replicas.replicate(run.init_variables()), data,
                         config.num_test_captions)
  assert metrics['t2a']['num_queries'] == 16 and metrics['distinct_queries'] == 16


def test_each_item_and_distinct_query_is_embedded_once(tiny_run, monkeypatch):
  run, data = tiny_run, tiny_run.test
  variables = run.init_variables()
  embedded = []
  chunks = run.embedder._chunks
  monkeypatch.setattr(run.embedder, '_chunks',
                      lambda fn, arrays, n: embedded.append(n) or chunks(fn, arrays, n))
  rows = np.array([4, 0, 4, 9, 0, 4])
  text, weights = run.embedder.captions(replicas.replicate(variables), data, rows)
  assert embedded == [3]
  tokens = data.caption_ids[rows]
  mask = input_pipeline.token_mask(data.caption_lengths[rows], tokens.shape[1])
  want, want_weights = run.eval_model.apply(variables, tokens, mask, False,
                                            method=mmt.MMT.encode_text)
  np.testing.assert_allclose(weights, want_weights, atol=1e-5)
  for e in run.spec.expert_names:
    np.testing.assert_allclose(text[e], want[e], atol=1e-5)
  # Items: the audio inputs of a split are built once (the original's fixed frame subset).
  run.embedder.items(replicas.replicate(variables), data)
  assert run.embedder.audio_inputs(data) is run.embedder.audio_inputs(data)


def test_sampled_epochs_draw_items_with_replacement(tiny_run):
  data = tiny_run.train
  batches = list(input_pipeline.index_batches(data, 0, 0, 16, max_samples=16 * 30 + 5))
  assert len(batches) == 30 == input_pipeline.steps_per_epoch(data, 16, 16 * 30 + 5)
  items = np.concatenate([b['items'] for b in batches])
  assert all(b['row_mask'].tolist() == [1.0] * 16 for b in batches)
  # 480 draws of 48 items: every item drawn, some twice in one batch.
  assert set(items.tolist()) == set(range(48))
  assert any(len(set(b['items'].tolist())) < 16 for b in batches)
  for b in batches:  # one random caption of the drawn item per draw
    start = data.caption_start[b['items']]
    assert ((b['captions'] >= start) & (b['captions'] < start + 5)).all()
  halves = [list(input_pipeline.index_batches(data, 0, 0, 16, 2, h, max_samples=160))
            for h in (0, 1)]
  for whole, a, b in zip(batches, *halves):
    np.testing.assert_array_equal(whole['items'], np.concatenate([a['items'], b['items']]))
  other = next(input_pipeline.index_batches(data, 1, 0, 16, max_samples=160))
  assert not np.array_equal(other['items'], batches[0]['items'])


def test_training_batches_subset_long_experts_and_pool_every_frame(tiny_run):
  run, data = tiny_run, tiny_run.train
  c = run.config.copy_and_resolve_references()
  c.max_tokens.spectral = 8  # fewer than the clips' spectral frames: a random subset
  batch = next(input_pipeline.mmt_batches(data, 0, 0, 16, run.spec, c))
  assert batch['tokens'].shape == batch['token_mask'].shape == (16, c.max_tokens.text)
  assert batch['experts']['spectral'].shape == (16, 8, 32)
  assert batch['experts']['logmel'].shape == (16, c.max_tokens.logmel, 128)
  index = next(input_pipeline.index_batches(data, 0, 0, 16, max_samples=c.max_samples_per_epoch))
  np.testing.assert_array_equal(batch['tokens'], data.caption_ids[index['captions']])
  np.testing.assert_array_equal(batch['token_mask'].sum(1),
                                data.caption_lengths[index['captions']])
  for row, item in enumerate(index['items']):
    frames = data.experts['spectral'][item]
    assert len(frames) > 8
    np.testing.assert_array_equal(batch['pooled']['spectral'][row], frames.max(0))
    positions = batch['expert_positions']['spectral'][row]
    assert (np.diff(positions) >= 0).all() and batch['expert_masks']['spectral'][row].all()
    np.testing.assert_array_equal(batch['experts']['spectral'][row], frames[positions - 2])
  again = next(input_pipeline.mmt_batches(data, 0, 0, 16, run.spec, c))
  later = next(input_pipeline.mmt_batches(data, 1, 0, 16, run.spec, c))
  np.testing.assert_array_equal(again['expert_positions']['spectral'],
                                batch['expert_positions']['spectral'])
  assert not np.array_equal(later['expert_positions']['spectral'],
                            batch['expert_positions']['spectral'])


def test_a_new_run_starts_from_the_pretrained_text_bert(synthcaps_tiny, vocab_dir, tmp_path):
  from safetensors import numpy as safetensors_numpy
  import torch

  from jaxretrieval.torch_import import bert_convert
  from tests.models import mmt_torch_reference as ref
  size = len((vocab_dir / 'vocab.txt').read_text().split())
  torch.manual_seed(0)
  # TINY's text tower (so the run's init program is the one the other tests compiled); the
  # conversion of a deeper BERT: tests/models/test_mmt_import.py.
  t = TINY
  bert = ref.Bert(ref.tiny_bert_config(
      size, type_vocab_size=2, hidden_size=t['model.text_bert.hidden_size'],
      num_hidden_layers=t['model.text_bert.num_layers'],
      num_attention_heads=t['model.text_bert.num_heads'],
      intermediate_size=t['model.text_bert.intermediate_size'],
      max_position_embeddings=t['model.text_bert.max_positions']), 'LayerNorm')
  folder = tmp_path / 'bert'
  folder.mkdir()
  (folder / 'vocab.txt').write_text((vocab_dir / 'vocab.txt').read_text())
  safetensors_numpy.save_file({f'bert.{k}': v.numpy() for k, v in bert.state_dict().items()},
                              str(folder / 'model.safetensors'))
  config = tiny_mmt_config(synthcaps_tiny, folder, **{'model.pretrained_text': True})
  run = train.Experiment(config, tmp_path / 'w', train.load_datasets(config, test_only=True))
  fresh, started = run.init_variables(), run.initial_variables()
  want = bert_convert.load_pretrained(folder / 'model.safetensors', run.spec.text_bert)
  jax.tree.map(np.testing.assert_array_equal, started['params']['txt_bert'], want)
  jax.tree.map(np.testing.assert_array_equal, started['params']['vid_bert'],
               fresh['params']['vid_bert'])


def test_configuration_errors_are_one_line(synthcaps_tiny, vocab_dir, tmp_path):
  config = tiny_mmt_config(synthcaps_tiny, vocab_dir, **{'model.bert_dir': ''})
  with pytest.raises(FileNotFoundError, match='config.model.bert_dir is empty'):
    train.train_and_evaluate(config, str(tmp_path))
  config = tiny_mmt_config(synthcaps_tiny, vocab_dir, **{'model.text_bert.vocab_size': 5})
  with pytest.raises(ValueError, match=r'WordPieces, more than config.model.text_bert.vocab_size=5'):
    train.train_and_evaluate(config, str(tmp_path))
  for key, value, message in [('data_on_device', True, 'not available for MMT'),
                              ('model_selection', 'best', "model_selection='best'"),
                              ('max_samples_per_epoch', 8, 'at least config.batch_size=16')]:
    with pytest.raises(ValueError, match=message):
      train.train_and_evaluate(tiny_mmt_config(synthcaps_tiny, vocab_dir, **{key: value}),
                               str(tmp_path))
  assert not (tmp_path / 'checkpoints').exists()


# Run in a subprocess with two forced CPU devices: MMT's pmapped loss and gradients over two
# devices (embeddings all-gathered, BatchNorm over the global batch) equal one device's.
_TWO_DEVICES = '''
import functools, os
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=2')
os.environ['JAX_PLATFORMS'] = 'cpu'
import jax, ml_collections, numpy as np
from configs import mmt_synthcaps
from jaxretrieval.models import mmt
from jaxretrieval.replicas import AXIS
from jaxretrieval.step import loss_and_grads
from tests.compiled import init_like
c = mmt_synthcaps.get_config()
c.model.text_bert.update(vocab_size=30, hidden_size=32, num_layers=1, num_heads=2,
                         intermediate_size=48, max_positions=16)
c.model.update(same_dim=32, audio_layers=1, audio_heads=2, audio_intermediate=48,
               audio_max_positions=16, dropout=0.0)
spec = mmt.mmt_spec(c, {'logmel': 8, 'spectral': 6})
rng = np.random.RandomState(0)
items = [{'logmel': rng.normal(size=(3 + i % 3, 8)), 'spectral': rng.normal(size=(4, 6))}
         for i in range(8)]
del items[2]['logmel']  # a missing expert
batch = mmt.audio_batch(items, spec, {'logmel': 4, 'spectral': 5}, None)
batch['tokens'] = rng.randint(4, 30, (8, 7)).astype(np.int32)
batch['token_mask'] = np.ones((8, 7), np.int32)
batch['row_mask'] = batch['text_row_mask'] = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)
# Variables of the model's shapes valued like an init's: no init program to compile (3.8 s CPU).
variables = init_like(mmt.abstract_variables(spec), np.random.default_rng(0))
loss_config = ml_collections.ConfigDict({'name': 'max_margin', 'margin': 0.05, 'fix_norm': True})
step = functools.partial(loss_and_grads, model=mmt.MMT(spec, axis_name=AXIS),
                         loss_config=loss_config)
def run(devices):
  fn = jax.pmap(lambda p, s, b: step(p, s, b, None), axis_name=AXIS,
                devices=jax.devices()[:devices])
  rep = lambda x: np.stack([x] * devices)
  shard = lambda x: x.reshape((devices, -1) + x.shape[1:])
  loss, grads, _ = fn(jax.tree.map(rep, variables['params']),
                      jax.tree.map(rep, variables['batch_stats']), jax.tree.map(shard, batch))
  return float(loss[0]), jax.tree.map(lambda g: np.asarray(g[0]), grads)
(one, g1), (two, g2) = run(1), run(2)
assert one > 0 and abs(one - two) < 1e-5, (one, two)
worst = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)))
assert worst < 1e-5 and max(float(np.abs(a).max()) for a in jax.tree.leaves(g1)) > 0, worst
print('ok', one, two, worst)
'''


@pytest.mark.slow
def test_two_devices_match_one():
  done = subprocess.run([sys.executable, '-c', _TWO_DEVICES], capture_output=True, text=True,
                        cwd=ROOT)
  assert done.returncode == 0 and done.stdout.startswith('ok'), done.stderr[-3000:]
