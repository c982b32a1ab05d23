"""Shared test set-up: quiet TensorFlow, CPU only, one compilation cache for the whole run,
and the session fixtures that several test files read (built once per run, also under
pytest-xdist: the first worker that needs one builds it, the others wait and reuse it)."""

import atexit
import fcntl
import json
import os
import pathlib
import shutil
import sys
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
# XLA:CPU's optimisations off: the tests' programs are tiny, so compiling is most of their time
# (a tiny CE train step: 8.6 s optimised, 3.5 s like this; it then runs 2x slower, 10 -> 21 ms).
# Inherited by subprocesses; those that force a device count append to it.
TEST_XLA_FLAGS = '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false'
if TEST_XLA_FLAGS not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

import pytest  # noqa: E402

# Shared fixtures that take a while to build (the first test file that needs one builds it).
SHARED_BUILDS = ('synthcaps_tiny', 'tiny_trained')
SLOW_WEIGHT = 10  # a test marked slow weighs as much as this many others


def pytest_collection_modifyitems(items):
  """Files in the order `make test` hands them to its workers (pytest-xdist with --dist
  loadfile --no-loadscope-reorder gives each worker the next file as it runs out): heaviest
  first, weighing each test 1 and each test marked slow SLOW_WEIGHT, so that no worker is
  left with a long file at the end; the second file needs no shared build, so the second
  worker starts at once instead of waiting for the first to build them."""
  files = {}
  for item in items:
    files.setdefault(item.path, []).append(item)
  weight = lambda tests: sum(SLOW_WEIGHT if t.get_closest_marker('slow') else 1 for t in tests)
  order = sorted(files.values(), key=weight, reverse=True)
  needs_build = lambda tests: any(set(SHARED_BUILDS) & set(t.fixturenames) for t in tests)
  if order and needs_build(order[0]):
    free = next((i for i, tests in enumerate(order) if not needs_build(tests)), None)
    if free is not None:
      order.insert(1, order.pop(free))
  items[:] = [t for tests in order for t in tests]


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
  """A pytest-xdist worker ends here, skipping the interpreter's teardown: freeing the
  programs it compiled and its TensorFlow and torch state took 5-10 s per worker after its
  last test. Its reports are with the controller by now (sent when its session finished)."""
  if hasattr(config, 'workerinput'):
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _built_once(tmp_path_factory, name: str, build) -> pathlib.Path:
  """The folder `name` filled by `build(folder)` once per test run. Under pytest-xdist the
  workers share the run's base temporary directory: the first to get the lock builds, the
  others wait for it and reuse the result (`build` must leave the folder read-only in use)."""
  if 'PYTEST_XDIST_WORKER' not in os.environ:
    folder = tmp_path_factory.mktemp(name)
    build(folder)
    return folder
  root = tmp_path_factory.getbasetemp().parent
  folder, done = root / name, root / f'{name}.done'
  with open(root / f'{name}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      shutil.rmtree(folder, ignore_errors=True)
      folder.mkdir()
      build(folder)
      done.touch()
  return folder


@pytest.fixture(scope='session')
def synthcaps_tiny(tmp_path_factory):
  """A TFDS data_dir holding synthcaps/tiny, built once per run."""
  from jaxretrieval.data.tfds_builders import SynthCaps as Builder
  return _built_once(tmp_path_factory, 'synthcaps',
                     lambda d: Builder(config='tiny', data_dir=str(d)).download_and_prepare())


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
  every test that reads a trained workdir; tests that change one work on a copy. `results`
  is what `train_and_evaluate` returned (kept beside the workdir for the other workers)."""
  from jaxretrieval import train

  def build(folder):
    results = train.train_and_evaluate(tiny_config(synthcaps_tiny), str(folder / 'workdir'))
    (folder / 'returned.json').write_text(json.dumps(results))

  folder = _built_once(tmp_path_factory, 'tiny_run', build)
  return folder / 'workdir', json.loads((folder / 'returned.json').read_text())


@pytest.fixture(scope='session')
def tiny_workdir(tiny_trained):
  return tiny_trained[0]


@pytest.fixture(scope='session')
def tiny_index(tiny_workdir, tmp_path_factory):
  """A search index of synthcaps/tiny's test split (tests that change one work on a copy)."""
  from jaxretrieval.search.build import build_index
  return _built_once(tmp_path_factory, 'tiny_index',
                     lambda d: build_index(str(tiny_workdir), str(d), split='test'))
