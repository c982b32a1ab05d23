"""`python launch.py ARGV` run in the test process: launch.py's flag parsing and `main`, the
same code path without a second interpreter (4-8 s of imports: JAX, TensorFlow) and with the
programs the process has already compiled."""

import contextlib
import io
import sys
from unittest import mock


def launch(*argv: str) -> str:
  """What `python launch.py ARGV` prints; its `sys.exit('launch.py: ...')` refusals are
  raised as SystemExit. absl's flags and verbosity are restored afterwards."""
  from absl import flags, logging

  import launch as entry_point  # launch.py, at the repository root
  verbosity, defined = logging.get_verbosity(), set(flags.FLAGS)
  out = io.StringIO()
  try:
    # ml_collections reads the --config.X overrides from sys.argv, as app.run leaves it.
    with mock.patch.object(sys, 'argv', ['launch.py', *argv]):
      entry_point._parse_flags(sys.argv)  # pylint: disable=protected-access
    with contextlib.redirect_stdout(out):
      entry_point.main([])
  finally:
    flags.FLAGS.unparse_flags()
    for name in set(flags.FLAGS) - defined:  # the --config.X overrides, defined when parsed
      delattr(flags.FLAGS, name)
    logging.set_verbosity(verbosity)
  return out.getvalue()
