"""Shared test set-up: quiet TensorFlow, CPU only, one compilation cache for the whole run."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Many tests compile the same programs (the tiny CE's train step in-process and in launch.py
# subprocesses, which inherit the environment): JAX's persistent cache compiles each once per
# run (in a fresh directory, removed at exit).
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='jaxretrieval_tests_xla_')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

import pytest  # noqa: E402


@pytest.fixture(scope='session')
def synthcaps_tiny(tmp_path_factory):
  """A TFDS data_dir holding synthcaps/tiny, built once per session."""
  from jaxretrieval.data.tfds_builders import SynthCaps as Builder
  data_dir = tmp_path_factory.mktemp('synthcaps')
  Builder(config='tiny', data_dir=str(data_dir)).download_and_prepare()
  return data_dir


def tiny_config(data_dir, **overrides):
  """CE on synthcaps/tiny, sized to train in seconds."""
  from configs import ce_synthcaps
  c = ce_synthcaps.get_config()
  c.tfds_name = 'synthcaps/tiny'
  c.data_dir = str(data_dir)
  c.batch_size = 16
  c.num_epochs = 2
  c.log_every_steps = 2
  c.model.shared_dim = 64
  c.model.vlad_clusters = 4
  c.model.text_clusters = 6
  for key, value in overrides.items():
    target = c
    *parents, leaf = key.split('.')
    for p in parents:
      target = target[p]
    target[leaf] = value
  return c


@pytest.fixture(scope='session')
def tiny_trained(synthcaps_tiny, tmp_path_factory):
  """(workdir, results) of `tiny_config`'s CE trained on synthcaps/tiny (2 epochs), shared by
  every test that reads a trained workdir; tests that change one work on a copy."""
  from jaxretrieval import train
  workdir = tmp_path_factory.mktemp('tiny_run')
  return workdir, train.train_and_evaluate(tiny_config(synthcaps_tiny), str(workdir))


@pytest.fixture(scope='session')
def tiny_workdir(tiny_trained):
  return tiny_trained[0]


@pytest.fixture(scope='session')
def tiny_index(tiny_workdir, tmp_path_factory):
  """A search index of synthcaps/tiny's test split."""
  from jaxretrieval.search.build import build_index
  out = tmp_path_factory.mktemp('index')
  build_index(str(tiny_workdir), str(out), split='test')
  return out
