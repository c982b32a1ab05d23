"""`tfds build data_builders/clotho`: CLOTHO, built by `jaxretrieval.data.tfds_builders`.

TFDS's command line loads a builder from this file's path; the builder itself lives in the
library (`tfds.builder('clotho')` after importing `jaxretrieval.data.tfds_builders`).
"""

from jaxretrieval.data import tfds_builders


class Builder(tfds_builders.BUILDERS['clotho'], skip_registration=True):
  """The library's `clotho` builder, under the name TFDS's command line expects."""
