"""Features CLI robustness (issue 12 item 9): odd names, bad files, bad CSVs, atomic output."""

import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from jaxretrieval.features import audio_io
from jaxretrieval.features.__main__ import read_captions
from jaxretrieval.features.release_writer import folder_reader, item_id, relative_path
from tests import in_process

NAMES = [' lead.wav', 'trail .wav', 'new\nline.wav', '100%.wav', 'café.wav']


@pytest.mark.parametrize('name', NAMES + ['plain/sub.wav', os.fsdecode(b'bad\xffbyte.wav')])
def test_item_ids_round_trip_and_fit_on_one_line(name):
  item = item_id(name)
  assert relative_path(item) == name
  assert item == item.strip() and '\n' not in item and item.isprintable()


def test_folder_of_odd_names_round_trips(tmp_path):
  audio, out = tmp_path / 'audio', tmp_path / 'out'
  audio.mkdir()
  rng = np.random.default_rng(0)
  names = NAMES + [os.fsdecode(b'bad\xffbyte.wav')]
  for name in names:
    soundfile.write(os.path.join(os.fsencode(audio), os.fsencode(name)),
                    0.1 * rng.normal(size=16000), 16000)
  (audio / 'folder.wav').mkdir()  # a folder, not audio
  soundfile.write(audio / 'cut.wav', 0.1 * rng.normal(size=16000), 16000, subtype='PCM_16')
  data = (audio / 'cut.wav').read_bytes()
  (audio / 'cut.wav').write_bytes(data[:len(data) // 2])  # a download cut short
  (out / 'stale').mkdir(parents=True)  # an earlier run's output is replaced as a whole
  (out / 'audio_files.json').write_text('{}')
  result = in_process.run_module('jaxretrieval.features',
                                 [f'--audio_dir={audio}', f'--out={out}', '--workers=1'])
  assert result.returncode == 0, result.stderr
  assert 'skipping' in result.stderr and 'folder.wav: not a file' in result.stderr
  assert 'cannot read cut.wav: truncated' in result.stderr
  failed = (out / 'failed_files.txt').read_text(encoding='utf-8').splitlines()
  assert [f.split('\t')[0] for f in failed] == ['cut.wav']
  assert not (out / 'stale').exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith('.out.')]
  ids = (out / 'all_list.txt').read_text(encoding='utf-8').splitlines()
  assert sorted(relative_path(i) for i in ids) == sorted(names)
  reader = folder_reader(out, ['all'], ('logmel', 'spectral'))
  examples = dict(reader.audio_examples('all'))
  assert sorted(examples) == sorted(ids)
  for item, example in examples.items():
    assert os.path.basename(example['audio_path']) == relative_path(item)
    assert example['experts']['logmel'].shape == (1, 128)


def test_truncated_wav_is_reported(tmp_path):
  soundfile.write(tmp_path / 'a.wav', np.zeros(8000), 16000, subtype='PCM_16')
  audio_io.read_audio(tmp_path / 'a.wav')
  data = (tmp_path / 'a.wav').read_bytes()
  (tmp_path / 'a.wav').write_bytes(data[:-100])
  with pytest.raises(audio_io.AudioReadError, match=r'a.wav: truncated: the header declares '
                                                    r'16000 bytes of audio, the file holds 15900'):
    audio_io.read_audio(tmp_path / 'a.wav')


def test_captions_csv_with_a_bom_latin1_or_short_rows(tmp_path):
  csv_path = tmp_path / 'c.csv'
  csv_path.write_bytes('\ufefffile,caption\n" lead.wav",a dog\ncafé.wav,un café\n'.encode())
  captions, splits = read_captions(csv_path)
  assert captions == {'%20lead.wav': ['a dog'], 'café.wav': ['un café']} and not splits
  csv_path.write_bytes('file,caption\na.wav,ok\ncafé.wav,un café\n'.encode('latin-1'))
  with pytest.raises(ValueError, match=r'c.csv:3: byte 0xe9 is not UTF-8; save the CSV as UTF-8'):
    read_captions(csv_path)
  csv_path.write_text('file,caption,split\na.wav,ok,train\nb.wav\n')
  with pytest.raises(ValueError, match=r'c.csv:3: expected the header\'s 3 fields'):
    read_captions(csv_path)
  csv_path.write_text('name,caption\na.wav,ok\n')
  with pytest.raises(ValueError, match=r"missing column\(s\) \['file'\]"):
    read_captions(csv_path)


def test_out_holding_the_audio_is_refused(tmp_path):
  """A real `python -m` process (the other tests run the CLI in this one): its exit status."""
  soundfile.write(tmp_path / 'a.wav', np.zeros(16000), 16000)
  result = subprocess.run([sys.executable, '-m', 'jaxretrieval.features',
                           f'--audio_dir={tmp_path}', f'--out={tmp_path}'],
                          capture_output=True, text=True)
  assert result.returncode != 0 and 'holds the audio folder' in result.stderr
  assert (tmp_path / 'a.wav').is_file()
