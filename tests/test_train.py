"""Training end to end on synthcaps/tiny: results, resume after a kill, NaN stop, fine-tuning."""

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

from jaxretrieval import checkpointing, report, train
from tests.conftest import tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_FLAGS = ['--config.tfds_name=synthcaps/tiny', '--config.batch_size=16',
              '--config.log_every_steps=2', '--config.model.shared_dim=64',
              '--config.model.vlad_clusters=4', '--config.model.text_clusters=6']


def _launch(workdir, data_dir, *extra, wait=True):
  cmd = [sys.executable, str(ROOT / 'launch.py'), '--config', str(ROOT / 'configs' /
                                                                  'ce_synthcaps.py'),
         f'--workdir={workdir}', f'--config.data_dir={data_dir}', *TINY_FLAGS, *extra]
  if wait:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, f'launch.py failed ({done.returncode}):\n{done.stderr[-5000:]}'
    return done
  return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)


@pytest.fixture(scope='module')
def trained(synthcaps_tiny, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('run')
  results = train.train_and_evaluate(tiny_config(synthcaps_tiny), str(workdir))
  return workdir, results


def test_run_writes_results_checkpoints_and_tensorboard(trained):
  workdir, results = trained
  on_disk = json.loads((workdir / 'results.json').read_text())
  assert on_disk['test']['t2a']['num_queries'] == 80 and on_disk['test']['num_items'] == 16
  assert on_disk['best_epoch'] in (1, 2) and on_disk['epochs_trained'] == 2
  for direction in ('t2a', 'a2t'):
    assert 0 <= on_disk['test'][direction]['R1'] <= on_disk['test'][direction]['R10'] <= 100
  assert results['test']['t2a']['R10'] == on_disk['test']['t2a']['R10']
  assert '| ce — logmel+spectral on synthcaps |' in (workdir / 'results.md').read_text()
  assert checkpointing.latest_step(workdir, 'latest') == 2
  assert checkpointing.latest_step(workdir, 'best') == on_disk['best_epoch']
  assert list(workdir.glob('events.out.tfevents.*'))
  assert json.loads((workdir / 'config.json').read_text())['tfds_name'] == 'synthcaps/tiny'


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(synthcaps_tiny, tmp_path):
  epochs = '--config.num_epochs=4'
  _launch(tmp_path / 'straight', synthcaps_tiny, epochs)
  killed = tmp_path / 'killed'
  process = _launch(killed, synthcaps_tiny, epochs, wait=False)
  deadline = time.time() + 300
  while checkpointing.latest_step(killed, 'latest') is None and time.time() < deadline:
    time.sleep(0.2)
  process.send_signal(signal.SIGKILL)
  process.wait()
  stopped_at = checkpointing.latest_step(killed, 'latest')
  assert stopped_at is not None and stopped_at < 4 and not (killed / 'results.json').exists()
  _launch(killed, synthcaps_tiny, epochs)
  a = json.loads((tmp_path / 'straight' / 'results.json').read_text())
  b = json.loads((killed / 'results.json').read_text())
  assert a['best_epoch'] == b['best_epoch']
  for d in ('t2a', 'a2t'):
    for k in ('R1', 'R5', 'R10', 'MeanR', 'MedR'):
      assert a['test'][d][k] == b['test'][d][k], (d, k)


def test_resume_discards_the_best_checkpoint_of_an_interrupted_epoch(synthcaps_tiny, tmp_path):
  train.train_and_evaluate(tiny_config(synthcaps_tiny, num_epochs=1), str(tmp_path))
  best = checkpointing.checkpoint_dir(tmp_path, 'best')
  # As if killed after saving epoch 2's best checkpoint but before its latest one.
  shutil.copytree(best / '1', best / '2')
  results = train.train_and_evaluate(tiny_config(synthcaps_tiny, num_epochs=2), str(tmp_path))
  assert results['epochs_trained'] == 2
  kept = checkpointing.restore(checkpointing.manager(tmp_path, 'best'), items=('meta',))
  assert kept['meta']['best_epoch'] == results['best_epoch']
  assert checkpointing.latest_step(tmp_path, 'best') == results['best_epoch']


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(synthcaps_tiny,
                                                                        tmp_path):
  # Epoch 1 trains normally; epoch 2's learning rate (x 1e30) makes the weights overflow.
  config = tiny_config(synthcaps_tiny, num_epochs=3, log_every_steps=1,
                       **{'optimizer.lr_decay': 1e30})
  with pytest.raises(FloatingPointError, match=r'loss is (nan|inf) at step [4-9]'):
    train.train_and_evaluate(config, str(tmp_path))
  assert checkpointing.latest_step(tmp_path, 'latest') == 1
  restored = checkpointing.restore(checkpointing.manager(tmp_path, 'latest'))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored['model']))


def test_report_aggregates_seeds(trained, tmp_path):
  _, results = trained
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
  out = subprocess.run([sys.executable, '-m', 'jaxretrieval.report', *runs,
                        f'--out={tmp_path / "rep"}'], capture_output=True, text=True, check=True,
                       cwd=ROOT)
  assert '(2 runs)' in out.stdout and (tmp_path / 'rep.json').is_file()


def test_fine_tuning_starts_from_the_source_run(trained, synthcaps_tiny, tmp_path):
  source, _ = trained
  meta = checkpointing.restore(checkpointing.manager(source, 'latest'), items=('meta',))['meta']
  config = tiny_config(synthcaps_tiny, init_from=str(source), num_epochs=1)
  results = train.train_and_evaluate(config, str(tmp_path))
  assert results['epochs_trained'] == 1
  logged = checkpointing.restore(checkpointing.manager(tmp_path, 'latest'), items=('meta',))
  assert logged['meta']['base_lr'] == pytest.approx(meta['learning_rate'])
  config = tiny_config(synthcaps_tiny, init_from=str(tmp_path / 'absent'))
  with pytest.raises(FileNotFoundError, match='holds no checkpoint'):
    train.train_and_evaluate(config, str(tmp_path / 'other'))


def test_data_on_device_trains_exactly_like_host_batches(synthcaps_tiny, tmp_path):
  host = train.train_and_evaluate(tiny_config(synthcaps_tiny, num_epochs=1), str(tmp_path / 'a'))
  device = train.train_and_evaluate(tiny_config(synthcaps_tiny, num_epochs=1,
                                                data_on_device=True), str(tmp_path / 'b'))
  for d in ('t2a', 'a2t'):
    for k in ('R1', 'R5', 'R10', 'MeanR'):
      assert host['test'][d][k] == device['test'][d][k]
  a = checkpointing.restore(checkpointing.manager(tmp_path / 'a', 'latest'))['model']
  b = checkpointing.restore(checkpointing.manager(tmp_path / 'b', 'latest'))['model']
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, atol=1e-6)
