"""QuerYD (video level): released precomputed expert features (REFERENCE §1)."""

import tensorflow_datasets as tfds

from data_builders import release_builder


class Builder(release_builder.ReleaseBuilder):
  DATASET = 'queryd'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Features of the audio-only release (features-v2).'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = release_builder.manual_instructions(DATASET)
