"""`python -m jaxretrieval.features --experts vggish,vggsound`: weight errors and batching.

The CLI's features themselves are checked against the reference implementations in
`test_chain.py` (the README recipe).
"""

import subprocess
import sys

import pytest

from jaxretrieval.features import prepare, pretrained, vggish, vggsound


def test_weight_errors_are_one_line_with_the_url(published, tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'jaxretrieval.features', f'--audio_dir={published.folder / "audio"}',
       f'--out={tmp_path / "out"}', '--experts=vggish,vggsound',
       f'--vggish_checkpoint={published.vggish_checkpoint}',
       f'--vggish_pca={published.vggish_pca}', f'--vggsound_checkpoint={tmp_path / "H.pth.tar"}'],
      capture_output=True, text=True)
  assert result.returncode != 0 and not (tmp_path / 'out').exists()
  assert result.stderr.strip().splitlines() == [
      f'{tmp_path / "H.pth.tar"}'.join(['VGGSound checkpoint ', ' not found; download '
                                        'http://www.robots.ox.ac.uk/~vgg/data/vggsound/models/'
                                        'H.pth.tar'])]
  options = prepare.Options()
  with pytest.raises(vggish.WeightsError, match=r"H.pth.tar: key features.0.weight missing; is "
                                                 r"this torchvggish's VGGish"):
    pretrained.load_runners(['vggish'], options, published.vggsound_checkpoint,
                            published.vggish_pca)
  with pytest.raises(vggish.WeightsError, match=r'needs --vggish_pca .*vggish_pca_params.npz'):
    pretrained.load_runners(['vggish'], options, published.vggish_checkpoint)
  with pytest.raises(vggsound.WeightsError, match=r'needs --vggsound_checkpoint .*H.pth.tar'):
    pretrained.load_runners(['vggsound'], options)


def test_buckets_are_few_and_hold_the_clip():
  sizes = {pretrained.bucket(n) for n in range(1, 20000, 7)}
  assert sorted(sizes)[:4] == [256, 384, 512, 768] and len(sizes) == 14
  assert all(pretrained.bucket(n) >= n for n in range(1, 5000, 13))
