"""The released feature archives: layout per dataset and a validating reader (REFERENCE §1).

An archive `<NAME>-experts-audio-only.tar.gz` unpacks to `data/<folder>/structured-symlinks/`
holding split lists, the raw captions, the word vectors of the captions (`w2v.pkl`) and one
file per expert. `ReleaseReader` turns that folder into per-item examples, checking every
item so that bad data fails with the dataset, file and item id named.
"""

import dataclasses
import json
import pathlib
import tarfile
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from jaxretrieval.data.release_files import (ReleaseFileError, UnexpectedPickleContent,
                                             is_missing, load_feature_file, read_split_list)
from jaxretrieval.features.experts import DIMS as EXPERT_DIMS

URL = ('http://www.robots.ox.ac.uk/~vgg/research/collaborative-experts/data/features-v2/'
       '{name}-experts-audio-only.tar.gz')
WORD_DIM = 300


@dataclasses.dataclass(frozen=True)
class ExpertFile:
  """One expert of a release: our name, its file, raw width, aggregation, may it be missing."""
  name: str
  path: str
  dim: int
  temporal: str = 'vlad'  # 'vlad': [T, dim] sequences; 'avg': pooled [dim] vectors
  flaky: bool = False


@dataclasses.dataclass(frozen=True)
class Release:
  """Where a dataset's release keeps what (paths relative to structured-symlinks)."""
  name: str  # archive name, as in the URL
  folder: str  # data/<folder>/structured-symlinks
  splits: Mapping[str, str]  # our split name -> split list file
  captions: str
  word_vectors: str
  experts: tuple[ExpertFile, ...]
  fused_captions: bool = False
  audio_files: str | None = None  # optional JSON: id -> audio file (relative to the root)

  @property
  def url(self) -> str:
    return URL.format(name=self.name)

  @property
  def archive(self) -> str:
    return f'{self.name}-experts-audio-only.tar.gz'

  def archive_path(self, relative: str) -> str:
    return f'data/{self.folder}/structured-symlinks/{relative}'


_VISUAL = (
    ExpertFile('inst', 'aggregated_imagenet_25fps_256px_stride1_offset0/resnext101_32x48d-avg.pickle',
               2048, 'avg'),
    ExpertFile('r2p1d', 'aggregated_r2p1d_30fps_256px_stride32_offset0_inner_stride1/'
               'r2p1d-ig65m-avg.pickle', 512, 'avg'),
    ExpertFile('scene', 'aggregated_scene_25fps_256px_stride1_offset0/densenet161-avg.pickle',
               2208, 'avg'),
)
_TEXT = 'text_embeddings/w2v.pkl'

RELEASES = {
    'audiocaps': Release(
        'AudioCaps', 'AudioCaps',
        {'train': 'train_list.txt', 'val': 'filtered_val_list.txt',
         'test': 'final_filtered_test_list.txt'},
        'structured-symlinks/raw-captions.pkl', _TEXT,
        (ExpertFile('vggish', 'aggregated_audio/vggish-raw.hickle', 128, flaky=True),
         ExpertFile('vggsound', 'aggregated_vggsound/vggsound-raw.hickle', 512),
         ExpertFile('pann', 'aggregated_pann/pann-raw.hickle', 2048),
         ExpertFile('syncnet', 'aggregated_syncnet/syncnet-raw.hickle', 1024)) + _VISUAL),
    'clotho': Release(
        'CLOTHO', 'CLOTHO',
        {'train': 'train_list.txt', 'val': 'val_list.txt', 'test': 'test_list.txt'},
        'structured-symlinks/raw-captions.pkl', _TEXT,
        (ExpertFile('vggish', 'aggregated_audio/vggish-raw.hickle', 128),
         ExpertFile('vggsound', 'aggregated_vggsound/vggsound-raw.hickle', 512),
         ExpertFile('pann', 'aggregated_pann/pann-raw.hickle', 2048),
         ExpertFile('syncnet', 'aggregated_syncnet/syncnet-raw.hickle', 1024))),
    'activitynet_captions': Release(
        'activity-net', 'activity-net',
        {'train': 'train_list.txt', 'val_1': 'val_1_list.txt'},
        'raw-captions-train-val_1.pkl', 'aggregated_text_feats/w2v.pkl',
        (ExpertFile('vggish', 'aggregated_audio/vggish-audio-raw.pickle', 128, flaky=True),
         ExpertFile('face', 'aggregated_facefeats_25fps_256px_stride1/face-avg.pickle', 512,
                    'avg', flaky=True),
         ExpertFile('ocr', 'aggregated_ocr_feats/ocr-w2v.pkl', 300, flaky=True)),
        fused_captions=True),
    'queryd_segments': Release(
        'QuerYDSegments', 'QuerYDSegments',
        {'train': 'train_list.txt', 'val': 'val_list.txt', 'test': 'test_list.txt'},
        'structured-symlinks/split_raw_captions_filtered.pkl', _TEXT,
        (ExpertFile('vggish', 'aggregated_audio/vggish-raw.hickle', 128, flaky=True),)),
    # Video-level QuerYD: the caption file sits where the archive puts it, one level above
    # the path the reference loader expects (REFERENCE §7.22).
    'queryd': Release(
        'QuerYD', 'QuerYD',
        {'train': 'train_list.txt', 'val': 'val_list.txt', 'test': 'test_list.txt'},
        'raw_captions_combined_filtered.pkl', _TEXT,
        (ExpertFile('vggish', 'aggregated_audio/vggish-raw.hickle', 128, flaky=True),) + _VISUAL,
        fused_captions=True),
    'sounddescs': Release(
        'SoundDescs', 'SoundDescs',
        {'train': 'train_list.txt', 'val': 'val_list.txt', 'test': 'test_list.txt'},
        'structured-symlinks/raw-captions.pkl', _TEXT,
        (ExpertFile('vggish', 'aggregated_audio/vggish-raw.pkl', 128),
         ExpertFile('vggsound', 'aggregated_vggsound/vggsound-raw.pkl', 512)),
        fused_captions=True),
}


