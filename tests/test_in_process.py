"""tests.in_process: `python -m` in the test process leaves no state behind for the next run."""

from absl import flags
from absl import logging as absl_logging

from tests import in_process


def test_runs_one_after_another_parse_as_new_processes(tmp_path):
  before, level = set(flags.FLAGS), absl_logging.get_absl_logger().level
  for _ in range(2):  # the --config.X override flags of the first run are gone for the second
    done = in_process.run_module('launch', [
        '--config', 'configs/ce_synthcaps.py', f'--workdir={tmp_path}',
        f'--config.data_dir={tmp_path}', '--mode=eval'])
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f'launch.py: {tmp_path} has no checkpoint'), done.stderr
  assert not {n for n in set(flags.FLAGS) - before if n.startswith('config')}
  assert absl_logging.get_absl_logger().level == level  # not the effective WARNING
  unknown = in_process.run_module('launch', ['--nonsense'])
  assert unknown.returncode == 1 and 'nonsense' in unknown.stderr
