"""Captions of SynthCaps clips and the word vectors of their vocabulary.

Captions are drawn from templates and synonyms, mentioning a random subset of each event's
attributes, as human captions in CLOTHO vary. Word vectors: a deterministic table in which
every word is the sum of a vector for its meaning (shared by synonyms: beep/tone/bleep,
loud/strong/intense, ...) and a smaller vector of its own, each drawn from a generator
seeded by the name. Like word2vec, synonyms end up close and unrelated words far apart.
"""

import zlib

import numpy as np

from jaxretrieval.data.synthcaps.sounds import Clip, Event

# kind -> (noun phrases (text, plural), gerunds)
NOUNS = {
    'beep': ([('beep', False), ('tone', False), ('bleep', False)], ['beeping']),
    'siren': ([('siren', False), ('alarm', False), ('wail', False)], ['wailing']),
    'hum': ([('hum', False), ('drone', False)], ['humming', 'droning']),
    'hiss': ([('hiss', False), ('hissing noise', False)], ['hissing']),
    'rumble': ([('rumble', False), ('rumbling noise', False)], ['rumbling']),
    'clicks': ([('clicks', True), ('ticks', True)], ['clicking', 'ticking']),
    'chirps': ([('chirps', True), ('tweets', True), ('bird calls', True)], ['chirping', 'tweeting']),
    'knocks': ([('knocks', True), ('taps', True)], ['knocking', 'tapping']),
    'bell': ([('bell', False), ('chime', False)], ['ringing', 'chiming']),
    'buzz': ([('buzz', False), ('buzzer', False)], ['buzzing']),
    'pluck': ([('plucked string', False), ('twang', False)], ['plucking', 'strumming']),
    'droplets': ([('drops', True), ('droplets', True), ('drips', True)], ['dripping']),
    'engine': ([('engine', False), ('motor', False)], ['idling']),
    'wind': ([('wind', False), ('gusts', True)], ['blowing', 'howling']),
    'footsteps': ([('footsteps', True), ('steps', True)], ['walking', 'stepping']),
    'whistle': ([('whistle', False)], ['whistling']),
}
ADJECTIVES = {
    'loud': ['loud', 'strong', 'intense', 'powerful'], 'quiet': ['quiet', 'soft', 'faint', 'gentle'],
    'high': ['high', 'high-pitched', 'shrill', 'sharp'], 'low': ['low', 'low-pitched', 'deep'],
    'long': ['long', 'sustained', 'prolonged', 'lengthy'], 'short': ['short', 'brief'],
    'fast': ['fast', 'rapid', 'quick'], 'slow': ['slow', 'leisurely'],
}
SINGLE = ['{a}', '{a} can be heard', 'the sound of {a}', 'there is {a}', '{a} is heard',
          'a recording of {a}']
THEN = ['{a} followed by {b}', '{a}, then {b}', 'first {a} and then {b}',
        '{a} and after that {b}', '{a} before {b}']
THEN3 = ['{a}, then {b}, and finally {c}', '{a} followed by {b} and then {c}',
         'first {a}, next {b}, and last {c}']
WHILE = ['{a} while {b} in the background', '{a} over {b}', '{a} with {b} in the background',
         '{b} in the background as {a}', '{a} during {b}']
NOISE = ['with background noise', 'in a noisy environment', 'over constant noise']


def _attributes(e: Event) -> list[str]:
  attrs = ['loud' if e.loud else 'quiet', 'long' if e.long else 'short']
  if e.high is not None:
    attrs.append('high' if e.high else 'low')
  if e.fast is not None:
    attrs.append('fast' if e.fast else 'slow')
  return attrs


def describe_event(e: Event, rng: np.random.Generator) -> str:
  """A noun phrase for one event with a random subset of its attributes."""
  attrs = [a for a in _attributes(e) if rng.random() < 0.45]
  rng.shuffle(attrs)
  adjectives = [str(rng.choice(ADJECTIVES[a])) for a in attrs[:2]]
  nouns, gerunds = NOUNS[e.kind]
  if rng.random() < 0.3:
    return ' '.join(adjectives + [str(rng.choice(gerunds))])
  noun, plural = nouns[int(rng.integers(len(nouns)))]
  phrase = ' '.join(adjectives + [noun])
  if plural:
    return phrase
  return ('an ' if phrase[0] in 'aeiou' else 'a ') + phrase


def caption(clip: Clip, rng: np.random.Generator) -> str:
  phrases = [describe_event(e, rng) for e in clip.events]
  if clip.relation == 'single':
    text = str(rng.choice(SINGLE)).format(a=phrases[0])
  elif clip.relation == 'while':
    text = str(rng.choice(WHILE)).format(a=phrases[0], b=phrases[1])
  elif len(phrases) == 2:
    text = str(rng.choice(THEN)).format(a=phrases[0], b=phrases[1])
  else:
    text = str(rng.choice(THEN3)).format(a=phrases[0], b=phrases[1], c=phrases[2])
  if clip.noisy and rng.random() < 0.6:
    text += ' ' + str(rng.choice(NOISE))
  return text


def captions(clip: Clip, rng: np.random.Generator, count: int = 5) -> list[str]:
  """`count` captions, distinct where the templates allow."""
  out = []
  for _ in range(8 * count):
    text = caption(clip, rng)
    if text not in out:
      out.append(text)
    if len(out) == count:
      break
  while len(out) < count:
    out.append(caption(clip, rng))
  return out


def _meanings() -> dict[str, str]:
  """word -> the meaning it shares with its synonyms."""
  meaning = {}
  for kind, (nouns, gerunds) in NOUNS.items():
    for text, _ in nouns:
      meaning.setdefault(text.split()[-1], kind)
    for g in gerunds:
      meaning[g] = kind
  for attr, words in ADJECTIVES.items():
    for w in words:
      meaning[w] = attr
  return meaning


def _seeded(name: str, dim: int) -> np.ndarray:
  v = np.random.default_rng(zlib.crc32(name.encode())).standard_normal(dim)
  return v / np.linalg.norm(v)


def word_vectors(vocabulary: set[str], dim: int = 300) -> dict[str, np.ndarray]:
  """The deterministic table described in the module docstring, for `vocabulary`."""
  meaning = _meanings()
  table = {}
  for word in sorted(vocabulary):
    own = _seeded('word:' + word, dim)
    shared = _seeded('meaning:' + meaning[word], dim) if word in meaning else own
    table[word] = (2.0 * (shared + 0.5 * own) / np.linalg.norm(shared + 0.5 * own)).astype(
        np.float32)
  return table