def computed_release(name: str, splits, experts: dict[str, int]) -> Release:
  """The layout `jaxretrieval.features` writes (SynthCaps and users' own audio)."""
  return Release(
      name, name, {s: f'{s}_list.txt' for s in splits}, 'structured-symlinks/raw-captions.pkl',
      _TEXT, tuple(ExpertFile(e, f'aggregated_{e}/{e}-raw.pkl', d) for e, d in experts.items()),
      audio_files='audio_files.json')


RELEASES['synthcaps'] = computed_release('SynthCaps', ('train', 'val', 'test'), EXPERT_DIMS)


def find_root(release: Release, directory: pathlib.Path) -> pathlib.Path | None:
  """The structured-symlinks folder of an extracted archive under `directory`, if any."""
  candidates = [directory / 'data' / release.folder / 'structured-symlinks',
                directory / release.folder / 'structured-symlinks',
                directory / 'structured-symlinks', directory]
  for candidate in candidates:
    if (candidate / release.splits[next(iter(release.splits))]).is_file():
      return candidate
  return None


def extract_archive(archive: pathlib.Path, destination: pathlib.Path) -> None:
  """Unpacks a release archive, refusing members that would land outside `destination`."""
  destination.mkdir(parents=True, exist_ok=True)
  try:
    with tarfile.open(archive) as tar:
      tar.extractall(destination, filter='data')
  except (tarfile.TarError, EOFError, OSError) as e:
    raise ReleaseFileError(f'{archive}: cannot unpack ({e}); is the download complete?') from e


