"""TFDS builders of every dataset; importing this module registers them with TFDS.

The reference's datasets are built from their released feature archives (REFERENCE §1), one
builder per `registry.DATASETS` entry with a reference name: `tfds.builder('clotho')` after
`import jaxretrieval.data.tfds_builders`, or on the command line
`tfds build data_builders/<name> --manual_dir=DIR`, DIR holding the
`<NAME>-experts-audio-only.tar.gz` archive or the folder it unpacks to (`data_builders/`
holds the command line's entry points, which subclass these). Items without an entry in an
expert's file are built as unavailable for it; the build log and the dataset's metadata
(`builder.info.metadata['missing_entries'][split][expert]`, in `metadata.json`) count them.

SynthCaps is generated (`jaxretrieval.data.synthcaps`) in the release layout and read back
through the same release reader.
"""

import dataclasses
import pathlib

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from jaxretrieval.data.registry import DATASETS, WORD_DIM, Release
from jaxretrieval.data.releases import ReleaseFileError, ReleaseReader, find_root, unpack_archive
from jaxretrieval.data.synthcaps.generate import SPLITS, generate

HOMEPAGE = 'https://github.com/akoepke/audio-retrieval-benchmark'


def release_features(release: Release) -> tfds.features.FeaturesDict:
  """One item: its id, audio path, experts with availability, captions and word vectors."""
  experts = {e.name: tfds.features.Tensor(
      shape=(None, e.dim) if e.temporal == 'vlad' else (e.dim,), dtype=np.float32)
             for e in release.experts}
  return tfds.features.FeaturesDict({
      'id': tfds.features.Text(),
      'audio_path': tfds.features.Text(),
      'experts': experts,
      'available': {e.name: tfds.features.Scalar(dtype=np.bool_) for e in release.experts},
      'captions': tfds.features.Sequence(tfds.features.Text()),
      # The word vectors of all captions, concatenated; caption i has caption_lengths[i] rows.
      'caption_vectors': tfds.features.Tensor(shape=(None, WORD_DIM), dtype=np.float32),
      'caption_lengths': tfds.features.Tensor(shape=(None,), dtype=np.int32),
  })


def manual_instructions(dataset: str) -> str:
  """What to download and the layout expected in the manual dir."""
  r = DATASETS[dataset].release
  files = ', '.join(f'{path} ({e.label})' for e, path in zip(r.experts, r.expert_files.values()))
  return (f'Download {r.url} into the manual dir (keep the .tar.gz, or unpack it there). '
          f'Expected layout: {r.archive}, or a folder holding '
          f'data/{r.folder}/structured-symlinks/ with {", ".join(sorted(r.splits.values()))}, '
          f'{r.captions}, {r.word_vectors} and {files}.')


def locate_release(dataset: str, manual_dir: pathlib.Path, scratch: pathlib.Path) -> pathlib.Path:
  """The structured-symlinks folder, unpacking the archive into `scratch` when needed."""
  release = DATASETS[dataset].release
  manual_dir = pathlib.Path(manual_dir)
  archive = manual_dir / release.archive
  if archive.is_file():
    target = scratch / release.name
    unpack_archive(archive, target)
    root = find_root(release, target)
    if root is None:
      raise ReleaseFileError(f'{dataset}: {archive} does not hold '
                             f'data/{release.folder}/structured-symlinks/ '
                             f'with {release.splits}. {manual_instructions(dataset)}')
    return root
  root = find_root(release, manual_dir)
  if root is None:
    raise ReleaseFileError(f'{dataset}: found neither {release.archive} nor an unpacked '
                           f'release in {manual_dir}. {manual_instructions(dataset)}')
  return root


def tfds_example(example: dict) -> dict:
  """A ReleaseReader example in the builders' feature layout."""
  vectors = example.pop('caption_vectors')
  example['caption_vectors'] = np.concatenate(vectors, axis=0)
  example['caption_lengths'] = np.array([len(v) for v in vectors], np.int32)
  return example


class ReleaseBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Builder of one released dataset; `_release_builder` makes one per dataset."""
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Features of the audio-only release (features-v2).'}

  def _info(self) -> tfds.core.DatasetInfo:
    release = DATASETS[self.name].release
    return self.dataset_info_from_configs(
        description=f'{release.name} precomputed expert features and captions of the audio '
                    'retrieval benchmark (Oncescu et al., Interspeech 2021).',
        features=release_features(release), homepage=HOMEPAGE,
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = locate_release(self.name, dl_manager.manual_dir,
                          pathlib.Path(dl_manager.download_dir) / 'unpacked')
    reader = ReleaseReader(self.name, root)
    reader.check_splits()  # fail before writing anything
    return {split: self._generate_examples(reader, split) for split in reader.release.splits}

  def _generate_examples(self, reader: ReleaseReader, split: str):
    for key, example in reader.examples(split):
      yield key, tfds_example(example)
    # Reached once TFDS has written the whole split.
    counts = {expert: len(ids) for expert, ids in reader.missing[split].items()}
    self.info.metadata.setdefault('missing_entries', {})[split] = counts
    for line in reader.missing_report(split):
      logging.warning(line)


def _release_builder(dataset: str) -> type[ReleaseBuilder]:
  """The TFDS builder of released `dataset`, registered under that name."""
  return type(''.join(part.title() for part in dataset.split('_')), (ReleaseBuilder,), {
      'name': dataset, '__module__': __name__,
      '__doc__': f'{dataset}: released precomputed expert features (REFERENCE §1).',
      'MANUAL_DOWNLOAD_INSTRUCTIONS': manual_instructions(dataset)})


@dataclasses.dataclass
class SynthCapsConfig(tfds.core.BuilderConfig):
  train: int = 0
  val: int = 0
  test: int = 0
  seed: int = 0


class SynthCaps(tfds.core.GeneratorBasedBuilder):
  """SynthCaps: procedurally generated audio captioning data, built with no download.

  Clips of 1-3 synthetic sound events (16 kinds, with loudness, length, pitch and rate),
  in sequence or overlapping, over background noise; 5 captions each. The builder renders
  the clips, computes the project's experts from the waveforms and writes everything in the
  release layout, which the shared release reader then ingests - the real-data path. The
  wav files stay in `<data_dir>/downloads/synthcaps-<config>-<version>/audio/`.
  """
  name = 'synthcaps'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [
      SynthCapsConfig(name='small', description='Default: the README demo.', train=2000,
                      val=250, test=500),
      SynthCapsConfig(name='tiny', description='For tests.', train=48, val=16, test=16),
      SynthCapsConfig(name='large', description='For benchmarks.', train=20000, val=1000,
                      test=2000),
  ]
  DEFAULT_CONFIG_NAME = 'small'

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=self.__doc__, features=release_features(DATASETS['synthcaps'].release))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    c = self.builder_config
    root = pathlib.Path(dl_manager.download_dir) / f'synthcaps-{c.name}-{self.version}'
    generate(root, {'train': c.train, 'val': c.val, 'test': c.test}, c.seed)
    reader = ReleaseReader('synthcaps', root)
    return {split: self._generate_examples(reader, split) for split in SPLITS}

  def _generate_examples(self, reader: ReleaseReader, split: str):
    for key, example in reader.examples(split):
      yield key, tfds_example(example)


BUILDERS = {name: _release_builder(name) for name, d in DATASETS.items()
            if d.reference_name is not None}
BUILDERS['synthcaps'] = SynthCaps
