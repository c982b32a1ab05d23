"""`tfds build data_builders/queryd_segments`: QuerYD segments (the paper's "QuerYD"), built by `jaxretrieval.data.tfds_builders`.

TFDS's command line loads a builder from this file's path; the builder itself lives in the
library (`tfds.builder('queryd_segments')` after importing `jaxretrieval.data.tfds_builders`).
"""

from jaxretrieval.data import tfds_builders


class Builder(tfds_builders.BUILDERS['queryd_segments'], skip_registration=True):
  """The library's `queryd_segments` builder, under the name TFDS's command line expects."""