class ReleaseReader:
  """Reads a release folder (structured-symlinks) item by item, validating everything."""

  def __init__(self, dataset: str, root: pathlib.Path, release: Release | None = None):
    self.dataset = dataset
    self.release = release or RELEASES[dataset]
    self.root = pathlib.Path(root)
    self._cache: dict[str, Any] = {}

  def _path(self, relative: str) -> pathlib.Path:
    path = self.root / relative
    if not path.is_file():
      r = self.release
      raise ReleaseFileError(
          f'{self.dataset}: missing file {relative} (looked for {path}; inside the archive it '
          f'is {r.archive_path(relative)}). Download {r.url} and unpack it, or pass the '
          f'.tar.gz itself as the manual dir.')
    return path

  def _load(self, relative: str) -> Any:
    if relative not in self._cache:
      path = self._path(relative)
      try:
        self._cache[relative] = load_feature_file(path)
      except UnexpectedPickleContent as e:
        raise ReleaseFileError(f'{self.dataset}: {relative} ({path}): {e}') from e
      except Exception as e:  # h5py, pickle and EOF errors of truncated downloads
        raise ReleaseFileError(f'{self.dataset}: cannot read {relative} ({path}): '
                               f'{type(e).__name__}: {e}. The file is truncated or corrupt; '
                               f'download {self.release.url} again.') from e
    return self._cache[relative]

  def split_ids(self, split: str) -> list[str]:
    if split not in self.release.splits:
      raise ValueError(f'{self.dataset} has no split {split!r}: expected one of '
                       f'{sorted(self.release.splits)}')
    ids = read_split_list(self._path(self.release.splits[split]))
    if len(set(ids)) != len(ids):
      raise ReleaseFileError(f'{self.dataset}: {self.release.splits[split]} lists an id twice')
    return ids

  def _feature(self, expert: ExpertFile, item: str) -> tuple[np.ndarray, bool]:
    """(array, available) of one expert of one item; missing items get an empty array."""
    features = self._load(expert.path)
    try:
      value = features[item] if item in features else None
    except Exception as e:  # a truncated hickle can fail on first access of a dataset
      raise ReleaseFileError(f'{self.dataset}: cannot read item {item} of {expert.path}: '
                             f'{type(e).__name__}: {e}') from e
    where = f'{self.dataset}: item {item} of {expert.path} ({expert.name})'
    if is_missing(value):
      if not expert.flaky:
        reason = 'has no entry' if value is None else 'is NaN (missing)'
        raise ReleaseFileError(f'{where} {reason}, but {expert.name} must be present for every '
                               'item (it is not a flaky expert). Remove the id from the split '
                               'list or use complete features.')
      empty = (0, expert.dim) if expert.temporal == 'vlad' else (expert.dim,)
      return np.zeros(empty, np.float32), False
    array = np.asarray(value, np.float64)
    if expert.temporal == 'avg' and array.shape == (1, expert.dim):
      array = array[0]
    expected = f'[T, {expert.dim}]' if expert.temporal == 'vlad' else f'[{expert.dim}]'
    ok = (array.ndim == 2 and array.shape[1] == expert.dim if expert.temporal == 'vlad'
          else array.shape == (expert.dim,))
    if not ok:
      raise ReleaseFileError(f'{where} has shape {array.shape}, expected {expected}')
    if not np.all(np.isfinite(array)):
      raise ReleaseFileError(f'{where} holds NaN or Inf values')
    return array.astype(np.float32), True

  def _text(self, item: str) -> tuple[list[str], list[np.ndarray]]:
    captions = self._load(self.release.captions)
    vectors = self._load(self.release.word_vectors)
    for name, table in ((self.release.captions, captions), (self.release.word_vectors, vectors)):
      if item not in table:
        raise ReleaseFileError(f'{self.dataset}: item {item} has no entry in {name}')
    texts = [c if isinstance(c, str) else ' '.join(map(str, c)) for c in captions[item]]
    arrays = [np.asarray(v, np.float64) for v in vectors[item]]
    if len(texts) != len(arrays) or not texts:
      raise ReleaseFileError(f'{self.dataset}: item {item} has {len(texts)} captions in '
                             f'{self.release.captions} but {len(arrays)} in '
                             f'{self.release.word_vectors}')
    for i, a in enumerate(arrays):
      if a.ndim != 2 or a.shape[1] != WORD_DIM or not np.all(np.isfinite(a)):
        raise ReleaseFileError(f'{self.dataset}: item {item}, caption {i} of '
                               f'{self.release.word_vectors} has shape {a.shape} or non-finite '
                               f'values, expected finite [tokens, {WORD_DIM}]')
    return texts, [a.astype(np.float32) for a in arrays]

  def audio_examples(self, split: str) -> Iterator[tuple[str, dict]]:
    """(id, example) with `id`, `audio_path`, `experts` and `available` only (no captions)."""
    for item in self.split_ids(split):
      experts, available = {}, {}
      for expert in self.release.experts:
        experts[expert.name], available[expert.name] = self._feature(expert, item)
      yield item, {'id': item, 'audio_path': self._audio_path(item), 'experts': experts,
                   'available': available}

  def examples(self, split: str) -> Iterator[tuple[str, dict]]:
    """(id, example) for every item of a split.

    Fields: `id`; `audio_path` ('' when unknown); `experts` (name -> `[T, D]` or `[D]`
    float32, empty `[0, D]` / zeros when missing); `available` (name -> bool); `captions`
    (texts); `caption_vectors` (one `[tokens, 300]` array per caption).
    """
    for item, example in self.audio_examples(split):
      example['captions'], example['caption_vectors'] = self._text(item)
      yield item, example

  def _audio_path(self, item: str) -> str:
    """Absolute path of the item's audio file where the release lists one, else ''."""
    if self.release.audio_files is None:
      return ''
    if 'audio_files' not in self._cache:
      self._cache['audio_files'] = json.loads(self._path(self.release.audio_files).read_text())
    relative = self._cache['audio_files'].get(item)
    return str((self.root / relative).absolute()) if relative else ''
