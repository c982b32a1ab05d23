"""Importing reference `trained_model.pth` files, checked against a NumPy forward pass."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common
from jaxretrieval import checkpointing
from jaxretrieval.models import Batch, RetrievalModel
from jaxretrieval.models.spec import model_spec
from jaxretrieval.torch_import import convert
from jaxretrieval.torch_import.importer import config_from_reference, import_checkpoint
from jaxretrieval.torch_import.torch_pickle import TorchFileError, load_pth
from tests import compiled, in_process
from tests.reference_checkpoint import (
  REF_EXPERTS,
  random_state_dict,
  reference_config,
  reference_keys,
  write_reference_checkpoint,
)
from tests.reference_numpy import ReferenceCENet, ranger_steps

CASES = [  # (dataset, reference modalities, variant)
    ('CLOTHO', ['audio', 'vggsound'], 'ce'),
    ('AudioCaps', ['audio', 'vggsound'], 'moee'),
    ('CLOTHO', ['audio'], 'mimic'),
    ('AudioCaps', ['r2p1d.r2p1d-ig65m.0', 'imagenet.resnext101_32x48d.0', 'audio'], 'ce'),
]
MAX_TOKENS = {'text': 7, 'audio': 5, 'vggsound': 6}


def _inputs(modalities, n=5, seed=0):
  rng = np.random.default_rng(seed)
  experts, ind = {}, {}
  for m in modalities:
    d, temporal = REF_EXPERTS[m]
    shape = (n, MAX_TOKENS.get(m, 4), d) if temporal == 'vlad' else (n, d)
    experts[m] = rng.normal(size=shape).astype(np.float32)
    ind[m] = np.ones(n, np.float32)
  if len(modalities) > 1:  # one item misses its first expert (zero-filled, masked)
    ind[sorted(modalities)[0]][2] = 0.0
    experts[sorted(modalities)[0]][2] = np.nan
  text = rng.normal(size=(n, MAX_TOKENS['text'], 300)).astype(np.float32)
  text[1, 4:] = 0.0  # zero padding, seen by the mask-blind NetVLAD
  return experts, ind, text


def _write(tmp_path, dataset, modalities, variant, seed=0, **kwargs):
  keys = reference_keys(variant, modalities)
  state_dict = random_state_dict(keys, seed)
  config = reference_config(dataset, modalities, variant, MAX_TOKENS)
  path = tmp_path / 'trained_model.pth'
  write_reference_checkpoint(path, state_dict, config, **kwargs)
  return path, state_dict, config


@pytest.mark.parametrize('dataset,modalities,variant', CASES)
def test_imported_model_matches_numpy_reference(tmp_path, dataset, modalities, variant):
  path, state_dict, _ = _write(tmp_path, dataset, modalities, variant)
  meta = import_checkpoint(str(path), str(tmp_path / 'work'), common.get_config())
  assert meta['variant'] == variant and meta['epoch'] == 12
  restored = checkpointing.restore(checkpointing.manager(tmp_path / 'work'), 12)
  config = json.loads((tmp_path / 'work' / 'config.json').read_text())
  spec = model_spec(ml_collections.ConfigDict(config),
                    {convert.short_name(m): REF_EXPERTS[m] for m in modalities})
  model = RetrievalModel(spec)
  reference = ReferenceCENet(state_dict, modalities, variant)
  experts, ind, text = _inputs(modalities)
  batch = Batch(experts={convert.short_name(m): jnp.asarray(x) for m, x in experts.items()},
                availability=jnp.asarray(np.stack([ind[m] for m in sorted(modalities)], 1)),
                text=jnp.asarray(text))
  variables = restored['model']
  for train in (False, True):
    ours = compiled.apply(model, variables, batch, train=train, mutable=('batch_stats',))[0]
    want = reference.similarity(experts, ind, text.astype(np.float64), train=train)
    np.testing.assert_allclose(ours, want, atol=2e-5, err_msg=f'train={train}')


def test_config_round_trip_and_protocol(tmp_path):
  _, state_dict, config = _write(tmp_path, 'CLOTHO', ['audio', 'vggsound'], 'ce')
  spec = convert.spec_from_reference(config, state_dict)
  ours = config_from_reference(config, spec, common.get_config())
  assert ours.dataset == 'clotho' and tuple(ours.experts) == ('vggish', 'vggsound')
  assert (ours.max_tokens.text, ours.max_tokens.vggish, ours.max_tokens.vggsound) == (7, 5, 6)
  assert ours.num_test_captions == 5 and ours.loss.margin == 0.2
  assert model_spec(ours) == spec


def test_ranger_state_is_imported_with_transposed_kernels(tmp_path):
  modalities = ['audio']
  keys = reference_keys('mimic', modalities)
  state_dict = random_state_dict(keys, 1)
  params = [k for k, _ in keys if not k.endswith(('running_mean', 'running_var',
                                                  'num_batches_tracked'))]
  import torch
  state = {i: {'step': 37, 'exp_avg': torch.full(state_dict[k].shape, float(i)),
               'exp_avg_sq': torch.full(state_dict[k].shape, 2.0 * i),
               'slow_buffer': torch.from_numpy(state_dict[k] * 0.5)} for i, k in enumerate(params)}
  optimizer = {'state': state, 'param_groups': [{'lr': 0.0035, 'betas': (0.95, 0.999),
                                                 'params': list(range(len(params)))}]}
  path = tmp_path / 'm.pth'
  write_reference_checkpoint(path, state_dict, reference_config('CLOTHO', modalities, 'mimic',
                                                                MAX_TOKENS), optimizer=optimizer)
  ref = convert.read_reference_checkpoint(path)
  spec = convert.spec_from_reference(ref.config, ref.state_dict)
  converted = convert.convert_ranger_state(ref.optimizer, ref.state_dict, spec)
  assert int(converted['step']) == 37
  assert float(converted['learning_rate']) == pytest.approx(0.0035)
  i = params.index('ce.text_GU.0.fc.weight')
  np.testing.assert_array_equal(converted['mu']['text_gu_vggish']['fc']['kernel'],
                                np.full((6000, 768), float(i), np.float32))
  np.testing.assert_allclose(converted['slow']['text_gu_vggish']['fc']['kernel'],
                             state_dict['ce.text_GU.0.fc.weight'].T * 0.5)
  variables = convert.convert_state_dict(ref.state_dict, spec)
  assert (jax.tree.structure(converted['mu']) == jax.tree.structure(variables['params']))


def test_cli_writes_an_evaluable_workdir(tmp_path):
  path, _, config = _write(tmp_path, 'CLOTHO', ['audio'], 'mimic')
  (tmp_path / 'config.json').write_text(json.dumps(config))
  out = in_process.run_module('jaxretrieval.torch_import', [
      '--checkpoint', str(path), '--config', str(tmp_path / 'config.json'), '--out',
      str(tmp_path / 'w'), f'--data_dir={tmp_path / "tfds"}'])
  assert out.returncode == 0, out.stderr
  assert '7,389,127 parameters' in out.stdout
  assert checkpointing.latest_step(tmp_path / 'w') == 12
  written = json.loads((tmp_path / 'w' / 'config.json').read_text())
  assert written['experts'] == ['vggish'] and written['data_dir'] == str(tmp_path / 'tfds')


def test_cli_names_a_missing_base_config(tmp_path):
  path, _, _ = _write(tmp_path, 'CLOTHO', ['audio'], 'mimic')
  out = subprocess.run([sys.executable, '-m', 'jaxretrieval.torch_import', '--checkpoint',
                        str(path), '--out', str(tmp_path / 'w'),
                        f'--base_config={tmp_path / "configs" / "common.py"}'],
                       capture_output=True, text=True)
  assert out.returncode != 0 and not (tmp_path / 'w').exists()
  assert out.stderr.strip().splitlines()[-1] == (
      f'torch_import: cannot load --base_config={tmp_path / "configs" / "common.py"} (the '
      'experiment defaults): run from the repository root, or pass '
      '--base_config=PATH/configs/common.py')


def test_unknown_reference_dataset_lists_the_registered_ones(tmp_path):
  _, state_dict, config = _write(tmp_path, 'CLOTHO', ['audio'], 'mimic')
  config['data_loader']['args']['dataset_name'] = 'MSRVTT'
  spec = convert.spec_from_reference(config, state_dict)
  base = common.get_config()
  with pytest.raises(ValueError, match=r"reference dataset 'MSRVTT' is not supported: expected "
                                       r"one of \['ActivityNet', 'AudioCaps', 'CLOTHO', "):
    config_from_reference(config, spec, base)
  config['data_loader']['args']['dataset_name'] = 'ActivityNet'
  ours = config_from_reference(config, spec, base)
  assert (ours.dataset, ours.val_split, ours.flaky) == ('activitynet_captions', 'val_1',
                                                        ('vggish',))
  assert base.to_dict() == common.get_config().to_dict()  # the defaults are left as they were


def test_reader_never_imports_torch(tmp_path):
  path, _, _ = _write(tmp_path, 'CLOTHO', ['audio'], 'mimic')
  code = (f'import sys; from jaxretrieval.torch_import.torch_pickle import load_pth; '
          f'd = load_pth({str(path)!r}); assert "torch" not in sys.modules; '
          f'print(d["config"]._config["data_loader"]["args"]["dataset_name"])')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == 'CLOTHO'


def test_mismatches_are_reported_with_the_key(tmp_path):
  _, state_dict, config = _write(tmp_path, 'CLOTHO', ['audio', 'vggsound'], 'ce')
  spec = convert.spec_from_reference(config, state_dict)
  broken = dict(state_dict)
  del broken['ce.g_reason_1.weight']
  with pytest.raises(convert.CheckpointMismatch, match='does not fill.*relation/fc_in/kernel'):
    convert.convert_state_dict(broken, spec)
  broken = dict(state_dict, **{'ce.video_GU.1.cg.fc.weight': np.zeros((768, 767), np.float32)})
  with pytest.raises(convert.CheckpointMismatch, match=r"ce.video_GU.1.cg.fc.weight.*\(767, 768\)"):
    convert.convert_state_dict(broken, spec)
  broken = dict(state_dict, **{'ce.mystery.weight': np.zeros(3, np.float32)})
  with pytest.raises(convert.CheckpointMismatch, match='ce.mystery.weight'):
    convert.convert_state_dict(broken, spec)
  legacy = dict(state_dict, **{'ce.moe_cg.fc.weight': np.zeros((2, 2), np.float32)})
  convert.convert_state_dict(legacy, spec)  # the reference drops these keys too
  bad = json.loads(json.dumps(config))
  bad['arch']['args']['use_ce'] = 'triplet'
  with pytest.raises(convert.CheckpointMismatch, match='triplet'):
    convert.spec_from_reference(bad, state_dict)


def test_unreadable_files_are_reported(tmp_path):
  with pytest.raises(FileNotFoundError, match='no checkpoint file'):
    load_pth(tmp_path / 'absent.pth')
  (tmp_path / 'legacy.pth').write_bytes(b'\x80\x02not a zip')
  with pytest.raises(TorchFileError, match='not a zip-serialised'):
    load_pth(tmp_path / 'legacy.pth')


@pytest.mark.slow
def test_imported_checkpoint_evaluates_like_the_reference(tmp_path, miniature_clotho):
  """Import -> launch.py --mode=eval on a miniature CLOTHO equals the NumPy reference
  (the torch_import CLI's --data_dir: test_cli_writes_an_evaluable_workdir)."""
  from jaxretrieval.metrics import retrieval_metrics
  from tests import in_process
  data_dir, contents = miniature_clotho
  modalities = ['audio', 'vggsound']
  path, state_dict, config = _write(tmp_path, 'CLOTHO', modalities, 'ce', seed=5)
  import_checkpoint(str(path), str(tmp_path / 'w'), common.get_config(), data_dir=str(data_dir))
  # `python launch.py ...`, run in this process (tests.in_process).
  evaluated = in_process.run_module('launch', ['--mode=eval', f'--workdir={tmp_path / "w"}'])
  assert evaluated.returncode == 0, evaluated.stderr[-5000:]
  ours = json.loads((tmp_path / 'w' / 'eval_results.json').read_text())['test']
  assert '| ce — vggish+vggsound on clotho |' in evaluated.stdout  # the metrics table
  refused = in_process.run_module('launch', [f'--workdir={tmp_path / "w"}'])
  assert refused.returncode != 0 and 'holds an imported checkpoint' in refused.stderr
  # The reference's evaluation: first max_tokens frames, zero padding, 5 captions per item.
  ids = contents['ids']['test']
  names = {'audio': 'vggish', 'vggsound': 'vggsound'}
  experts, ind = {}, {}
  for m in modalities:
    t = MAX_TOKENS[m]
    experts[m] = np.zeros((len(ids), t, REF_EXPERTS[m][0]))
    for i, item in enumerate(ids):
      x = contents['features'][names[m]][item][:t]
      experts[m][i, :len(x)] = x
    ind[m] = np.ones(len(ids))
  text = np.zeros((len(ids) * 5, MAX_TOKENS['text'], 300))
  for i, item in enumerate(ids):
    for c, v in enumerate(contents['vectors'][item]):
      text[i * 5 + c, :min(len(v), MAX_TOKENS['text'])] = v[:MAX_TOKENS['text']]
  sims = ReferenceCENet(state_dict, modalities, 'ce').similarity(experts, ind, text)
  want = retrieval_metrics(sims.astype(np.float32), np.ones((len(ids), 5)))
  for d in ('t2a', 'a2t'):
    for k in ('R1', 'R5', 'R10', 'MedR', 'MeanR'):
      assert ours[d][k] == pytest.approx(want[d][k]), (d, k)


def _ranger_state(state_dict, keys, step, lr, seed=0):
  """A reference Ranger state_dict after `step` steps (random moments and slow weights)."""
  import torch
  rng = np.random.default_rng(seed)
  params = [k for k, _ in keys if not k.endswith(('running_mean', 'running_var',
                                                  'num_batches_tracked'))]
  state = {} if step == 0 else {i: {
      'step': step,
      'exp_avg': torch.from_numpy(rng.normal(0, 1e-2, state_dict[k].shape).astype(np.float32)),
      'exp_avg_sq': torch.from_numpy(rng.uniform(1e-6, 1e-4, state_dict[k].shape)
                                     .astype(np.float32)),
      'slow_buffer': torch.from_numpy((state_dict[k] + rng.normal(0, 1e-2, state_dict[k].shape))
                                      .astype(np.float32))} for i, k in enumerate(params)}
  group = {'lr': lr, 'initial_lr': 0.01, 'alpha': 0.5, 'k': 6, 'step_counter': 0,
           'betas': (0.95, 0.999), 'N_sma_threshhold': 5, 'eps': 1e-5, 'weight_decay': 1e-3,
           'params': list(range(len(params)))}
  return {'state': state, 'param_groups': [group]}


@pytest.fixture(scope='module')
def miniature_clotho(tmp_path_factory):
  """(a TFDS data_dir holding a miniature CLOTHO release, the release's contents)."""
  from tests.data.test_release_builders import build
  from tests.release_miniature import make_contents, write_release
  root = tmp_path_factory.mktemp('clotho')
  contents = make_contents('clotho', {'train': 4, 'val': 3, 'test': 9})
  build('clotho', root, write_release('clotho', root, contents))
  return root / 'tfds', contents


def _fine_tune_config(imported, data_dir):
  from jaxretrieval import train
  config = ml_collections.ConfigDict(json.loads((imported / 'config.json').read_text()))
  config.data_dir = str(data_dir)
  config.init_from = str(imported)  # config.init_optimizer stays at its default, True
  config.num_epochs = 1
  assert config.init_optimizer
  return config, train


@pytest.mark.slow
def test_fine_tuning_resumes_the_imported_ranger_state(tmp_path, miniature_clotho):
  """torch_import of a stepped Ranger -> init_from with the default init_optimizer: the steps
  that follow are the reference Ranger's, from its state and its decayed learning rate."""
  keys = reference_keys('mimic', ['audio'])
  state_dict = random_state_dict(keys, 2)
  lr, t0 = 0.01 * 0.95 ** 19, 40  # steps 41..44 cross the LookAhead sync at step 42
  ranger = _ranger_state(state_dict, keys, t0, lr)
  path = tmp_path / 'trained_model.pth'
  write_reference_checkpoint(path, state_dict, reference_config('CLOTHO', ['audio'], 'mimic',
                                                                MAX_TOKENS), optimizer=ranger)
  meta = import_checkpoint(str(path), str(tmp_path / 'imported'), common.get_config())
  assert meta['learning_rate'] == pytest.approx(lr) and meta['optimizer_steps'] == t0
  config, train = _fine_tune_config(tmp_path / 'imported', miniature_clotho[0])
  run = train.Experiment(config, tmp_path / 'tuned')
  state, train_meta = train._initialise_from(run)
  assert train_meta.base_lr == pytest.approx(lr)
  imported = checkpointing.restore(checkpointing.manager(tmp_path / 'imported'), 12,
                                   ('model', 'optimizer'))
  rng = np.random.default_rng(1)
  grads = [jax.tree.map(lambda x: rng.normal(0, 1e-2, x.shape).astype(np.float32),
                        state.params) for _ in range(4)]
  apply = jax.jit(lambda state, g: state.apply_gradients(grads=g))  # one program, not per op
  for g in grads:
    state = apply(state, g)
  flat = lambda tree: jax.tree.leaves(tree)
  opt = imported['optimizer']
  for i, (p0, m, v, slow, ours) in enumerate(zip(
      flat(imported['model']['params']), flat(opt['mu']), flat(opt['nu']), flat(opt['slow']),
      flat(state.params))):
    # The epoch has one step (4 items, batch 128): the rate decays x0.95 after each.
    want = ranger_steps(p0, lambda p, t: flat(grads[t - t0 - 1])[i], 4,
                        lr=lambda t: lr * 0.95 ** (t - t0 - 1), state=(m, v, slow, t0))[t0 + 4]
    np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-7)
  # The whole fine-tuning run goes through with the default config.
  results = train.train_and_evaluate(config, str(tmp_path / 'tuned'))
  assert results['epochs_trained'] == 1


