"""Shared test set-up: quiet TensorFlow, CPU only."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

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
def tiny_workdir(synthcaps_tiny, tmp_path_factory):
  """A workdir with a CE model trained for one epoch on synthcaps/tiny."""
  from jaxretrieval import train
  workdir = tmp_path_factory.mktemp('tiny_run')
  train.train_and_evaluate(tiny_config(synthcaps_tiny, num_epochs=1), str(workdir))
  return workdir


@pytest.fixture(scope='session')
def tiny_index(tiny_workdir, tmp_path_factory):
  """A search index of synthcaps/tiny's test split."""
  from jaxretrieval.search.build import build_index
  out = tmp_path_factory.mktemp('index')
  build_index(str(tiny_workdir), str(out), split='test')
  return out
