"""Single-expert CE (VGGish) on ActivityNet-Captions, val_1: Table 1 (paper: t2a R@1 1.5).

Captions of a video are fused into one paragraph query truncated to 20 tokens; model
selection and the reported numbers both use val_1 (REFERENCE §7.15).
"""

from configs import common


def get_config(arg=None):
  return common.experiment('activitynet_captions', 'ce', ('vggish',), arg)
