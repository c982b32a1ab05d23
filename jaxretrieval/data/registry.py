"""Every fact about a dataset and an expert, in one place (REFERENCE §1.4-1.6).

`EXPERTS`: the experts under our short names (the names of `config.experts` and of the
TFDS features) with the reference's names, raw widths and aggregation. The model orders
its experts by reference name, as the reference does (REFERENCE §7.1).

`DATASETS`: per dataset, where its release keeps what (`Release`) and the paper's protocol
(splits, token limits, flaky experts, test captions, caption fusing). Experiment configs
take the protocol through `configure`; the TFDS builders, the release reader and the
checkpoint importer read the rest. Nothing here imports JAX or TensorFlow.
"""

from collections.abc import Iterable, Mapping
import dataclasses

import ml_collections

URL = ('http://www.robots.ox.ac.uk/~vgg/research/collaborative-experts/data/features-v2/'
       '{name}-experts-audio-only.tar.gz')
WORD_DIM = 300  # word2vec width of the caption word vectors
_TEXT = 'text_embeddings/w2v.pkl'  # the word vectors' file in most releases


@dataclasses.dataclass(frozen=True)
class Expert:
  """One expert. `temporal='vlad'`: `[T, dim]` sequences pooled by NetVLAD in the model;
  `'avg'`: already pooled `[dim]` vectors."""
  name: str
  reference_name: str  # the reference's config key; fixes the model's expert order
  dim: int
  temporal: str
  label: str  # the paper's name of the network


EXPERTS = {e.name: e for e in (
    Expert('vggish', 'audio', 128, 'vlad', 'VGGish'),
    Expert('vggsound', 'vggsound', 512, 'vlad', 'VGGSound'),
    Expert('pann', 'pann', 2048, 'vlad', 'PANN'),
    Expert('syncnet', 'syncnet', 1024, 'vlad', 'SyncNet'),
    Expert('inst', 'imagenet.resnext101_32x48d.0', 2048, 'avg', 'Inst'),
    Expert('r2p1d', 'r2p1d.r2p1d-ig65m.0', 512, 'avg', 'R2P1D'),
    Expert('scene', 'scene.densenet161.0', 2208, 'avg', 'Scene'),
    Expert('face', 'face', 512, 'avg', 'Face'),
    Expert('ocr', 'ocr', 300, 'vlad', 'OCR'),
    # Computed by this project (jaxretrieval.features): SynthCaps and users' own audio.
    Expert('logmel', 'logmel', 128, 'vlad', 'log-mel'),
    Expert('spectral', 'spectral', 32, 'vlad', 'MFCC+spectral'),
)}
EXPERTS_BY_REFERENCE_NAME = {e.reference_name: e for e in EXPERTS.values()}


def expert(name: str) -> Expert:
  """The registered expert `name`; an unknown name is an error listing the known ones."""
  if name not in EXPERTS:
    raise ValueError(f'unknown expert {name!r}: expected one of {sorted(EXPERTS)}')
  return EXPERTS[name]


@dataclasses.dataclass(frozen=True)
class Release:
  """Where a release keeps what; paths are relative to its structured-symlinks folder."""
  name: str  # archive name, as in the URL
  folder: str  # the archive unpacks to data/<folder>/structured-symlinks
  splits: Mapping[str, str]  # our split name -> split list file
  captions: str
  word_vectors: str
  expert_files: Mapping[str, str]  # expert name (a key of EXPERTS) -> feature file
  audio_files: str | None = None  # optional JSON: id -> audio file (relative to the root)

  def __post_init__(self):
    for name in self.expert_files:
      expert(name)

  @property
  def experts(self) -> tuple[Expert, ...]:
    return tuple(EXPERTS[name] for name in self.expert_files)

  @property
  def url(self) -> str:
    return URL.format(name=self.name)

  @property
  def archive(self) -> str:
    return f'{self.name}-experts-audio-only.tar.gz'

  def archive_path(self, relative: str) -> str:
    return f'data/{self.folder}/structured-symlinks/{relative}'


