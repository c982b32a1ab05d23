"""`tfds build data_builders/synthcaps`: SynthCaps, built by `jaxretrieval.data.tfds_builders`.

TFDS's command line loads a builder from this file's path; the builder itself lives in the
library (`tfds.builder('synthcaps')` after importing `jaxretrieval.data.tfds_builders`).
"""

from jaxretrieval.data import tfds_builders


class Builder(tfds_builders.BUILDERS['synthcaps'], skip_registration=True):
  """The library's `synthcaps` builder, under the name TFDS's command line expects."""
