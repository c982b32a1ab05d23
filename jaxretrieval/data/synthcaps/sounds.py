"""Sound events of SynthCaps, rendered with NumPy at 16 kHz.

Sixteen event kinds, each with a loudness (loud/quiet) and a length (short/long); some also
with a pitch (high/low) and a rate (fast/slow). Every renderer returns a unit-RMS signal;
`render_clip` scales, places and mixes the events over pink background noise.
"""

import dataclasses

import numpy as np

SR = 16000

# kind -> (has pitch, has rate)
KINDS = {
    'beep': (True, False), 'siren': (True, True), 'hum': (False, False),
    'hiss': (False, False), 'rumble': (False, False), 'clicks': (False, True),
    'chirps': (True, True), 'knocks': (False, True), 'bell': (True, False),
    'buzz': (True, False), 'pluck': (True, False), 'droplets': (False, True),
    'engine': (False, True), 'wind': (False, False), 'footsteps': (False, True),
    'whistle': (True, False),
}


@dataclasses.dataclass(frozen=True)
class Event:
  kind: str
  loud: bool
  long: bool
  high: bool | None = None  # None where pitch does not apply
  fast: bool | None = None  # None where rate does not apply


@dataclasses.dataclass(frozen=True)
class Clip:
  events: tuple[Event, ...]
  relation: str  # 'single', 'then' (in sequence) or 'while' (first event over the second)
  noisy: bool  # background noise at a low signal-to-noise ratio


def random_event(rng: np.random.Generator, kind: str | None = None,
                 long: bool | None = None) -> Event:
  kind = kind or str(rng.choice(list(KINDS)))
  has_pitch, has_rate = KINDS[kind]
  return Event(kind, bool(rng.random() < 0.5), bool(rng.random() < 0.5) if long is None else long,
               bool(rng.random() < 0.5) if has_pitch else None,
               bool(rng.random() < 0.5) if has_rate else None)


def random_clip(rng: np.random.Generator) -> Clip:
  """1 event (35%), 2 in sequence (30%) or overlapping (15%), 3 in sequence (20%)."""
  u = rng.random()
  noisy = bool(rng.random() < 0.3)
  if u < 0.35:
    return Clip((random_event(rng),), 'single', noisy)
  kinds = [str(k) for k in rng.choice(list(KINDS), size=3, replace=False)]
  if u < 0.65:
    return Clip((random_event(rng, kinds[0]), random_event(rng, kinds[1])), 'then', noisy)
  if u < 0.80:  # a foreground event over a long background one
    return Clip((random_event(rng, kinds[0]), random_event(rng, kinds[1], long=True)), 'while',
                noisy)
  longs = [False, False, False]
  longs[int(rng.integers(3))] = bool(rng.random() < 0.5)  # at most one long event of three
  return Clip(tuple(random_event(rng, k, long=lg) for k, lg in zip(kinds, longs)), 'then', noisy)


