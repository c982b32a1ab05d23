"""Data parallelism: 8 devices and 2 hosts x 2 devices match 1 device on the same global batch."""

import socket
import subprocess
import sys

import numpy as np
import pytest


def _run(out, devices: list[int], processes=1) -> dict[int, dict[str, np.ndarray]]:
  """tests.parallel_worker's results for each device count, from `processes` processes."""
  counts = ','.join(map(str, devices))
  if processes == 1:
    subprocess.run([sys.executable, '-m', 'tests.parallel_worker', str(out), counts],
                   check=True, capture_output=True)
  else:
    with socket.socket() as s:
      s.bind(('127.0.0.1', 0))
      port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, '-m', 'tests.parallel_worker', str(out), counts,
                               str(p), str(processes), str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for p in range(processes)]
    for p in procs:
      _, err = p.communicate(timeout=300)
      assert p.returncode == 0, err.decode()[-3000:]
  results = {d: dict(np.load(f'{out}-{d}.npz')) for d in devices}
  if processes == 1:
    results['replicas'] = dict(np.load(f'{out}-replicas.npz'))
  return results


def _compare(got, want):
  assert set(got) == set(want)
  np.testing.assert_allclose(got['loss'], want['loss'], rtol=1e-5, atol=1e-6)
  for key in want:
    scale = max(1.0, float(np.abs(want[key]).max()))
    np.testing.assert_allclose(got[key], want[key], atol=1e-5 * scale, err_msg=key)
  assert any(np.abs(v).max() > 0 for k, v in want.items() if k.startswith('g'))


@pytest.fixture(scope='module')
def one_process(tmp_path_factory):
  """One process of 8 devices: the global step on 1 device (the reference, the same code as
  on several) and on all 8; one process compiles both, after one set of imports."""
  return _run(tmp_path_factory.mktemp('parallel') / 'single', [1, 8])


@pytest.mark.slow
def test_eight_devices_match_one(one_process):
  _compare(one_process[8], one_process[1])


def test_replicated_trees_are_laid_out_as_pmap_outputs_on_eight_devices(one_process):
  """A pmapped step fed `replicas.replicate`'s tree, then its own output, lowers one
  program (a layout of its own would make a second); `first_replica` reads the result."""
  got = one_process['replicas']
  assert got['lowered'].tolist() == [1, 0]
  np.testing.assert_array_equal(got['w'], np.arange(6, dtype=np.float32).reshape(2, 3) + 2)
  assert got['n'].shape == () and got['n'] == 5


@pytest.mark.slow
def test_two_hosts_of_two_devices_match_one(one_process, tmp_path):
  _compare(_run(tmp_path / 'hosts', [2], processes=2)[2], one_process[1])
