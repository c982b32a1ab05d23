"""Single-expert CE (VGGish) on CLOTHO: Table 1 (paper: t2a R@1 4.0, R@10 25.4)."""

from configs import common


def get_config(arg=None):
  return common.experiment('clotho', 'ce', ('vggish',), arg)