def _envelope(n: int, attack: float = 0.01, release: float = 0.05) -> np.ndarray:
  env = np.ones(n, np.float32)
  a, r = min(n // 2, int(attack * SR)), min(n // 2, int(release * SR))
  env[:a] = np.linspace(0.0, 1.0, a)
  env[n - r:] = np.linspace(1.0, 0.0, r)
  return env


def _bandpass(noise: np.ndarray, low: float, high: float) -> np.ndarray:
  spectrum = np.fft.rfft(noise)
  freqs = np.fft.rfftfreq(len(noise), 1.0 / SR)
  spectrum[(freqs < low) | (freqs > high)] = 0.0
  return np.fft.irfft(spectrum, n=len(noise)).astype(np.float32)


def _train(n: int, rate: float, rng: np.random.Generator, jitter: float = 0.1) -> np.ndarray:
  """Onset samples of a roughly periodic train at `rate` per second."""
  period = SR / rate
  onsets = np.arange(0.0, n, period) + rng.uniform(-jitter, jitter, int(np.ceil(n / period))) * period
  return np.clip(onsets, 0, n - 1).astype(int)


def _place(n: int, onsets: np.ndarray, grain: np.ndarray) -> np.ndarray:
  out = np.zeros(n + len(grain), np.float32)
  for o in onsets:
    out[o:o + len(grain)] += grain
  return out[:n]


def _pick(rng, flag, low, high):
  """A value from `low` or `high` (each a (min, max) range) by a boolean attribute."""
  lo, hi = high if flag else low
  return float(rng.uniform(lo, hi))


def render_event(e: Event, seconds: float, rng: np.random.Generator) -> np.ndarray:
  n = int(seconds * SR)
  t = np.arange(n, dtype=np.float32) / SR
  noise = rng.standard_normal(n).astype(np.float32)
  k = e.kind
  if k == 'beep':
    x = np.sin(2 * np.pi * _pick(rng, e.high, (250, 450), (1800, 3200)) * t)
  elif k == 'siren':
    fc = _pick(rng, e.high, (450, 700), (1200, 1800))
    wail = _pick(rng, e.fast, (0.4, 0.9), (3.0, 6.0))
    x = np.sin(2 * np.pi * np.cumsum(fc * (1 + 0.25 * np.sin(2 * np.pi * wail * t))) / SR)
  elif k == 'hum':
    f0 = rng.uniform(50, 120)
    x = sum(np.sin(2 * np.pi * h * f0 * t + rng.uniform(0, 6)) / h for h in range(1, 7))
  elif k == 'hiss':
    x = np.diff(noise, prepend=0.0)
  elif k == 'rumble':
    x = _bandpass(noise, 20, 180)
  elif k == 'clicks':
    grain = rng.standard_normal(int(0.002 * SR)).astype(np.float32)
    x = _place(n, _train(n, _pick(rng, e.fast, (2, 4), (10, 18)), rng), grain)
  elif k == 'chirps':
    f0 = _pick(rng, e.high, (900, 1500), (3000, 4500))
    g = np.arange(int(0.06 * SR)) / SR
    grain = np.sin(2 * np.pi * f0 * (g + 4.0 * g ** 2)) * np.hanning(len(g))
    x = _place(n, _train(n, _pick(rng, e.fast, (2, 3), (6, 10)), rng, 0.2), grain)
  elif k == 'knocks':
    g = np.arange(int(0.12 * SR)) / SR
    grain = (np.sin(2 * np.pi * rng.uniform(120, 250) * g) + 0.3 * rng.standard_normal(len(g))) \
        * np.exp(-g / 0.025)
    x = _place(n, _train(n, _pick(rng, e.fast, (1.5, 2.5), (5, 8)), rng), grain)
  elif k == 'bell':
    f0 = _pick(rng, e.high, (200, 400), (800, 1400))
    strike = t % 1.2
    x = sum(np.sin(2 * np.pi * r * f0 * t) * np.exp(-strike * (1.2 + r)) / r
            for r in (1.0, 2.76, 5.40, 8.93))
  elif k == 'buzz':
    f0 = _pick(rng, e.high, (90, 150), (300, 500))
    x = 2 * ((f0 * t) % 1.0) - 1 + 0.05 * noise
  elif k == 'pluck':
    f0 = _pick(rng, e.high, (110, 220), (440, 880))
    since = t % 0.6
    x = sum(np.sin(2 * np.pi * h * f0 * t) * np.exp(-since * 3 * h) / h for h in range(1, 9))
  elif k == 'droplets':
    g = np.arange(int(0.03 * SR)) / SR
    grain = np.sin(2 * np.pi * (1000 * g + 25000 * g ** 2)) * np.exp(-g / 0.008)
    rate = _pick(rng, e.fast, (2, 4), (8, 14))
    x = _place(n, np.sort(rng.integers(0, n, max(1, int(rate * seconds)))), grain)
  elif k == 'engine':
    f0 = rng.uniform(30, 60)
    body = sum(np.sin(2 * np.pi * h * f0 * t) / h for h in range(1, 5)) + _bandpass(noise, 30, 400)
    x = body * (1.2 + np.sin(2 * np.pi * _pick(rng, e.fast, (6, 10), (20, 35)) * t))
  elif k == 'wind':
    gust = 1.0 + 0.8 * np.sin(2 * np.pi * rng.uniform(0.2, 0.5) * t + rng.uniform(0, 6))
    x = _bandpass(noise, 300, 1200) * gust
  elif k == 'footsteps':
    g = int(0.06 * SR)
    grain = _bandpass(rng.standard_normal(4 * g).astype(np.float32), 60, 600)[:g] * np.hanning(g)
    x = _place(n, _train(n, _pick(rng, e.fast, (1.5, 2.0), (3.5, 5.0)), rng, 0.05), grain)
  elif k == 'whistle':
    f = _pick(rng, e.high, (900, 1300), (2500, 3500))
    x = np.sin(2 * np.pi * np.cumsum(f * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))) / SR)
  else:
    raise ValueError(f'unknown event kind {k!r}')
  x = np.asarray(x, np.float32) * _envelope(n)
  return x / (np.sqrt(np.mean(x ** 2)) + 1e-8)


def _pink(n: int, rng: np.random.Generator) -> np.ndarray:
  spectrum = np.fft.rfft(rng.standard_normal(n))
  spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1.0))
  x = np.fft.irfft(spectrum, n=n).astype(np.float32)
  return x / (np.sqrt(np.mean(x ** 2)) + 1e-8)


def render_clip(clip: Clip, rng: np.random.Generator) -> np.ndarray:
  """The clip's waveform: events at their loudness, in sequence or overlapping, plus noise."""
  seconds = [rng.uniform(1.6, 2.6) if e.long else rng.uniform(0.4, 0.9) for e in clip.events]
  parts = [render_event(e, s, rng) * (rng.uniform(0.25, 0.35) if e.loud else rng.uniform(0.03, 0.06))
           for e, s in zip(clip.events, seconds)]
  lead = int(rng.uniform(0.1, 0.3) * SR)
  if clip.relation == 'while':
    foreground, background = parts
    total = max(len(background), len(foreground) + 2 * lead)
    mix = np.zeros(total, np.float32)
    mix[:len(background)] += background
    start = (total - len(foreground)) // 2
    mix[start:start + len(foreground)] += foreground
  else:
    gaps = [int(rng.uniform(0.1, 0.4) * SR) for _ in parts]
    mix = np.zeros(lead + sum(len(p) + g for p, g in zip(parts, gaps)), np.float32)
    at = lead
    for p, g in zip(parts, gaps):
      mix[at:at + len(p)] += p
      at += len(p) + g
  signal_rms = np.sqrt(np.mean(mix ** 2)) + 1e-8
  snr_db = rng.uniform(6, 12) if clip.noisy else rng.uniform(22, 35)
  mix += _pink(len(mix), rng) * signal_rms / (10 ** (snr_db / 20))
  peak = np.abs(mix).max()
  return mix / peak * 0.9 if peak > 0.99 else mix
