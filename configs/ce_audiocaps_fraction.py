"""CE (VGGish + VGGSound) on a fraction of AudioCaps' training set: Figure 1(c).

`configs/ce_audiocaps_fraction.py:fraction=0.1` (0.1, 0.25, 0.5, 0.75, 1.0): a seeded
subset of the training items; validation and test splits are unchanged.
"""

from configs import common


def get_config(arg=None):
  a = common.parse_arg(arg, fraction=0.5, seed=0)
  return common.experiment('audiocaps', 'ce', ('vggish', 'vggsound'),
                           f'fraction={a.fraction},seed={a.seed}')
