"""`tfds build data_builders/queryd`: QuerYD (video level), built by `jaxretrieval.data.tfds_builders`.

TFDS's command line loads a builder from this file's path; the builder itself lives in the
library (`tfds.builder('queryd')` after importing `jaxretrieval.data.tfds_builders`).
"""

from jaxretrieval.data import tfds_builders


class Builder(tfds_builders.BUILDERS['queryd'], skip_registration=True):
  """The library's `queryd` builder, under the name TFDS's command line expects."""
