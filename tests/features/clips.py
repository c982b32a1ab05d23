"""Realistic test clips: espeak-ng speech (22.05 kHz, so resampled), noise, silence, short."""

import shutil
import subprocess

import numpy as np
import soundfile

SR = 16000


def speech(path, text='a dog barks while a car passes by'):
  """espeak-ng speech at 22,050 Hz; a chirp-and-noise stand-in where espeak-ng is absent."""
  if shutil.which('espeak-ng'):
    subprocess.run(['espeak-ng', '-w', str(path), text], check=True, capture_output=True)
  else:
    t = np.arange(int(2.3 * 22050)) / 22050
    wave = 0.3 * np.sin(2 * np.pi * (200 + 400 * t) * t) * (1 + np.sin(7 * t))
    soundfile.write(path, wave + 0.01 * np.random.default_rng(1).normal(size=t.size), 22050,
                    subtype='PCM_16')
  return path


def write_clips(folder):
  """{name: path}: speech, stereo 44.1 kHz noise (12 s), silence, a 0.5 s clip, a 1 s tone."""
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  clips = {'speech': speech(folder / 'speech.wav')}
  soundfile.write(folder / 'noise.flac', 0.2 * rng.normal(size=(12 * 44100, 2)), 44100)
  soundfile.write(folder / 'silence.wav', np.zeros(3 * SR), SR, subtype='PCM_16')
  soundfile.write(folder / 'short.wav', 0.3 * rng.normal(size=SR // 2), SR, subtype='PCM_16')
  t = np.arange(SR) / SR
  soundfile.write(folder / 'tone.wav', 0.5 * np.sin(2 * np.pi * 440 * t), SR, subtype='PCM_16')
  clips.update({p.stem: p for p in folder.iterdir() if p.stem not in clips})
  return clips