def computed_release(name: str, splits: Iterable[str], experts: Iterable[str]) -> Release:
  """The layout `jaxretrieval.features` writes (SynthCaps and users' own audio)."""
  return Release(
      name, name, {s: f'{s}_list.txt' for s in splits}, 'structured-symlinks/raw-captions.pkl',
      _TEXT, {e: f'aggregated_{e}/{e}-raw.pkl' for e in experts}, audio_files='audio_files.json')


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset: its release layout and the paper's protocol for it (REFERENCE §1.5, §1.6).

  `max_tokens`: truncation/padding length per temporal expert and for the text; `flaky`:
  experts that may be missing in training; `num_test_captions`: captions per item at test
  (each an independent query); `fuse_captions`: all captions of an item concatenated into
  one query; `reference_name`: the reference's `dataset_name` (None: not in the reference).
  """
  name: str  # TFDS builder name
  release: Release
  max_tokens: Mapping[str, int]
  flaky: tuple[str, ...]
  num_test_captions: int
  fuse_captions: bool
  reference_name: str | None
  val_split: str = 'val'
  test_split: str = 'test'
  tfds_name: str = ''  # TFDS dataset (and config) read by default; '' = `name`

  def __post_init__(self):
    if not self.tfds_name:
      object.__setattr__(self, 'tfds_name', self.name)
    for e in (*self.max_tokens.keys() - {'text'}, *self.flaky):
      if e not in self.release.expert_files:
        raise ValueError(f'dataset {self.name}: expert {e!r} is not in its release')
    for split in (self.val_split, self.test_split):
      if split not in self.release.splits:
        raise ValueError(f'dataset {self.name}: split {split!r} is not in its release')


_AUDIO = {'vggish': 'aggregated_audio/vggish-raw.hickle',
          'vggsound': 'aggregated_vggsound/vggsound-raw.hickle',
          'pann': 'aggregated_pann/pann-raw.hickle',
          'syncnet': 'aggregated_syncnet/syncnet-raw.hickle'}
_VISUAL = {
    'inst': 'aggregated_imagenet_25fps_256px_stride1_offset0/resnext101_32x48d-avg.pickle',
    'r2p1d': 'aggregated_r2p1d_30fps_256px_stride32_offset0_inner_stride1/r2p1d-ig65m-avg.pickle',
    'scene': 'aggregated_scene_25fps_256px_stride1_offset0/densenet161-avg.pickle',
}
_SPLITS = {'train': 'train_list.txt', 'val': 'val_list.txt', 'test': 'test_list.txt'}

DATASETS = {d.name: d for d in (
    Dataset('audiocaps', Release(
        'AudioCaps', 'AudioCaps',
        {'train': 'train_list.txt', 'val': 'filtered_val_list.txt',
         'test': 'final_filtered_test_list.txt'},
        'structured-symlinks/raw-captions.pkl', _TEXT, {**_AUDIO, **_VISUAL}),
        max_tokens=dict(text=52, vggish=10, vggsound=32, pann=29, syncnet=29),
        flaky=('vggish',), num_test_captions=5, fuse_captions=False,
        reference_name='AudioCaps'),
    Dataset('clotho', Release(
        'CLOTHO', 'CLOTHO', _SPLITS, 'structured-symlinks/raw-captions.pkl', _TEXT, _AUDIO),
        max_tokens=dict(text=21, vggish=31, vggsound=95, pann=29, syncnet=29),
        flaky=(), num_test_captions=5, fuse_captions=False, reference_name='CLOTHO'),
    # ActivityNet: selection and the reported numbers both on val_1 (REFERENCE §7.15). Only
    # the audio expert is flaky (REFERENCE §1.5); face and ocr are in no paper config.
    Dataset('activitynet_captions', Release(
        'activity-net', 'activity-net', {'train': 'train_list.txt', 'val_1': 'val_1_list.txt'},
        'raw-captions-train-val_1.pkl', 'aggregated_text_feats/w2v.pkl',
        {'vggish': 'aggregated_audio/vggish-audio-raw.pickle',
         'face': 'aggregated_facefeats_25fps_256px_stride1/face-avg.pickle',
         'ocr': 'aggregated_ocr_feats/ocr-w2v.pkl'}),
        max_tokens=dict(text=20, vggish=29), flaky=('vggish',), num_test_captions=1,
        fuse_captions=True, reference_name='ActivityNet', val_split='val_1',
        test_split='val_1'),
    Dataset('queryd_segments', Release(
        'QuerYDSegments', 'QuerYDSegments', _SPLITS,
        'structured-symlinks/split_raw_captions_filtered.pkl', _TEXT,
        {'vggish': _AUDIO['vggish']}),
        max_tokens=dict(text=70, vggish=500), flaky=('vggish',), num_test_captions=1,
        fuse_captions=False, reference_name='QuerYDSegments'),
    # Video-level QuerYD: the caption file sits where the archive puts it, one level above
    # the path the reference loader expects (REFERENCE §7.22).
    Dataset('queryd', Release(
        'QuerYD', 'QuerYD', _SPLITS, 'raw_captions_combined_filtered.pkl', _TEXT,
        {'vggish': _AUDIO['vggish'], **_VISUAL}),
        max_tokens=dict(text=70, vggish=500), flaky=('vggish',), num_test_captions=1,
        fuse_captions=True, reference_name='QuerYD'),
    Dataset('sounddescs', Release(
        'SoundDescs', 'SoundDescs', _SPLITS, 'structured-symlinks/raw-captions.pkl', _TEXT,
        {'vggish': 'aggregated_audio/vggish-raw.pkl',
         'vggsound': 'aggregated_vggsound/vggsound-raw.pkl'}),
        max_tokens=dict(text=46, vggish=400, vggsound=400), flaky=(), num_test_captions=1,
        fuse_captions=True, reference_name='SoundDescs'),
    # SynthCaps: clips of up to ~5.5 s: 0.96 s log-mel patches, 100 ms spectral frames.
    Dataset('synthcaps', computed_release('SynthCaps', ('train', 'val', 'test'),
                                          ('logmel', 'spectral')),
            max_tokens=dict(text=32, logmel=6, spectral=56), flaky=(), num_test_captions=5,
            fuse_captions=False, reference_name=None, tfds_name='synthcaps/small'),
)}
DATASETS_BY_REFERENCE_NAME = {d.reference_name: d for d in DATASETS.values()
                              if d.reference_name is not None}


def configure(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Sets `config.dataset = name` and the config fields of its protocol; returns `config`."""
  if name not in DATASETS:
    raise ValueError(f'config.dataset={name!r}: expected one of {sorted(DATASETS)}')
  d = DATASETS[name]
  config.dataset = name
  config.tfds_name = d.tfds_name
  config.max_tokens = ml_collections.ConfigDict(dict(d.max_tokens))
  config.flaky = d.flaky
  config.num_test_captions = d.num_test_captions
  config.fuse_captions = d.fuse_captions
  config.val_split = d.val_split
  config.test_split = d.test_split
  return config
