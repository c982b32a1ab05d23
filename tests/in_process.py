"""`python -m MODULE ARGS` run inside the test process, as Python runs it: the module executed
as `__main__` by `runpy` (so its `if __name__ == '__main__':` block defines its flags and
calls `app.run`, which parses `ARGS`), with stdout and stderr captured and the exit status
computed as the interpreter does (`sys.exit('message')`: the message on stderr, status 1; an
uncaught exception: its traceback on stderr, status 1).

A subprocess costs its imports (JAX, TensorFlow, ...: 2-8 s of CPU each); in the test process
they are loaded already. Tests about the process itself (its exit on a signal, what it
prints before its imports) still start one. Global state is put back after each run: the
absl flags the module defined (a module imported under its own name, such as
`jaxretrieval.features.__main__`, has its flags lifted out during the run and restored),
whether the flags were parsed, absl's logging verbosity, the root logger's handlers and
`sys.argv`.
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
  was_parsed, verbosity, argv = fv.is_parsed(), absl_logging.get_verbosity(), sys.argv
  handlers = list(logging.root.handlers)  # app.run adds absl's
  spec = importlib.util.find_spec(module)
  main = f'{module}.__main__' if spec.submodule_search_locations else module  # as runpy runs
  lifted = list(fv.flags_by_module_dict().get(main, []))
  for flag in lifted:
    delattr(fv, flag.name)
  before = set(fv)
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
    for name in set(fv) - before:  # the module's (absl names it by its file); absl's own stay
      if not (fv.find_module_defining_flag(name) or '').startswith('absl.'):
        delattr(fv, name)
    fv.unparse_flags()
    for flag in lifted:
      fv[flag.name] = flag
      fv.register_flag_by_module(main, flag)
    if was_parsed:
      fv.mark_as_parsed()
    absl_logging.set_verbosity(verbosity)
    logging.root.handlers[:] = handlers
  return Completed([module, *args], code, stdout.getvalue(), stderr.getvalue())
