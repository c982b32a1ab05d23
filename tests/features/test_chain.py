"""README "Search your own sounds with a released model", run as written, start to finish.

The recipe's commands are read from the README and run, each as `python -m` runs its module
but inside the test process (`tests.in_process`: the module as `__main__`, its flags parsed
from the command's arguments; a subprocess would spend 2-8 s of CPU each re-importing JAX
and TensorFlow), with random-weight files in the published formats standing in for the
downloads: VGGish as the official TensorFlow checkpoint + PCA `.npz`, VGGSound's
`H.pth.tar`, a CE `trained_model.pth` written by torch with the reference's keys for the
experts vggish (`audio`) + vggsound, and a small word2vec `.bin`. The features are checked
against the reference implementations, and the search results (order and scores) against
the reference CE forward pass (NumPy) on them.
"""

import dataclasses
import json
import pathlib
import shlex

import numpy as np
import pytest

from jaxretrieval.features.release_writer import folder_reader
from jaxretrieval.text import tokenize
from tests import in_process
from tests.reference_checkpoint import (
  random_state_dict,
  reference_config,
  reference_keys,
  write_reference_checkpoint,
)
from tests.reference_numpy import ReferenceCENet

ROOT = pathlib.Path(__file__).resolve().parents[2]
SECTION = '## Search your own sounds with a released model'
MODALITIES = ['audio', 'vggsound']  # the reference's names of vggish and vggsound
MAX_TOKENS = {'text': 7, 'audio': 5, 'vggsound': 6}
WORDS = 'a dog barks while car passes loud hiss beep speech silence noise'.split()


def readme_recipe() -> list[list[str]]:
  """The commands of the section's shell block: comments dropped, continuations joined."""
  section = (ROOT / 'README.md').read_text().split(SECTION, 1)[1]
  block = section.split('```sh\n', 1)[1].split('```', 1)[0]
  lines = [line for line in block.splitlines() if not line.lstrip().startswith('#')]
  return [shlex.split(command) for command in '\n'.join(lines).replace('\\\n', ' ').splitlines()
          if command.strip()]


def write_word2vec_bin(path: pathlib.Path, words: list[str], dim: int = 300) -> dict:
  """A word2vec binary file (the GoogleNews format) of random vectors; returns them."""
  rng = np.random.default_rng(7)
  vectors = {w: rng.normal(size=dim).astype(np.float32) for w in words}
  with open(path, 'wb') as f:
    f.write(f'{len(vectors)} {dim}\n'.encode())
    for w, v in vectors.items():
      f.write(w.encode() + b' ' + v.astype('<f4').tobytes() + b'\n')
  return vectors


@dataclasses.dataclass
class Recipe:
  commands: list[list[str]]  # as in the README, with the stand-ins
  stdout: list[str]  # of each command but `serve`
  state_dict: dict  # the CE model's
  vectors: dict[str, np.ndarray]  # the word vectors
  out: pathlib.Path  # the features folder


def run_module(args: list[str]) -> in_process.Completed:
  result = in_process.run_module(args[0], args[1:])
  assert result.returncode == 0, (args, result.stderr[-3000:])
  return result


@pytest.fixture(scope='module')
def recipe(published, tmp_path_factory) -> Recipe:
  """The README recipe, run once with the stand-ins."""
  folder = tmp_path_factory.mktemp('recipe')
  state_dict = random_state_dict(reference_keys('ce', MODALITIES), seed=5)
  write_reference_checkpoint(folder / 'trained_model.pth', state_dict,
                             reference_config('AudioCaps', MODALITIES, 'ce', MAX_TOKENS))
  vectors = write_word2vec_bin(folder / 'GoogleNews-vectors-negative300.bin', WORDS)
  stand_ins = {
      '~/sounds': str(published.folder / 'audio'),
      '~/sounds_features': str(folder / 'sounds_features'),
      '~/sounds_index': str(folder / 'sounds_index'),
      'vggish_model.ckpt': str(published.vggish_checkpoint),
      'vggish_pca_params.npz': str(published.vggish_pca),
      'H.pth.tar': str(published.vggsound_checkpoint),
      'trained_model.pth': str(folder / 'trained_model.pth'),
      'workdirs/ce_audiocaps': str(folder / 'ce_audiocaps'),
      'GoogleNews-vectors-negative300.bin': str(folder / 'GoogleNews-vectors-negative300.bin'),
  }
  commands = [[stand_ins.get(a, a) for a in c] for c in readme_recipe()]
  assert [c[:3] for c in commands] == [['python', '-m', f'jaxretrieval.{m}'] for m in (
      'features', 'torch_import', 'search.index', 'search.query', 'search.serve')], commands
  extra = {'jaxretrieval.features': ['--workers=1', '--chunk=3'],  # batches of three files
           'jaxretrieval.search.query': ['--json', '-k', '5']}
  stdout = [run_module(c[2:] + extra.get(c[2], [])).stdout
            for c in commands[:-1]]  # serve runs until stopped
  return Recipe(commands, stdout, state_dict, vectors, folder / 'sounds_features')


def read_folder(out: pathlib.Path) -> dict[str, dict]:
  reader = folder_reader(out, ['all'])
  return dict(reader.audio_examples('all'))


