"""MoEE (VGGish + VGGSound) on AudioCaps: Table 3 "AudioCaps MoEE none" (paper: t2a R@1 22.5)."""

from configs import common


def get_config(arg=None):
  return common.experiment('audiocaps', 'moee', ('vggish', 'vggsound'), arg)
