"""Single-expert CE (VGGSound) on AudioCaps: Table 2 "VGGSound" (paper: t2a R@1 20.5)."""

from configs import common


def get_config(arg=None):
  return common.experiment('audiocaps', 'ce', ('vggsound',), arg)
