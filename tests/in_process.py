"""`python -m MODULE ARGS` run inside the test process, as Python runs it: the module executed
as `__main__` by `runpy` (so its `if __name__ == '__main__':` block defines its flags and
calls `app.run`, which parses `ARGS`), with stdout and stderr captured and the exit status
computed as the interpreter does (`sys.exit('message')`: the message on stderr, status 1; an
uncaught exception: its traceback on stderr, status 1).

A subprocess costs its imports (JAX, TensorFlow, ...: 2-8 s of CPU each); in the test process
they are loaded already. Tests about the process itself (its exit status and messages as
a real process, its exit on a signal) still start one. Global state is put back after each
run: the absl flags (during the run only absl's own are defined, as in a new process; the
module's are removed after it, the others restored), whether they were parsed, absl's
logger's level, the root logger's handlers and `sys.argv`.
"""

import contextlib
import dataclasses
import importlib.util
import io
import logging
import runpy
import sys
import traceback

from absl import flags
from absl import logging as absl_logging


@dataclasses.dataclass
class Completed:
  """What `subprocess.run(..., capture_output=True, text=True)` returns, in short."""
  args: list[str]
  returncode: int
  stdout: str
  stderr: str


def run_module(module: str, args: list[str]) -> Completed:
  """`python -m module *args`, in this process."""
  fv = flags.FLAGS
  # absl's logger's own level (get_verbosity gives the effective one: restoring that would
  # leave an explicit WARNING where the level was unset, hiding INFO from caplog after).
  was_parsed, absl_level, argv = fv.is_parsed(), absl_logging.get_absl_logger().level, sys.argv
  handlers = list(logging.root.handlers)  # app.run adds absl's
  # A new process starts with absl's own flags only: the others defined in this one (by an
  # imported module, such as jaxretrieval.features.__main__) are lifted out meanwhile.
  lifted = {m: [f for f in defined if not m.startswith('absl.')]
            for m, defined in fv.flags_by_module_dict().items()}
  for flag in {id(f): f for defined in lifted.values() for f in defined}.values():
    for name in {flag.name, flag.short_name} - {None}:
      if name in fv:
        delattr(fv, name)
  before = set(fv)
  # What runpy runs, out of sys.modules meanwhile (as in a new process; runpy warns otherwise).
  spec = importlib.util.find_spec(module)
  main = f'{module}.__main__' if spec.submodule_search_locations else module
  imported = sys.modules.pop(main, None)
  stdout, stderr = io.StringIO(), io.StringIO()
  sys.argv = [module, *args]
  try:
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
      try:
        runpy.run_module(module, run_name='__main__', alter_sys=True)
        code = 0
      except SystemExit as e:
        code = e.code
        if code is not None and not isinstance(code, int):
          print(code, file=sys.stderr)
          code = 1
        code = code or 0
      except Exception:  # pylint: disable=broad-except  (as the interpreter reports it)
        traceback.print_exc()
        code = 1
  finally:
    sys.argv = argv
    if imported is not None:
      sys.modules[main] = imported
    # The flags the run defined go: the module's (absl names it by its file) and those defined
    # while parsing (ml_collections' --config.X overrides, named as absl.flags._flag's); the
    # ones absl's modules define once per process on first use (--help, ...) stay.
    for name in set(fv) - before:
      owner = fv.find_module_defining_flag(name) or ''
      if not owner.startswith('absl.') or owner == 'absl.flags._flag':
        delattr(fv, name)
    fv.unparse_flags()
    for module_name, defined in lifted.items():
      for flag in defined:
        if flag.name not in fv:
          fv[flag.name] = flag
        fv.register_flag_by_module(module_name, flag)
    if was_parsed:
      fv.mark_as_parsed()
    absl_logging.get_absl_logger().setLevel(absl_level)
    logging.root.handlers[:] = handlers
  return Completed([module, *args], code, stdout.getvalue(), stderr.getvalue())
