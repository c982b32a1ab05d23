r"""The feature extraction as an Apache Beam pipeline, for collections of millions of files.

  python -m jaxretrieval.features --audio_dir DIR --out OUT --beam [--runner DirectRunner] \
      [--beam_pipeline_options "--direct_num_workers=8"] [--shards N] [other flags as usual]

Stages: the item ids (read from a text file the driver writes, so that the job graph stays
small however many files there are) -> spread over the workers -> decoded, with the own
experts and the networks' inputs computed (`prepare.prepare_file`) -> batched -> the
networks (weights loaded once per worker process, in `DoFn.setup`; in the driver's process,
the driver's) -> keyed by shard (a hash of the id) -> each shard's tables written
(`release_writer.write_items(shard=...)`). Each item leaves a one-line record (id, audio
file, experts it has) or a failure line; the driver reads those and writes the
collection-wide files, as the single-process path does, so the two outputs read the same
(`ReleaseReader` joins the shards).

The DirectRunner runs on this machine with `--workers` processes. Other runners (Flink,
Spark, Dataflow) take their options from `--beam_pipeline_options`; their workers must see
the audio folder, the weight files and OUT at the same paths (a shared file system) and
have this package installed.
"""

import json
import logging
import os
import pathlib
import shlex
import sys
import time
import zlib

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.utils import shared

from jaxretrieval.features import prepare, pretrained
from jaxretrieval.features.release_writer import Item, relative_path, write_items
from jaxretrieval.text import WordVectors

IDS_FILE = '.ids.txt'
RECORDS = '.records'
FAILED = '.failed'
FILES_PER_SHARD = 10000  # the default shard size


def shard_of(item: str, shards: int) -> int:
  """A stable shard index of an id (the same in every worker and run)."""
  return zlib.crc32(item.encode('utf-8', 'surrogateescape')) % shards


class _Prepare(beam.DoFn):
  """Line `k<TAB>id` -> (k, id, prepared inputs), or a failure (id, reason) on 'failed'."""

  def __init__(self, audio_dir: str, experts, options: prepare.Options):
    self.audio_dir, self.experts, self.options = audio_dir, tuple(experts), options

  def process(self, line: str):
    k, item = line.split('\t', 1)
    path = pathlib.Path(self.audio_dir) / relative_path(item)
    prepared, error = prepare.prepare_file(path, self.experts, self.options)
    if error is not None:
      reason = error.replace(str(path), item)
      logging.warning('cannot read %s', reason)
      yield beam.pvalue.TaggedOutput('failed', json.dumps([item, reason]))
    else:
      yield int(k), item, prepared


class _Runners(dict):
  """`pretrained.load_runners`'s networks, in an object Beam's `Shared` can hold."""


class _Embed(beam.DoFn):
  """A batch of prepared clips -> (shard, (k, id, features)) per clip, with progress. The
  networks are loaded once per worker process and shared by its threads (`networks`, Beam's
  `Shared`): the DirectRunner's multi_threading mode and runners that run several threads per
  process hold one copy of the weights (VGGish alone is 290 MB) instead of one per thread;
  workers in the driver's own process use the driver's."""

  def __init__(self, experts, options: prepare.Options, weights: dict, shards: int,
               total: int, workers: int | None, networks: shared.Shared):
    self.experts, self.options, self.weights = tuple(experts), options, weights
    self.shards, self.total, self.workers = shards, total, workers
    self._networks = networks

  def setup(self):
    self.runners = self._networks.acquire(lambda: _Runners(pretrained.load_runners(
        self.experts, self.options, **self.weights)))
    self.done, self.start = 0, time.time()

  def process(self, batch):
    for (k, item, _), clip in zip(batch, pretrained.features([b[2] for b in batch],
                                                             self.runners)):
      yield shard_of(item, self.shards), (k, item, clip)
    self.done += len(batch)
    rate = self.done / (time.time() - self.start)
    eta = ''
    if self.workers:  # all workers about as fast: the collection's rate is workers x rate
      eta = f', ETA {max(0.0, self.total - self.workers * self.done) / (self.workers * rate):.0f} s'
    logging.warning('worker %d: %d files done (collection: %d), %.1f clips/s%s', os.getpid(),
                    self.done, self.total, rate, eta)


class _WriteShard(beam.DoFn):
  """(shard, clips) -> the shard's tables in OUT, and one JSON record per clip."""

  def __init__(self, root: str, audio_dir: str, experts, shards: int, captions: dict,
               word_vectors: str | None):
    self.root, self.audio_dir, self.experts = root, audio_dir, tuple(experts)
    self.shards, self.captions, self.word_vectors = shards, captions, word_vectors

  def setup(self):
    self.words = WordVectors.load(self.word_vectors) if self.captions else None

  def process(self, element):
    shard, clips = element
    items = [Item(item, clip, self.captions.get(item, []),
                  pathlib.Path(self.audio_dir) / relative_path(item))
             for _, item, clip in sorted(clips, key=lambda c: c[0])]
    write_items(pathlib.Path(self.root), items, self.experts, self.words, bool(self.captions),
                (shard, self.shards))
    for (k, _, _), it in zip(sorted(clips, key=lambda c: c[0]), items):
      yield json.dumps({'k': k, 'id': it.id, 'experts': sorted(it.experts), 'shard': shard})


