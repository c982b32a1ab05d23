"""MoEE (log-mel + MFCC/spectral experts) on SynthCaps."""

from configs import common


def get_config(arg=None):
  return common.experiment('synthcaps', 'moee', ('logmel', 'spectral'), arg)
