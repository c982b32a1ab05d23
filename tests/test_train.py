"""Training end to end on synthcaps/tiny: results, resume after a kill, NaN stop, fine-tuning."""

import itertools
import json
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxretrieval import checkpointing, input_pipeline, report, train
from tests import in_process
from tests.conftest import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_FLAGS = ['--config.tfds_name=synthcaps/tiny', '--config.batch_size=16',
              '--config.log_every_steps=2', '--config.model.shared_dim=64',
              '--config.model.vlad_clusters=4', '--config.model.text_clusters=6']


def _launch_args(workdir, data_dir, *extra) -> list[str]:
  return ['--config', str(ROOT / 'configs' / 'ce_synthcaps.py'), f'--workdir={workdir}',
          f'--config.data_dir={data_dir}', *TINY_FLAGS, *extra]


def _start_launch(workdir, data_dir, *extra) -> subprocess.Popen:
  """`python launch.py` in a process of its own (for the test that kills it)."""
  cmd = [sys.executable, str(ROOT / 'launch.py'), *_launch_args(workdir, data_dir, *extra)]
  return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)


def test_run_writes_results_checkpoints_and_tensorboard(tiny_trained):
  workdir, results = tiny_trained
  on_disk = json.loads((workdir / 'results.json').read_text())
  assert on_disk['test']['t2a']['num_queries'] == 80 and on_disk['test']['num_items'] == 16
  assert on_disk['best_epoch'] in (1, 2) and on_disk['epochs_trained'] == 2
  for direction in ('t2a', 'a2t'):
    assert 0 <= on_disk['test'][direction]['R1'] <= on_disk['test'][direction]['R10'] <= 100
  assert results['test']['t2a']['R10'] == on_disk['test']['t2a']['R10']
  assert '| ce — logmel+spectral on synthcaps |' in (workdir / 'results.md').read_text()
  mngr = checkpointing.manager(workdir)
  assert mngr.latest_step() == 2 and checkpointing.best_step(mngr) == on_disk['best_epoch']
  assert on_disk['checkpoint'].endswith(f'checkpoints/{on_disk["best_epoch"]}')
  tags = _event_tags(workdir)
  assert {'train/loss', 'val/t2a_R1', 'test/t2a_R1', 'test/a2t_R10'} <= tags
  assert json.loads((workdir / 'config.json').read_text())['tfds_name'] == 'synthcaps/tiny'


def _event_tags(workdir) -> set[str]:
  import tensorflow as tf
  tags = set()
  for path in workdir.glob('events.out.tfevents.*'):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      tags.update(v.tag for v in event.summary.value)
  return tags


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(synthcaps_tiny, tmp_path):
  """launch.py killed (SIGKILL) once its first checkpoint is written, then resumed, ends as
  a run that was never interrupted (both of these in-process: same code, same programs)."""
  config = tiny_config(synthcaps_tiny, num_epochs=4)
  train.train_and_evaluate(config, str(tmp_path / 'straight'))
  killed = tmp_path / 'killed'
  process = _start_launch(killed, synthcaps_tiny, '--config.num_epochs=4')
  deadline = time.time() + 300
  while checkpointing.latest_step(killed) is None and time.time() < deadline:
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.wait()
  stopped_at = checkpointing.latest_step(killed)
  assert stopped_at is not None and stopped_at < 4 and not (killed / 'results.json').exists()
  train.train_and_evaluate(config, str(killed))
  a = json.loads((tmp_path / 'straight' / 'results.json').read_text())
  b = json.loads((killed / 'results.json').read_text())
  assert a['best_epoch'] == b['best_epoch']
  for d in ('t2a', 'a2t'):
    for k in ('R1', 'R5', 'R10', 'MeanR', 'MedR'):
      assert a['test'][d][k] == b['test'][d][k], (d, k)


def _truncate(checkpoint: pathlib.Path) -> None:
  """Cuts every data file of a checkpoint's model item to half its size."""
  files = [f for f in (checkpoint / 'model').rglob('*') if f.is_file() and f.stat().st_size > 64]
  assert files
  for f in files:
    f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])


