"""CE (VGGish + VGGSound) on SoundDescs (journal version; README: t2a R@1 31.1)."""

from configs import common


def get_config(arg=None):
  return common.experiment('sounddescs', 'ce', ('vggish', 'vggsound'), arg)
