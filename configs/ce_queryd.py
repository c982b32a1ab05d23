"""Single-expert CE (VGGish) on QuerYD (trimmed segments): Table 1 (paper: t2a R@1 3.7)."""

from configs import common


def get_config(arg=None):
  return common.experiment('queryd_segments', 'ce', ('vggish',), arg)
