"""CE (VGGish + VGGSound) on CLOTHO: Table 3 "CLOTHO CE none" (paper: t2a R@1 6.7)."""

from configs import common


def get_config(arg=None):
  return common.experiment('clotho', 'ce', ('vggish', 'vggsound'), arg)