@pytest.mark.slow
def test_unreadable_or_deleted_checkpoints_fall_back_with_a_warning(synthcaps_tiny, tiny_workdir,
                                                                    tmp_path, caplog):
  workdir = tmp_path / 'w'
  shutil.copytree(tiny_workdir, workdir)  # tiny_config: 2 epochs
  straight = train.train_and_evaluate(tiny_config(synthcaps_tiny, num_epochs=3),
                                      str(tmp_path / 'straight'))
  ckpt = checkpointing.checkpoint_dir(workdir)
  assert sorted(int(d.name) for d in ckpt.iterdir() if d.name.isdigit()) == [1, 2]
  # The newest checkpoint is unreadable: resume from the previous one, epoch 2 trains again.
  _truncate(ckpt / '2')
  resumed = train.train_and_evaluate(tiny_config(synthcaps_tiny, num_epochs=3), str(workdir))
  assert f'{ckpt}/2 is unreadable' in caplog.text
  assert resumed['epochs_trained'] == 3
  for d in ('t2a', 'a2t'):
    assert resumed['test'][d]['R10'] == straight['test'][d]['R10']
  # A deleted newest checkpoint destroys nothing else: the previous one resumes and the best
  # epoch is kept.
  best = checkpointing.best_step(checkpointing.manager(workdir))
  shutil.rmtree(ckpt / '3')
  again = train.train_and_evaluate(tiny_config(synthcaps_tiny, num_epochs=3), str(workdir))
  assert again['epochs_trained'] == 3 and checkpointing.best_step(
      checkpointing.manager(workdir)) == best
  # Nothing readable: one error naming the directory to delete.
  for step in checkpointing.manager(workdir).all_steps():
    _truncate(ckpt / str(step))
  with pytest.raises(checkpointing.CheckpointError, match=f'Delete {ckpt} to start over'):
    train.train_and_evaluate(tiny_config(synthcaps_tiny, num_epochs=4), str(workdir))


def test_unreadable_best_checkpoint_is_tested_with_the_next_best(synthcaps_tiny, tiny_workdir,
                                                                tmp_path, caplog):
  tmp_path = tmp_path / 'w'
  shutil.copytree(tiny_workdir, tmp_path)  # 2 epochs
  mngr = checkpointing.manager(tmp_path)
  best = checkpointing.best_step(mngr)
  other = ({1, 2} - {best}).pop()
  _truncate(checkpointing.checkpoint_dir(tmp_path) / str(best))
  results = train.evaluate_workdir(tiny_config(synthcaps_tiny), str(tmp_path))
  assert f'/{best} is unreadable' in caplog.text
  assert results['checkpoint'].endswith(f'/{other}')


def test_resuming_with_another_architecture_names_the_changed_fields(tiny_trained, synthcaps_tiny,
                                                                     tmp_path):
  source, _ = tiny_trained
  workdir = tmp_path / 'w'
  shutil.copytree(source, workdir)
  config = tiny_config(synthcaps_tiny, num_epochs=3, **{'model.shared_dim': 32})
  with pytest.raises(checkpointing.CheckpointError,
                     match=r'holds a different model.*model.shared_dim \(64 -> 32\)'):
    train.train_and_evaluate(config, str(workdir))


def test_disk_full_is_one_line_naming_the_directory(synthcaps_tiny, tmp_path, monkeypatch):
  import errno

  import orbax.checkpoint as ocp

  def full(*args, **kwargs):
    raise RuntimeError('write failed') from OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(ocp.CheckpointManager, 'save', full)
  with pytest.raises(checkpointing.CheckpointError, match=r'no space left on the device of '
                     rf'{checkpointing.checkpoint_dir(tmp_path)} while writing epoch 1 \(needs '
                     r'about \d+ MB\)'):
    train.train_and_evaluate(tiny_config(synthcaps_tiny, num_epochs=1), str(tmp_path))


@pytest.mark.parametrize('batch_size', [0, -16])
def test_bad_batch_size_is_one_clear_error(tmp_path, batch_size):
  config = tiny_config(tmp_path, batch_size=batch_size)
  with pytest.raises(ValueError, match=rf'config.batch_size={batch_size}: expected a positive '
                     'multiple'):
    train.train_and_evaluate(config, str(tmp_path))


def _nan_from_step(step: int, monkeypatch) -> None:
  """Training batches whose expert features are NaN from global step `step` (1-based) on:
  the loss turns NaN there, with the model's own train step (no program of its own)."""
  real, steps = input_pipeline.train_batches, itertools.count(1)

  def batches(*args, **kwargs):
    for batch in real(*args, **kwargs):
      if next(steps) >= step:
        batch = {**batch, 'experts': {k: np.full_like(v, np.nan)
                                      for k, v in batch['experts'].items()}}
      yield batch

  monkeypatch.setattr(input_pipeline, 'train_batches', batches)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(synthcaps_tiny,
                                                                        tmp_path, monkeypatch):
  # Epoch 1 (steps 1-3) trains normally; the loss is NaN from epoch 2's second step on, which
  # is inside a logging window (every 2 steps: 5-6).
  _nan_from_step(5, monkeypatch)
  with pytest.raises(FloatingPointError, match=r'loss is nan at step 5 \(epoch 2\); stopped: '
                     'the checkpoint of epoch 1 is kept'):
    train.train_and_evaluate(tiny_config(synthcaps_tiny, num_epochs=3), str(tmp_path))
  mngr = checkpointing.manager(tmp_path)
  assert mngr.latest_step() == 1
  restored = checkpointing.restore(mngr, 1)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored['model']))


