"""`tfds build data_builders/activitynet_captions`: ActivityNet Captions, built by `jaxretrieval.data.tfds_builders`.

TFDS's command line loads a builder from this file's path; the builder itself lives in the
library (`tfds.builder('activitynet_captions')` after importing `jaxretrieval.data.tfds_builders`).
"""

from jaxretrieval.data import tfds_builders


class Builder(tfds_builders.BUILDERS['activitynet_captions'], skip_registration=True):
  """The library's `activitynet_captions` builder, under the name TFDS's command line expects."""
