"""The dataset and expert registry, and the package boundaries around it."""

import ast
import pathlib
import tomllib

import pytest
import tensorflow_datasets as tfds

from jaxretrieval.data import registry
from jaxretrieval.data.releases import ReleaseReader
from jaxretrieval.data.tfds_builders import BUILDERS
from jaxretrieval.models.spec import model_experts
from tests.release_miniature import LAYOUTS, make_contents, write_release

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _imported_packages(path: pathlib.Path) -> set[str]:
  """Top-level packages a Python file imports (absolute imports only)."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names.update(alias.name.split('.')[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      names.add(node.module.split('.')[0])
  return names


def test_library_imports_no_config_entry_point_or_test():
  for path in sorted((ROOT / 'jaxretrieval').rglob('*.py')):
    wrong = _imported_packages(path) & {'configs', 'data_builders', 'benchmarks', 'tests'}
    assert not wrong, f'{path.relative_to(ROOT)} imports {sorted(wrong)}'


def test_builder_entry_points_depend_on_the_library_only():
  """Each `data_builders/<name>/` entry point imports the library alone, and TFDS's command
  line (`tfds build data_builders/<name>`) finds in it the library's builder of <name>."""
  folders = sorted(p.name for p in (ROOT / 'data_builders').iterdir() if p.is_dir()
                   and not p.name.startswith('__'))
  assert folders == sorted(BUILDERS)
  for name in folders:
    path = ROOT / 'data_builders' / name / f'{name}_dataset_builder.py'
    assert _imported_packages(path) == {'jaxretrieval'}, path
    # What `tfds build` does with the path (tensorflow_datasets/scripts/cli/build.py).
    with tfds.core.utils.add_sys_path(path.parent.parent):
      cls = tfds.core.community.builder_cls_from_module(f'{name}.{path.stem}')
    assert cls.name == name and issubclass(cls, BUILDERS[name])


def test_only_the_library_is_installed():
  pyproject = tomllib.loads((ROOT / 'pyproject.toml').read_text())
  assert pyproject['tool']['setuptools']['packages']['find']['include'] == ['jaxretrieval*']


def test_registered_builders_are_the_registry_datasets():
  assert sorted(BUILDERS) == sorted(registry.DATASETS)
  for name, builder in BUILDERS.items():
    assert tfds.builder_cls(name) is builder
  assert sorted(registry.DATASETS_BY_REFERENCE_NAME) == [
      'ActivityNet', 'AudioCaps', 'CLOTHO', 'QuerYD', 'QuerYDSegments', 'SoundDescs']


@pytest.mark.parametrize('dataset', sorted(LAYOUTS))
def test_release_layouts_match_the_miniatures_restatement(dataset):
  """The registry against the miniature's independent table (REFERENCE §1.4-1.5)."""
  name, folder, splits, captions, word_vectors, experts = LAYOUTS[dataset]
  release = registry.DATASETS[dataset].release
  assert (release.name, release.folder, dict(release.splits), release.captions,
          release.word_vectors) == (name, folder, splits, captions, word_vectors)
  assert {e.name: (release.expert_files[e.name], e.dim, e.temporal == 'avg')
          for e in release.experts} == {e: v[:3] for e, v in experts.items()}


def test_inconsistent_entries_are_refused():
  clotho = registry.DATASETS['clotho']
  with pytest.raises(ValueError, match="dataset clotho: expert 'inst' is not in its release"):
    registry.Dataset('clotho', clotho.release, {'text': 5}, ('inst',), 1, False, None)
  with pytest.raises(ValueError, match="dataset clotho: split 'val_1' is not in its release"):
    registry.Dataset('clotho', clotho.release, {'text': 5}, (), 1, False, None,
                     val_split='val_1')
  with pytest.raises(ValueError, match="unknown expert 'speech'"):
    registry.computed_release('mine', ('all',), ('logmel', 'speech'))


def test_activitynet_gaps_in_face_are_not_flaky(tmp_path, caplog):
  """Only the audio expert is flaky on ActivityNet (REFERENCE §1.5); face and ocr gaps are
  read on and reported as not flaky."""
  contents = make_contents('activitynet_captions')
  unpacked = write_release('activitynet_captions', tmp_path, contents, archive=False)
  reader = ReleaseReader('activitynet_captions',
                         unpacked / 'data' / 'activity-net' / 'structured-symlinks')
  assert reader.flaky == {'vggish'}
  list(reader.audio_examples('train'))
  report = '\n'.join(reader.missing_report('train'))
  assert 'no vggish entry in aggregated_audio/vggish-audio-raw.pickle (flaky' in report
  assert 'no face entry in aggregated_facefeats_25fps_256px_stride1/face-avg.pickle (not ' \
         'flaky' in report


def test_model_experts_take_reference_order_and_dataset_widths():
  specs = model_experts(['vggsound', 'scene', 'vggish'], clusters=4)
  assert [(e.name, e.dim, e.temporal, e.clusters) for e in specs] == [
      ('vggish', 128, 'vlad', 4), ('scene', 2208, 'avg', 1), ('vggsound', 512, 'vlad', 4)]
  # Widths from a dataset's features win; an expert the registry lacks sorts by its name.
  specs = model_experts(['vggsound', 'mine', 'vggish'],
                        dims={'vggish': (64, 'vlad'), 'mine': (7, 'avg')})
  assert [(e.name, e.dim, e.clusters) for e in specs] == [
      ('vggish', 64, 16), ('mine', 7, 1), ('vggsound', 512, 16)]
