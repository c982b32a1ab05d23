"""The model's experts for a config: registered experts in the reference's order.

The reference keys its experts by names such as `audio` (VGGish) or
`imagenet.resnext101_32x48d.0` (Inst) and always processes them sorted by those names
(REFERENCE §1.5, §7.1). Configs use our short names (`jaxretrieval.data.registry.EXPERTS`);
the widths come from the dataset (`train.expert_dims`) or, without one, from the registry.
"""

from typing import Iterable

from jaxretrieval.data.registry import EXPERTS, expert
from jaxretrieval.models.retrieval import ExpertSpec, ModelSpec


def _expert_spec(name: str, clusters: int,
                 dims: dict[str, tuple[int, str]] | None) -> tuple[str, ExpertSpec]:
  """(reference name, ExpertSpec) of `name`; `dims` (name -> (dim, temporal)) overrides the
  registry and may add experts it does not know (their reference name is their name)."""
  if dims and name in dims:
    dim, temporal = dims[name]
    reference_name = EXPERTS[name].reference_name if name in EXPERTS else name
  else:
    e = expert(name)
    dim, temporal, reference_name = e.dim, e.temporal, e.reference_name
  return reference_name, ExpertSpec(name, dim, temporal, clusters if temporal == 'vlad' else 1)


def model_experts(names: Iterable[str], clusters: int = 16,
                  dims: dict[str, tuple[int, str]] | None = None) -> tuple[ExpertSpec, ...]:
  """ExpertSpecs for `names`, in the reference's order (sorted by reference name)."""
  names = list(names)
  if len(set(names)) != len(names):
    raise ValueError(f'experts {names} name an expert twice')
  pairs = sorted((_expert_spec(n, clusters, dims) for n in names), key=lambda p: p[0])
  return tuple(spec for _, spec in pairs)


def model_spec(config, dims: dict[str, tuple[int, str]] | None = None) -> ModelSpec:
  """The ModelSpec of an experiment config (`config.model`, `config.experts`).

  `variant='ce'` with a single expert is the paper's single-expert CE ('mimic').
  """
  m = config.model
  experts = model_experts(config.experts, m.vlad_clusters, dims)
  variant = m.variant
  if variant not in ('ce', 'moee'):
    raise ValueError(f"config.model.variant={variant!r}: expected 'ce' or 'moee'")
  if variant == 'ce' and len(experts) == 1:
    variant = 'mimic'
  temperature = config.loss.temperature if config.loss.name == 'infonce' else None
  return ModelSpec(variant=variant, experts=experts, text_clusters=m.text_clusters,
                   text_ghost_clusters=m.text_ghost_clusters, shared_dim=m.shared_dim,
                   use_mask=m.use_mask, initial_temperature=temperature)
