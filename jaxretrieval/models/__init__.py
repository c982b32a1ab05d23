"""Flax modules of CE and MoEE."""

from jaxretrieval.models.ce import CollaborativeGating, SingleExpertGating
from jaxretrieval.models.gating import (
  ContextGating,
  ContextGatingReasoning,
  GatedEmbeddingUnit,
  GatedEmbeddingUnitReasoning,
  MimicGatedEmbeddingUnit,
  ReduceDim,
  RelationModule,
)
from jaxretrieval.models.layers import BatchNorm, Linear, l2_normalize, mish
from jaxretrieval.models.moee import MixtureOfEmbeddedExperts
from jaxretrieval.models.netvlad import NetVLAD
from jaxretrieval.models.retrieval import (
  Batch,
  ExpertSpec,
  MissingExpertsError,
  ModelSpec,
  RetrievalModel,
  abstract_variables,
  check_availability,
  dummy_inputs,
)
from jaxretrieval.models.similarity import item_side, mixture_similarity, query_side