def test_nan_loss_in_the_first_epoch_says_no_checkpoint_was_written(synthcaps_tiny, tmp_path,
                                                                   monkeypatch):
  _nan_from_step(2, monkeypatch)
  with pytest.raises(FloatingPointError, match=r'at step 2 \(epoch 1\).*no checkpoint was '
                     'written'):
    train.train_and_evaluate(tiny_config(synthcaps_tiny), str(tmp_path))
  assert checkpointing.latest_step(tmp_path) is None


@pytest.mark.slow
def test_eval_mode_prints_metrics_and_keeps_the_training_record(tiny_trained, synthcaps_tiny):
  workdir, _ = tiny_trained
  before = {n: (workdir / n).read_bytes() for n in ('results.json', 'results.md')}
  # `python launch.py` run in this process (the same flags and main, no second interpreter).
  done = in_process.run_module('launch', _launch_args(workdir, synthcaps_tiny, '--mode=eval'))
  assert done.returncode == 0, done.stderr[-5000:]
  assert '| ce — logmel+spectral on synthcaps |' in done.stdout
  assert {n: (workdir / n).read_bytes() for n in before} == before
  evaluated = json.loads((workdir / 'eval_results.json').read_text())
  training = json.loads(before['results.json'])
  assert evaluated['checkpoint'] == training['checkpoint']
  assert evaluated['data_dir'] == str(synthcaps_tiny)
  assert evaluated['test']['t2a']['R10'] == training['test']['t2a']['R10']


def test_unknown_config_field_is_one_line_with_the_nearest_name(tmp_path):
  done = subprocess.run([sys.executable, str(ROOT / 'launch.py'), '--config',
                         str(ROOT / 'configs' / 'ce_synthcaps.py'), f'--workdir={tmp_path}',
                         '--config.model.shared_dimm=3'], capture_output=True, text=True, cwd=ROOT)
  assert done.returncode != 0
  assert done.stderr.strip().splitlines() == [
      "launch.py: --config.model.shared_dimm=3: unknown config field 'shared_dimm'. Did you "
      'mean "shared_dim" instead of "shared_dimm"?']


def test_report_aggregates_seeds(tiny_trained, tmp_path):
  _, results = tiny_trained
  runs = []
  for seed, shift in ((0, 0.0), (1, 2.0)):
    run = tmp_path / f'seed{seed}'
    run.mkdir()
    r = json.loads(json.dumps(results))
    r['seed'] = seed
    r['test']['t2a']['R1'] += shift
    (run / 'results.json').write_text(json.dumps(r))
    runs.append(str(run))
  table = report.aggregate(report.load_results(runs))
  (entry,) = table.values()
  assert entry['runs'] == 2 and entry['seeds'] == [0, 1]
  r1 = entry['t2a']['R1']
  assert r1['mean'] == pytest.approx(results['test']['t2a']['R1'] + 1.0)
  assert r1['std'] == pytest.approx(np.std([0.0, 2.0], ddof=1))
  out = in_process.run_module('jaxretrieval.report', [*runs, f'--out={tmp_path / "rep"}'])
  assert out.returncode == 0, out.stderr
  assert '(2 runs)' in out.stdout and (tmp_path / 'rep.json').is_file()


@pytest.mark.slow
def test_fine_tuning_starts_from_the_source_run(tiny_trained, synthcaps_tiny, tmp_path):
  source, _ = tiny_trained
  src = checkpointing.manager(source)
  meta = checkpointing.restore(src, src.latest_step(), ('meta',))['meta']
  config = tiny_config(synthcaps_tiny, init_from=str(source), num_epochs=1)
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['epochs_trained'] == 1
  logged = checkpointing.restore(checkpointing.manager(tmp_path), 1, ('meta',))
  assert logged['meta']['base_lr'] == pytest.approx(meta['learning_rate'])
  config = tiny_config(synthcaps_tiny, init_from=str(tmp_path / 'absent'))
  with pytest.raises(FileNotFoundError, match='holds no checkpoint'):
    train.train_and_evaluate(config, str(tmp_path / 'other'))
  assert not (tmp_path / 'absent').exists()


