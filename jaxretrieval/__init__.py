"""jaxretrieval: text-audio retrieval with Collaborative Experts and MoEE in JAX/Flax.

`from jaxretrieval import Searcher` is the Python API of search (jaxretrieval/search/api.py);
it is imported on first use, so `import jaxretrieval` stays light.
"""


def __getattr__(name):
  if name == 'Searcher':
    from jaxretrieval.search.api import Searcher  # pylint: disable=import-outside-toplevel
    return Searcher
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