def pipeline_options(runner: str, extra: str, workers: int) -> PipelineOptions:
  """`--runner` plus `--beam_pipeline_options`; the DirectRunner gets `workers` processes
  unless those options set its workers."""
  args = [f'--runner={runner}'] + shlex.split(extra or '')
  if runner == 'DirectRunner' and not any(a.startswith('--direct_num_workers') for a in args):
    args += [f'--direct_num_workers={max(1, workers)}',
             '--direct_running_mode=' + ('multi_processing' if workers > 1 else 'in_memory')]
  return PipelineOptions(args)


def _realise_lazy_modules() -> None:
  """Reads `vars()` of every imported module once, in this thread.

  Beam's state cache sizes each value it loads with objsize, which reads `vars()` of every
  module in `sys.modules`. A cffi library module (cryptography's `_openssl.lib`, imported
  with Beam) builds its attributes lazily on that first read, and two DirectRunner worker
  threads doing it at once abort the process (cffi's `realize_c_type.c` assertion, seen
  with `--direct_running_mode=multi_threading`). Once built, later reads only look them up.
  """
  for module in list(sys.modules.values()):
    try:
      vars(module)
    except TypeError:  # objects without a __dict__ (objsize skips them too)
      pass


def extract(ids: list[str], audio_dir: pathlib.Path, root: pathlib.Path, experts, options,
            weights: dict, runners: dict, captions: dict, word_vectors: str | None, shards: int,
            runner: str, extra_options: str, workers: int, chunk: int):
  """Runs the pipeline, writing every per-item table under `root` in `shards` shards (0:
  one per FILES_PER_SHARD files). `runners` are the networks the driver loaded from
  `weights` (`pretrained.load_runners`); workers in this process use them, others load
  their own from `weights`.

  Returns (records, failed): for each written item in the order of `ids`, (id, audio file,
  experts it has); and (id, reason) for each file that could not be read.
  """
  shards = shards or -(-len(ids) // FILES_PER_SHARD)
  root.mkdir(parents=True, exist_ok=True)
  ids_file = root / IDS_FILE
  ids_file.write_text(''.join(f'{k}\t{i}\n' for k, i in enumerate(ids)), encoding='utf-8')
  beam_options = pipeline_options(runner, extra_options, workers)
  direct = beam_options.get_all_options().get('direct_num_workers') if runner == 'DirectRunner' \
      else None
  experts = tuple(experts)
  # Worker logs reach the console on the workers' own stderr; the runner's copies of them
  # (and its start-up chatter) are left out.
  logging.getLogger('apache_beam').setLevel(logging.ERROR)
  _realise_lazy_modules()
  networks = shared.Shared()
  # Shared holds weak references: `held` keeps the driver's networks for the whole run.
  held = networks.acquire(lambda: _Runners(runners))  # noqa: F841
  start = time.time()
  with beam.Pipeline(options=beam_options) as p:
    prepared = (p | 'ids' >> beam.io.ReadFromText(str(ids_file))
                | 'spread' >> beam.Reshuffle()
                | 'prepare' >> beam.ParDo(_Prepare(str(audio_dir), experts, options))
                .with_outputs('failed', main='clips'))
    _ = prepared.failed | 'failures' >> beam.io.WriteToText(str(root / FAILED))
    _ = (prepared.clips
         | 'batch' >> beam.BatchElements(min_batch_size=1, max_batch_size=chunk)
         | 'embed' >> beam.ParDo(_Embed(experts, options, weights, shards, len(ids), direct,
                                             networks))
         | 'by shard' >> beam.GroupByKey()
         | 'write' >> beam.ParDo(_WriteShard(str(root), str(audio_dir), experts, shards, captions,
                                             word_vectors))
         | 'records' >> beam.io.WriteToText(str(root / RECORDS)))
  records = [json.loads(line) for line in _read_and_remove(root, RECORDS)]
  failed = [tuple(json.loads(line)) for line in _read_and_remove(root, FAILED)]
  ids_file.unlink()
  order = {i: k for k, i in enumerate(ids)}
  failed.sort(key=lambda f: order[f[0]])
  written = {r['shard'] for r in records}
  for shard in sorted(set(range(shards)) - written):  # every shard exists, even empty ones
    write_items(root, [], experts, None, bool(captions), (shard, shards))
  records.sort(key=lambda r: r['k'])
  elapsed = time.time() - start
  print(f'{len(records) + len(failed)}/{len(ids)} files in {elapsed:.0f} s, '
        f'{len(records) / max(elapsed, 1e-9):.1f} clips/s ({runner})', flush=True)
  return [(r['id'], audio_dir / relative_path(r['id']), tuple(r['experts']))
          for r in records], failed


def _read_and_remove(root: pathlib.Path, prefix: str) -> list[str]:
  """Lines of the text shards `root/prefix-*` (WriteToText's output), which are removed."""
  lines = []
  for path in sorted(root.glob(f'{prefix}-*')):
    lines += path.read_text(encoding='utf-8').splitlines()
    path.unlink()
  return lines
