"""CE (log-mel + MFCC/spectral experts) on SynthCaps, the embedded dataset (README demo)."""

from configs import common


def get_config(arg=None):
  return common.experiment('synthcaps', 'ce', ('logmel', 'spectral'), arg)
