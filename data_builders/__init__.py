"""TFDS builders of the datasets. Importing this package registers them with TFDS."""

from data_builders.activitynet_captions import activitynet_captions_dataset_builder
from data_builders.audiocaps import audiocaps_dataset_builder
from data_builders.clotho import clotho_dataset_builder
from data_builders.queryd import queryd_dataset_builder
from data_builders.queryd_segments import queryd_segments_dataset_builder
from data_builders.sounddescs import sounddescs_dataset_builder
from data_builders.synthcaps import synthcaps_dataset_builder
