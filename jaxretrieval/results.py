"""Results as files people read: the paper-style Markdown table and the JSON record."""

import json
import pathlib

from jaxretrieval.models import ModelSpec

METRIC_COLUMNS = ('R1', 'R5', 'R10', 'R50', 'MedR', 'MeanR', 'geometric_mean_R1-R5-R10')


def markdown_table(rows: list[tuple[str, dict]], title: str = 'experiment') -> str:
  """A paper-style table: one row per entry, t2a then a2t columns."""
  names = ['R@1', 'R@5', 'R@10', 'R@50', 'MdR', 'MnR', 'Geom']
  header = f'| {title} | ' + ' | '.join(f't2a {c}' for c in names) + ' | ' + ' | '.join(
      f'a2t {c}' for c in names) + ' |'
  lines = [header, '|' + '---|' * (1 + 2 * len(names))]
  for name, cells in rows:
    lines.append(f'| {name} | ' + ' | '.join(cells[d][c] for d in ('t2a', 'a2t')
                                             for c in METRIC_COLUMNS) + ' |')
  return '\n'.join(lines) + '\n'


def format_metrics(metrics: dict) -> dict:
  """Metric values as table cells (one decimal, like the paper)."""
  return {d: {c: f'{metrics[d][c]:.1f}' for c in METRIC_COLUMNS} for d in ('t2a', 'a2t')}


def write_results(workdir: pathlib.Path, results: dict, name: str = 'results') -> None:
  """`<name>.json` (everything) and `<name>.md` (the test table) in the workdir."""
  workdir = pathlib.Path(workdir)
  (workdir / f'{name}.json').write_text(json.dumps(results, indent=2, default=float))
  label = f"{results['variant']} — {'+'.join(results['experts'])} on {results['dataset']}"
  text = markdown_table([(label, format_metrics(results['test']))])
  text += (f"\nTest split `{results['test_split']}`: {results['test']['num_items']} items, "
           f"{results['test']['t2a']['num_queries']} text queries. Best epoch "
           f"{results.get('best_epoch')} of {results.get('epochs_trained')}; "
           f"{results['num_parameters']:,} parameters.\n")
  (workdir / f'{name}.md').write_text(text)


def results_record(config, spec: ModelSpec, test: dict, num_params: int) -> dict:
  return {'dataset': config.dataset, 'tfds_name': config.tfds_name,
          'experts': list(spec.expert_names), 'variant': spec.variant, 'seed': config.seed,
          'test_split': config.test_split, 'num_test_captions': config.num_test_captions,
          'num_parameters': int(num_params), 'test': test, 'config': config.to_dict()}
