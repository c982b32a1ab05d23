"""CE (VGGish + VGGSound) on CLOTHO, fine-tuned from AudioCaps: Table 3 (paper: t2a R@1 9.6).

`configs/ce_clotho_from_audiocaps.py:init_from=workdirs/ce_audiocaps` starts from that
workdir's best weights and, as the reference did, its latest optimizer state (decayed
learning rate, LookAhead buffers); an imported reference checkpoint works too.
"""

from configs import common


def get_config(arg=None):
  a = common.parse_arg(arg, init_from='workdirs/ce_audiocaps', seed=0)
  c = common.experiment('clotho', 'ce', ('vggish', 'vggsound'), f'seed={a.seed}')
  c.init_from = a.init_from
  c.init_optimizer = True
  return c
