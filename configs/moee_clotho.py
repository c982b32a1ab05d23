"""MoEE (VGGish + VGGSound) on CLOTHO: Table 3 "CLOTHO MoEE none" (paper: t2a R@1 6.0)."""

from configs import common


def get_config(arg=None):
  return common.experiment('clotho', 'moee', ('vggish', 'vggsound'), arg)
