"""CE (VGGish + VGGSound) on AudioCaps: Table 3 "AudioCaps CE none" (paper: t2a R@1 23.1).

Table 2's expert ablation through the argument, e.g.
`configs/ce_audiocaps.py:experts=scene,vggish` or `:experts=r2p1d,inst,vggish,vggsound`.
"""

from configs import common


def get_config(arg=None):
  return common.experiment('audiocaps', 'ce', ('vggish', 'vggsound'), arg)