@pytest.mark.slow
def test_fine_tuning_with_a_new_optimizer_equals_training_from_those_weights(
    tiny_trained, synthcaps_tiny, tmp_path, monkeypatch):
  """init_optimizer=False: the optimizer starts on the restored weights (LookAhead's slow
  weights included), so training equals a run initialised with those weights."""
  source, _ = tiny_trained
  # 2 epochs of 3 steps, so the LookAhead synchronisation at step 6 happens; tiny_config's
  # batch, seed and learning rate: the program of tiny_trained.
  config = tiny_config(synthcaps_tiny, init_from=str(source), init_optimizer=False)
  run = train.Experiment(config, tmp_path / 'direct')
  state, _ = train._initialise_from(run)
  src = checkpointing.manager(source)
  restored = checkpointing.restore(src, checkpointing.best_step(src))['model']
  for slow, weight, want in zip(jax.tree.leaves(state.opt_state.slow),
                                jax.tree.leaves(state.params),
                                jax.tree.leaves(restored['params'])):
    np.testing.assert_array_equal(slow, want)
    np.testing.assert_array_equal(weight, want)
  assert int(state.opt_state.count) == 0 and int(state.step) == 0

  tuned = train.train_and_evaluate(config, str(tmp_path / 'tuned'))
  monkeypatch.setattr(train.Experiment, 'init_variables', lambda self: restored)
  plain = train.train_and_evaluate(tiny_config(synthcaps_tiny), str(tmp_path / 'plain'))
  a = checkpointing.restore(checkpointing.manager(tmp_path / 'tuned'), 2)['model']
  b = checkpointing.restore(checkpointing.manager(tmp_path / 'plain'), 2)['model']
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, atol=1e-6)
  assert tuned['test']['t2a']['R10'] == plain['test']['t2a']['R10']


@pytest.mark.slow
def test_data_on_device_trains_exactly_like_host_batches(tiny_trained, synthcaps_tiny, tmp_path):
  """The same run as `tiny_trained` (host batches) with the data on the device."""
  host_dir, host = tiny_trained
  device = train.train_and_evaluate(tiny_config(synthcaps_tiny, data_on_device=True),
                                    str(tmp_path))
  for d in ('t2a', 'a2t'):
    for k in ('R1', 'R5', 'R10', 'MeanR'):
      assert host['test'][d][k] == device['test'][d][k]
  for step in (1, 2):
    a = checkpointing.restore(checkpointing.manager(host_dir), step)['model']
    b = checkpointing.restore(checkpointing.manager(tmp_path), step)['model']
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(x, y, atol=1e-6)


@pytest.mark.slow
def test_fused_ranger_trains_like_the_optax_chain(tiny_trained, synthcaps_tiny, tmp_path):
  """config.optimizer.fused (optim.ranger_apply in the step, the default: `tiny_trained`)
  against optax's chain and apply_gradients: 2 epochs of 3 steps, the last a LookAhead
  synchronisation; the weights, BatchNorm statistics and the whole optimizer state agree to
  float32 rounding."""
  config = tiny_config(synthcaps_tiny)
  assert config.optimizer.fused
  config.optimizer.fused = False
  train.train_and_evaluate(config, str(tmp_path))
  fused, chain = (checkpointing.restore(checkpointing.manager(workdir), 2,
                                        ('model', 'meta', 'optimizer'))
                  for workdir in (tiny_trained[0], tmp_path))
  assert fused['meta']['step'] == chain['meta']['step'] == 6
  for x, y in zip(jax.tree.leaves((fused['model'], fused['optimizer'])),
                  jax.tree.leaves((chain['model'], chain['optimizer']))):
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)


def test_equal_experiments_share_their_programs_and_no_others_do(synthcaps_tiny):
  """train's per-process program caches: a second experiment of the same model, loss,
  optimizer and seed reuses the step, init and tower programs (and its TrainState has the
  same tree structure, so the step does not retrace); changing any of them gives new ones
  (a stale program would train another objective)."""
  data = train.load_datasets(tiny_config(synthcaps_tiny))
  run = lambda **overrides: train.Experiment(tiny_config(synthcaps_tiny, **overrides), None, data)
  a, b = run(), run()
  assert a.step_program(1e-3) is b.step_program(1e-3)
  assert jax.tree.structure(a.new_state(1e-3)) == jax.tree.structure(b.new_state(1e-3))
  assert a.embedder._audio is b.embedder._audio and a.eval_model is b.eval_model
  assert a.step_program(1e-3) is not a.step_program(2e-3)
  for changed in ({'loss.margin': 0.1}, {'optimizer.lr_decay': 0.5},
                  {'optimizer.fused': False}, {'seed': 1}, {'model.shared_dim': 32}):
    other = run(**changed)
    assert other.step_program(1e-3) is not a.step_program(1e-3), changed
  assert run(**{'model.shared_dim': 32}).embedder._audio is not a.embedder._audio
