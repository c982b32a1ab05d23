"""A TFDS builder over a released feature archive (REFERENCE §1); one subclass per dataset.

Build with `tfds build data_builders/<name> --manual_dir=DIR`, DIR holding the
`<NAME>-experts-audio-only.tar.gz` archive or the folder it unpacks to. Items without an
entry in an expert's file are built as unavailable for it; the build log and the dataset's
metadata (`builder.info.metadata['missing_entries'][split][expert]`, in `metadata.json`)
count them.
"""

import pathlib

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from jaxretrieval.data.releases import (RELEASES, WORD_DIM, Release, ReleaseFileError,
                                        ReleaseReader, find_root, unpack_archive)


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
  r = RELEASES[dataset]
  return (f'Download {r.url} into the manual dir (keep the .tar.gz, or unpack it there). '
          f'Expected layout: {r.archive}, or a folder holding '
          f'data/{r.folder}/structured-symlinks/ with {", ".join(sorted(r.splits.values()))}, '
          f'{r.captions}, {r.word_vectors} and '
          f'{", ".join(e.path for e in r.experts)}.')


def locate_release(dataset: str, manual_dir: pathlib.Path, scratch: pathlib.Path) -> pathlib.Path:
  """The structured-symlinks folder, unpacking the archive into `scratch` when needed."""
  release = RELEASES[dataset]
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


class ReleaseBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Builder of one released dataset; subclasses set DATASET and the TFDS boilerplate."""
  DATASET: str

  def _info(self) -> tfds.core.DatasetInfo:
    release = RELEASES[self.DATASET]
    return self.dataset_info_from_configs(
        description=f'{release.name} precomputed expert features and captions of the audio '
                    'retrieval benchmark (Oncescu et al., Interspeech 2021).',
        features=release_features(release),
        homepage='https://github.com/akoepke/audio-retrieval-benchmark',
        metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = locate_release(self.DATASET, dl_manager.manual_dir,
                          pathlib.Path(dl_manager.download_dir) / 'unpacked')
    reader = ReleaseReader(self.DATASET, root)
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


def tfds_example(example: dict) -> dict:
  """A ReleaseReader example in the builders' feature layout."""
  vectors = example.pop('caption_vectors')
  example['caption_vectors'] = np.concatenate(vectors, axis=0)
  example['caption_lengths'] = np.array([len(v) for v in vectors], np.int32)
  return example
