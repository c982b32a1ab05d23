r"""Aggregates runs (e.g. seeds 0, 1, 2) into the paper's mean ± std table.

  python -m jaxretrieval.report WORKDIR [WORKDIR ...] [--out report]

Runs with the same dataset, variant, experts and training fraction form one row; each
metric is reported as mean ± sample standard deviation (ddof=1) over the row's runs. Writes
`<out>.md` and `<out>.json` and prints the table.
"""

import json
import pathlib

from absl import app, flags
import numpy as np

from jaxretrieval.results import METRIC_COLUMNS, markdown_table


def load_results(workdirs) -> list[dict]:
  results = []
  for w in workdirs:
    path = pathlib.Path(w) / 'results.json'
    if not path.is_file():
      raise FileNotFoundError(f'{path} does not exist: has the run in {w} finished?')
    results.append(json.loads(path.read_text()))
  return results


def experiment_key(r: dict) -> str:
  fraction = r.get('config', {}).get('train_fraction', 1.0)
  name = f"{r['variant']} {'+'.join(r['experts'])} on {r['dataset']}"
  return name + (f' ({fraction:g} of train)' if fraction != 1.0 else '')


def aggregate(results: list[dict]) -> dict[str, dict]:
  """experiment -> {'runs', 'seeds', 't2a'/'a2t': metric -> {'mean', 'std', 'values'}}."""
  groups: dict[str, list[dict]] = {}
  for r in results:
    groups.setdefault(experiment_key(r), []).append(r)
  table = {}
  for key, runs in groups.items():
    entry = {'runs': len(runs), 'seeds': [r['seed'] for r in runs]}
    for d in ('t2a', 'a2t'):
      entry[d] = {}
      for c in METRIC_COLUMNS:
        values = np.array([r['test'][d][c] for r in runs], np.float64)
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        entry[d][c] = {'mean': float(values.mean()), 'std': std, 'values': values.tolist()}
    table[key] = entry
  return table


def to_markdown(table: dict[str, dict]) -> str:
  rows = [(f"{key} ({entry['runs']} runs)",
           {d: {c: f"{entry[d][c]['mean']:.1f}±{entry[d][c]['std']:.1f}"
                for c in METRIC_COLUMNS} for d in ('t2a', 'a2t')})
          for key, entry in table.items()]
  return markdown_table(rows) + '\nMean ± sample standard deviation over runs.\n'


def main(argv):
  if len(argv) < 2:
    raise app.UsageError('give one or more workdirs')
  table = aggregate(load_results(argv[1:]))
  text = to_markdown(table)
  out = pathlib.Path(flags.FLAGS.out)
  out.with_suffix('.md').write_text(text)
  out.with_suffix('.json').write_text(json.dumps(table, indent=2))
  print(text)


if __name__ == '__main__':
  flags.DEFINE_string('out', 'report', 'output path without suffix')
  app.run(main)
