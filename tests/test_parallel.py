"""Data parallelism: 8 devices and 2 hosts x 2 devices match 1 device on the same global batch."""

import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.parallel_setup import global_step


def _run(tmp_path, name, devices, processes=1):
  out = tmp_path / f'{name}.npz'
  if processes == 1:
    subprocess.run([sys.executable, '-m', 'tests.parallel_worker', str(out), str(devices)],
                   check=True, capture_output=True)
  else:
    with socket.socket() as s:
      s.bind(('127.0.0.1', 0))
      port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, '-m', 'tests.parallel_worker', str(out),
                               str(devices), str(p), str(processes), str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for p in range(processes)]
    for p in procs:
      _, err = p.communicate(timeout=300)
      assert p.returncode == 0, err.decode()[-3000:]
  return dict(np.load(out))


def _compare(got, want):
  assert set(got) == set(want)
  np.testing.assert_allclose(got['loss'], want['loss'], rtol=1e-5, atol=1e-6)
  for key in want:
    scale = max(1.0, float(np.abs(want[key]).max()))
    np.testing.assert_allclose(got[key], want[key], atol=1e-5 * scale, err_msg=key)
  assert any(np.abs(v).max() > 0 for k, v in want.items() if k.startswith('g'))


@pytest.fixture(scope='module')
def single_device():
  """The reference: one device, in this process (the same code as the workers)."""
  return global_step(1)


@pytest.mark.slow
def test_eight_devices_match_one(single_device, tmp_path):
  _compare(_run(tmp_path, 'eight', 8), single_device)


@pytest.mark.slow
def test_two_hosts_of_two_devices_match_one(single_device, tmp_path):
  _compare(_run(tmp_path, 'hosts', 2, processes=2), single_device)
