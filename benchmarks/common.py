"""Shared benchmark helpers: timing, machine description, JSON-lines and table output."""

import json
import os
import platform
import resource
import statistics
import time

import jax


def machine() -> dict:
  devices = jax.devices()
  return {'backend': jax.default_backend(), 'devices': len(devices),
          'device_kind': devices[0].device_kind, 'cpu_count': os.cpu_count(),
          'processor': platform.processor() or platform.machine(), 'jax': jax.__version__}


def timed(fn, repeats: int = 5, warmup: int = 1) -> dict:
  """Median and min seconds of `fn()` (which must block until its work is done)."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return {'median_s': statistics.median(times), 'min_s': min(times), 'repeats': repeats}


def alternate(contenders: dict, rounds: int) -> dict[str, dict]:
  """Times each `contenders[name]()` (blocking) once per round, alternating them round by
  round, so that a noisy neighbour on a shared machine slows all of them alike. Returns
  name -> {'median_s', 'min_s', 'rounds'}."""
  times = {name: [] for name in contenders}
  for _ in range(rounds):
    for name, fn in contenders.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: {'median_s': statistics.median(t), 'min_s': min(t), 'rounds': rounds}
          for name, t in times.items()}


def set_threads(threads: int) -> None:
  """PyTorch's intra-op threads; XLA:CPU runs its ops on one thread per core, so the
  benchmarks give torch `os.cpu_count()` unless told otherwise."""
  import torch
  torch.set_num_threads(threads)


def peak_host_memory_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def emit(record: dict) -> None:
  print(json.dumps(record), flush=True)


def table(rows: list[dict], columns: list[str]) -> str:
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  for r in rows:
    cells = []
    for c in columns:
      v = r.get(c, '')
      cells.append(f'{v:.4g}' if isinstance(v, float) else str(v))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def synthetic_split(config, spec, n: int, rng, name: str = 'synthetic', captions: int = 1):
  """A SplitArrays of `n` random items shaped by `config.max_tokens`, `captions` each."""
  import numpy as np

  from jaxretrieval.data.splits import SplitArrays
  t = config.max_tokens['text']
  experts = {e.name: rng.standard_normal((n, config.max_tokens[e.name], e.dim), np.float32)
             if e.temporal == 'vlad' else rng.standard_normal((n, e.dim), np.float32)
             for e in spec.experts}
  lengths = {e.name: np.full(n, config.max_tokens.get(e.name, 1), np.int32) for e in spec.experts}
  return SplitArrays(
      name, [f'{name}{i}' for i in range(n)], [''] * n, experts, lengths,
      np.ones((n, len(spec.experts)), np.float32),
      rng.integers(1, 1000, (n * captions, t)).astype(np.int32),
      np.full(n * captions, t, np.int32), np.arange(n) * captions, np.full(n, captions),
      [''] * (n * captions))


def synthetic_datasets(config, train: int, val: int, test: int, test_captions: int = 5, seed=0):
  """train_and_evaluate's data: random splits and a 1,000-word table."""
  import numpy as np

  from jaxretrieval.data.registry import EXPERTS as KNOWN_EXPERTS
  from jaxretrieval.models.spec import model_spec
  from jaxretrieval.train import ExperimentData
  rng = np.random.default_rng(seed)
  spec = model_spec(config)
  words = rng.standard_normal((1000, 300), np.float32)
  words[0] = 0.0
  dims = {e: (KNOWN_EXPERTS[e].dim, KNOWN_EXPERTS[e].temporal) for e in config.experts}
  return ExperimentData(synthetic_split(config, spec, train, rng, 'train'),
                  synthetic_split(config, spec, val, rng, 'val'),
                  synthetic_split(config, spec, test, rng, 'test', test_captions), words, dims)


def cpu_peak_flops() -> float | None:
  """Nominal float32 FLOP/s of this machine's CPU cores at their listed clock: cores x 2 FMA
  units x SIMD lanes x 2 (AVX-512: 16 lanes, AVX2: 8); None when /proc/cpuinfo is missing.
  Turbo clocks can exceed it: compare with `matmul_flops()` as well."""
  try:
    info = open('/proc/cpuinfo').read()
  except OSError:
    return None
  mhz = [float(line.split(':')[1]) for line in info.splitlines() if line.startswith('cpu MHz')]
  if not mhz:
    return None
  lanes = 16 if 'avx512f' in info else 8 if 'avx2' in info else 4
  return os.cpu_count() * 2 * lanes * 2 * max(mhz) * 1e6


def matmul_flops(n: int = 4096, dtype: str = 'float32') -> float:
  """FLOP/s of a large square matmul on the default device: the practical peak the
  model's dense layers can reach."""
  import jax.numpy as jnp
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a: a @ a)
  seconds = timed(lambda: f(a).block_until_ready(), repeats=5)['median_s']
  return 2 * n ** 3 / seconds
