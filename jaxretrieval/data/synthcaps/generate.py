"""Generates SynthCaps in the release layout: wav files, computed experts, captions."""

import concurrent.futures
import multiprocessing
import os
import pathlib

import numpy as np

from jaxretrieval.data.synthcaps import captions as captions_lib
from jaxretrieval.data.synthcaps import sounds
from jaxretrieval.features.audio_io import write_wav
from jaxretrieval.features.handcrafted import extract
from jaxretrieval.features.release_writer import Item, write_release
from jaxretrieval.text import WordVectors, tokenize

SPLITS = ('train', 'val', 'test')
COMPLETE = '.complete'
# A spawned worker's start-up (its imports, ~1.5 s) costs as much as ~80 clips: smaller jobs
# run in this process (synthcaps/tiny, 80 clips: 2.1 s instead of 3.8 s with two workers).
CLIPS_PER_WORKER = 100


def _clip(args) -> Item:
  """One clip, from a generator seeded by (seed, split, index) alone."""
  root, seed, split, index = args
  rng = np.random.default_rng([seed, SPLITS.index(split), index])
  clip = sounds.random_clip(rng)
  wave = sounds.render_clip(clip, rng)
  item_id = f'{split}_{index:05d}'
  path = root / 'audio' / f'{item_id}.wav'
  write_wav(path, wave)
  return Item(item_id, extract(wave), captions_lib.captions(clip, rng), path)


def vocabulary(items: list[Item]) -> set[str]:
  """Every word of the captions and of the synonym tables (so any synonym is a query word)."""
  words = {w for it in items for c in it.captions for w in tokenize(c)}
  for nouns, gerunds in captions_lib.NOUNS.values():
    words.update(w for text, _ in nouns for w in tokenize(text))
    words.update(gerunds)
  for adjectives in captions_lib.ADJECTIVES.values():
    words.update(w for a in adjectives for w in tokenize(a))
  return words


def generate(root: pathlib.Path, sizes: dict[str, int], seed: int, workers: int | None = None):
  """Writes the whole release under `root` (skipped when a complete one is there), with
  `workers` processes (default: one per CLIPS_PER_WORKER clips, at most one per core)."""
  marker = root / COMPLETE
  signature = f'sizes={sorted(sizes.items())} seed={seed}\n'
  if marker.is_file() and marker.read_text() == signature:
    return
  (root / 'audio').mkdir(parents=True, exist_ok=True)
  jobs = [(root, seed, s, i) for s in SPLITS for i in range(sizes[s])]
  if workers is None:
    workers = max(1, min(os.cpu_count() or 1, len(jobs) // CLIPS_PER_WORKER))
  if workers == 1:  # in this process: no worker to start
    items = list(map(_clip, jobs))
  else:
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context('spawn')) as pool:
      items = list(pool.map(_clip, jobs, chunksize=16))
  words = WordVectors(captions_lib.word_vectors(vocabulary(items)))
  splits = {s: [it.id for it in items if it.id.startswith(s + '_')] for s in SPLITS}
  write_release(root, items, splits, words)
  marker.write_text(signature)
