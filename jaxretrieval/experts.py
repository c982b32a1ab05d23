"""The experts the paper uses, under our short names, with the reference's names and sizes.

The reference keys its experts by names such as `audio` (VGGish) or
`imagenet.resnext101_32x48d.0` (Inst) and always processes them sorted by those names
(REFERENCE §1.5, §7.1). We use short names in configs and keep the reference order.
"""

import dataclasses
from typing import Iterable

from jaxretrieval.models.retrieval import ExpertSpec, ModelSpec


@dataclasses.dataclass(frozen=True)
class ExpertInfo:
  name: str
  ref_name: str
  dim: int
  temporal: str
  label: str


KNOWN_EXPERTS = {e.name: e for e in [
    ExpertInfo('vggish', 'audio', 128, 'vlad', 'VGGish'),
    ExpertInfo('vggsound', 'vggsound', 512, 'vlad', 'VGGSound'),
    ExpertInfo('pann', 'pann', 2048, 'vlad', 'PANN'),
    ExpertInfo('syncnet', 'syncnet', 1024, 'vlad', 'SyncNet'),
    ExpertInfo('inst', 'imagenet.resnext101_32x48d.0', 2048, 'avg', 'Inst'),
    ExpertInfo('r2p1d', 'r2p1d.r2p1d-ig65m.0', 512, 'avg', 'R2P1D'),
    ExpertInfo('scene', 'scene.densenet161.0', 2208, 'avg', 'Scene'),
    ExpertInfo('face', 'face', 512, 'avg', 'Face'),
    ExpertInfo('ocr', 'ocr', 300, 'vlad', 'OCR'),
    # Computed by this project (jaxretrieval.features): SynthCaps and users' own audio.
    ExpertInfo('logmel', 'logmel', 128, 'vlad', 'log-mel'),
    ExpertInfo('spectral', 'spectral', 32, 'vlad', 'MFCC+spectral'),
]}
BY_REF_NAME = {e.ref_name: e for e in KNOWN_EXPERTS.values()}


def expert_info(name: str, dims: dict[str, tuple[int, str]] | None = None) -> ExpertInfo:
  """Looks an expert up by short name; `dims` (name -> (dim, temporal)) adds others."""
  if dims and name in dims:
    dim, temporal = dims[name]
    known = KNOWN_EXPERTS.get(name)
    return ExpertInfo(name, known.ref_name if known else name, dim, temporal,
                      known.label if known else name)
  if name not in KNOWN_EXPERTS:
    raise ValueError(f'unknown expert {name!r}: expected one of {sorted(KNOWN_EXPERTS)} or an '
                     'expert of the dataset')
  return KNOWN_EXPERTS[name]


def model_experts(names: Iterable[str], clusters: int = 16,
                  dims: dict[str, tuple[int, str]] | None = None) -> tuple[ExpertSpec, ...]:
  """ExpertSpecs for `names`, in the reference's order (sorted by reference name)."""
  names = list(names)
  if len(set(names)) != len(names):
    raise ValueError(f'experts {names} name an expert twice')
  infos = sorted((expert_info(n, dims) for n in names), key=lambda e: e.ref_name)
  return tuple(ExpertSpec(e.name, e.dim, e.temporal, clusters if e.temporal == 'vlad' else 1)
               for e in infos)


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