@pytest.mark.slow
def test_recipe_features_equal_the_reference_implementations(published, recipe):
  assert 'clips/s' in recipe.stdout[0] and 'ETA' in recipe.stdout[0]
  assert '1 too short for vggish' in recipe.stdout[0]  # the 0.5 s clip
  examples = read_folder(recipe.out)
  assert sorted(examples) == sorted(p.name for p in published.clips.values())
  for name, path in published.clips.items():
    example = examples[path.name]
    sound = published.vggsound_features(name)
    np.testing.assert_allclose(example['experts']['vggsound'], sound, rtol=1e-4,
                               atol=1e-4 * np.abs(sound).max())
    if name == 'short':
      assert not example['available']['vggish']
    else:
      ish, want = example['experts']['vggish'], published.postprocessed(name)
      assert example['available']['vggish'] and ish.shape == want.shape
      # Values on a quantisation step boundary may land either side of it in float32.
      assert np.mean(ish == want) > 0.99 and np.abs(ish - want).max() <= 1
  assert examples['noise.flac']['experts']['vggish'].shape == (12, 128)
  assert examples['silence.wav']['experts']['vggsound'].shape == (32, 512)


def test_recipe_search_ranks_and_scores_as_the_reference_model(recipe):
  query = next(a for a in recipe.commands[3] if ' ' in a)
  hits = json.loads(recipe.stdout[3])['hits']
  examples = read_folder(recipe.out)
  ids = sorted(examples)
  experts, ind = {}, {}
  for ref, ours in (('audio', 'vggish'), ('vggsound', 'vggsound')):
    padded = np.zeros((len(ids), MAX_TOKENS[ref], examples[ids[0]]['experts'][ours].shape[1]))
    for i, item in enumerate(ids):
      x = examples[item]['experts'][ours][:MAX_TOKENS[ref]]
      padded[i, :len(x)] = x
    experts[ref] = padded
    ind[ref] = np.array([float(examples[i]['available'][ours]) for i in ids])
  tokens = [recipe.vectors[w] for w in tokenize(query) if w in recipe.vectors]
  text = np.zeros((1, MAX_TOKENS['text'], 300))
  text[0, :min(len(tokens), MAX_TOKENS['text'])] = tokens[:MAX_TOKENS['text']]
  assert len(tokens) >= 5  # the query's words are known
  scores = ReferenceCENet(recipe.state_dict, MODALITIES, 'ce').similarity(experts, ind, text)[0]
  order = np.argsort(-scores)
  assert np.diff(np.sort(scores)).min() > 2e-5  # gaps twice the tolerance: the order is fixed
  assert [h['id'] for h in hits] == [ids[i] for i in order]
  np.testing.assert_allclose([h['score'] for h in hits], scores[order], atol=1e-5)


@pytest.mark.slow
def test_beam_pipeline_with_two_workers_equals_the_single_process_path(recipe, tmp_path):
  """The recipe's features command with `--beam` on the DirectRunner, two worker threads
  (`--direct_running_mode=multi_threading`), two shards, in this process. Threads: the mode
  that aborted before `pipeline._realise_lazy_modules`, and half the CPU of worker
  processes, which each import JAX and TensorFlow again."""
  features = recipe.commands[0]
  out = tmp_path / 'beam'
  args = [out if a == str(recipe.out) else a for a in features[3:]]
  run_module([features[2], *[str(a) for a in args], '--beam', '--runner=DirectRunner',
              '--beam_pipeline_options=--direct_num_workers=2 '
              '--direct_running_mode=multi_threading', '--shards=2', '--chunk=3'])
  for name in ('aggregated_vggish', 'aggregated_vggsound'):
    assert sorted(p.name for p in (out / name).iterdir()) == [
        f'{name[11:]}-raw-0000{k}-of-00002.pkl' for k in range(2)]
  for name in ('all_list.txt', 'experts.json', 'failed_files.txt'):
    assert (out / name).read_text() == (recipe.out / name).read_text(), name
  assert (json.loads((out / 'audio_files.json').read_text())
          == json.loads((recipe.out / 'audio_files.json').read_text()))
  beam, single = read_folder(out), read_folder(recipe.out)
  assert sorted(beam) == sorted(single)
  for item, example in single.items():
    assert beam[item]['available'] == example['available'], item
    for expert, value in example['experts'].items():
      np.testing.assert_allclose(beam[item]['experts'][expert], value, rtol=1e-6, atol=1e-6,
                                 err_msg=f'{item} {expert}')


def test_beam_workers_in_other_processes_load_the_networks_once_each(published):
  """A worker process other than the driver's (Shared handle not seeded) loads the networks
  from the weight files in its first DoFn's setup; its other DoFns (threads) share them."""
  from apache_beam.utils import shared

  from jaxretrieval.features import pipeline, prepare
  weights = {'vggish_checkpoint': str(published.vggish_checkpoint),
             'vggish_pca': str(published.vggish_pca),
             'vggsound_checkpoint': str(published.vggsound_checkpoint)}
  networks = shared.Shared()
  first, second = (pipeline._Embed(('vggish', 'vggsound'), prepare.Options(), weights, 1, 1,
                                   None, networks) for _ in range(2))
  first.setup()
  second.setup()
  assert sorted(first.runners) == ['vggish', 'vggsound'] and second.runners is first.runners