def test_a_ranger_that_never_stepped_imports_its_weights_and_learning_rate(
    tmp_path, miniature_clotho):
  keys = reference_keys('mimic', ['audio'])
  state_dict = random_state_dict(keys, 3)
  path = tmp_path / 'trained_model.pth'
  write_reference_checkpoint(path, state_dict, reference_config('CLOTHO', ['audio'], 'mimic',
                                                                MAX_TOKENS),
                             optimizer=_ranger_state(state_dict, keys, 0, 0.01))
  out = in_process.run_module('jaxretrieval.torch_import', [
      '--checkpoint', str(path), '--out', str(tmp_path / 'imported')])
  assert out.returncode == 0, out.stderr
  assert 'the Ranger state is empty (never stepped), lr 0.01' in out.stdout
  config, train = _fine_tune_config(tmp_path / 'imported', miniature_clotho[0])
  state, meta = train._initialise_from(train.Experiment(config, tmp_path / 'tuned'))
  assert meta.base_lr == pytest.approx(0.01) and int(state.opt_state.count) == 0
  want = convert.convert_state_dict(state_dict, convert.spec_from_reference(
      reference_config('CLOTHO', ['audio'], 'mimic', MAX_TOKENS), state_dict))['params']
  for slow, weight, w in zip(jax.tree.leaves(state.opt_state.slow), jax.tree.leaves(state.params),
                             jax.tree.leaves(want)):
    np.testing.assert_array_equal(slow, w)
    np.testing.assert_array_equal(weight, w)


def test_tensor_views_outside_their_storage_are_refused():
  from jaxretrieval.torch_import.torch_pickle import _rebuild_tensor
  storage = np.arange(6, dtype=np.float32)
  np.testing.assert_array_equal(_rebuild_tensor(storage, 1, (2, 2), (2, 1)), [[1, 2], [3, 4]])
  for offset, size, stride in ((2, (5,), (1,)), (-1, (2,), (1,)), (0, (2, 2), (5, 1)),
                               (0, (3,), (-1,)), (6, (), ())):
    with pytest.raises(TorchFileError, match='does not fit its storage'):
      _rebuild_tensor(storage, offset, size, stride)
