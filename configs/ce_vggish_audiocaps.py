"""Single-expert CE (VGGish) on AudioCaps: Table 1 (paper: t2a R@1 18.0, R@10 62.0)."""

from configs import common


def get_config(arg=None):
  return common.experiment('audiocaps', 'ce', ('vggish',), arg)
