"""`python -m jaxretrieval.features` on a folder of the user's own audio (run in the test
process, `tests.in_process`: what is checked is its output)."""

import csv

import numpy as np
import soundfile

from jaxretrieval.data.registry import computed_release
from jaxretrieval.data.releases import ReleaseReader
from jaxretrieval.features.handcrafted import DIMS
from jaxretrieval.text import WordVectors, tokenize
from tests import in_process


def test_folder_with_captions_and_a_broken_file(tmp_path):
  audio = tmp_path / 'audio'
  (audio / 'sub').mkdir(parents=True)
  rng = np.random.default_rng(0)
  names = ['a.wav', 'b.flac', 'sub/c.wav', 'd.wav', 'e.flac']
  for k, name in enumerate(names):
    rate = 44100 if k % 2 else 16000  # resampled to 16 kHz
    channels = (rate * 2, 2) if k == 2 else (rate * 2,)  # stereo mixed to mono
    soundfile.write(audio / name, rng.normal(size=channels) * 0.1, rate)
  (audio / 'broken.wav').write_bytes(b'RIFF....not audio')
  with open(tmp_path / 'captions.csv', 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['file', 'caption'])
    for name in names[:4]:
      w.writerow([name, f'a loud noise from {name.split(".")[0]}'])
      w.writerow([name, 'quiet hiss'])
  WordVectors({w: rng.normal(size=300) for w in ['a', 'loud', 'noise', 'from', 'quiet', 'hiss']}
              ).save(tmp_path / 'words.npz')
  out = tmp_path / 'out'
  result = in_process.run_module(
      'jaxretrieval.features',
      [f'--audio_dir={audio}', f'--out={out}', f'--captions={tmp_path / "captions.csv"}',
       f'--word_vectors={tmp_path / "words.npz"}', '--val_fraction=0.25', '--test_fraction=0.25',
       '--workers=2'])
  assert result.returncode == 0, result.stderr
  assert 'cannot read broken.wav' in result.stderr
  assert 'broken.wav' in (out / 'failed_files.txt').read_text()
  splits = {s: (out / f'{s}_list.txt').read_text().split() for s in ('all', 'train', 'val', 'test')}
  assert sorted(splits['all']) == sorted(names)
  assert sorted(splits['train'] + splits['val'] + splits['test']) == sorted(names[:4])
  assert len(splits['val']) == len(splits['test']) == 1
  reader = ReleaseReader('custom', out, computed_release('custom', splits, DIMS))
  examples = dict(reader.examples('train'))
  for item, example in examples.items():
    stem = item.rsplit('.', 1)[0]
    assert example['captions'] == [' '.join(tokenize(f'a loud noise from {stem}')), 'quiet hiss']
    assert example['experts']['logmel'].shape == (2, 128)
    assert example['audio_path'].endswith(item)
    assert [len(v) for v in example['caption_vectors']] == [4, 2]
