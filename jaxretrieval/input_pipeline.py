"""Host arrays of a split (`data.splits.SplitArrays`) -> fixed-shape, per-device training
batches (REFERENCE §1.6, §7.11).

Every epoch draws a seeded permutation and one random caption per item; the last, partial
batch is padded and masked so the loss and BatchNorm see only its real items. Every host
builds the same global batch and keeps its own slice, so a multi-host run sees exactly the
batches of a single-host one. MMT batches (`mmt_batches`) carry BERT tokens and frame
subsets drawn per step (`models.mmt`).
"""

from collections.abc import Iterator
import math

from absl import logging
import jax
import numpy as np

from jaxretrieval.data.splits import SplitArrays
from jaxretrieval.models import mmt


def steps_per_epoch(data: SplitArrays, batch_size: int, max_samples: int = 0) -> int:
  """Batches per epoch. A last batch of a single item is left out (its BatchNorm variance
  would divide by zero; the reference crashes there), and `train_batches` logs it. With
  `max_samples` (the original MMT's `max_samples_per_epoch`): max_samples // batch_size full
  batches, as its trainer stops before a batch would exceed max_samples."""
  if max_samples:
    return max_samples // batch_size
  steps = math.ceil(len(data) / batch_size)
  return steps - 1 if len(data) % batch_size == 1 and len(data) > 1 else steps


def arrays(data: SplitArrays) -> dict:
  """The arrays a training batch is gathered from (kept on the device with data_on_device)."""
  return {'experts': data.experts, 'expert_lengths': data.lengths,
          'availability': data.availability, 'caption_ids': data.caption_ids,
          'caption_lengths': data.caption_lengths}


def gather(source: dict, index: dict, xp=np) -> dict:
  """A batch from `arrays(data)` and an index batch; `xp` is numpy, or jax.numpy on device."""
  items, captions = index['items'], index['captions']
  return {
      'experts': {e: xp.take(v, items, axis=0) for e, v in source['experts'].items()},
      'expert_lengths': {e: xp.take(v, items, axis=0)
                         for e, v in source['expert_lengths'].items()},
      'availability': xp.take(source['availability'], items, axis=0),
      'text_ids': xp.take(source['caption_ids'], captions, axis=0),
      'text_lengths': xp.take(source['caption_lengths'], captions, axis=0),
      'row_mask': index['row_mask'],
  }


def index_batches(data: SplitArrays, epoch: int, seed: int, batch_size: int,
                  num_hosts: int = 1, host: int = 0, max_samples: int = 0) -> Iterator[dict]:
  """This host's slice of every global batch of an epoch: item and caption rows, mask.

  An epoch is a permutation of the items, one random caption each; with `max_samples`, it
  is `steps_per_epoch` batches of items drawn uniformly with replacement (an item may occur
  twice in a batch), a random caption per draw, as the original MMT trainer samples.
  """
  if max_samples:
    yield from _sampled_batches(data, epoch, seed, batch_size, num_hosts, host, max_samples)
    return
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(len(data))
  picks = data.caption_start + (rng.random(len(data)) * data.caption_count).astype(np.int64)
  per_host = batch_size // num_hosts
  steps = steps_per_epoch(data, batch_size)
  if steps * batch_size < len(data):
    logging.warning('epoch %d leaves out item %s: %d items leave a last batch of one',
                    epoch, data.ids[order[-1]], len(data))
  for step in range(steps):
    items = order[step * batch_size:(step + 1) * batch_size]
    valid = np.ones(batch_size, np.float32)
    valid[len(items):] = 0.0
    items = np.concatenate([items, np.full(batch_size - len(items), items[0])])
    mine = items[host * per_host:(host + 1) * per_host]
    yield {'items': mine.astype(np.int32), 'captions': picks[mine].astype(np.int32),
           'row_mask': valid[host * per_host:(host + 1) * per_host]}


def _sampled_batches(data: SplitArrays, epoch: int, seed: int, batch_size: int, num_hosts: int,
                     host: int, max_samples: int) -> Iterator[dict]:
  """`index_batches` with `max_samples`: items drawn with replacement, every batch full."""
  rng = np.random.default_rng([seed, epoch])
  per_host = batch_size // num_hosts
  for _ in range(steps_per_epoch(data, batch_size, max_samples)):
    items = rng.integers(len(data), size=batch_size)
    captions = data.caption_start[items] + (rng.random(batch_size)
                                            * data.caption_count[items]).astype(np.int64)
    mine = slice(host * per_host, (host + 1) * per_host)
    yield {'items': items[mine].astype(np.int32), 'captions': captions[mine].astype(np.int32),
           'row_mask': np.ones(per_host, np.float32)}


def token_mask(lengths: np.ndarray, length: int) -> np.ndarray:
  """`[N, length]` int32 masks of the first `lengths` tokens."""
  return (np.arange(length)[None, :] < np.asarray(lengths)[:, None]).astype(np.int32)


def mmt_audio(data: SplitArrays, items: np.ndarray, spec: mmt.MMTSpec, max_tokens,
              rng: np.random.RandomState | None, frame_width: float) -> dict:
  """MMT's audio inputs for the `items` rows of a split (`mmt.audio_batch`): a random subset
  of frames beyond `max_tokens` drawn with `rng`, the original's fixed one when None."""
  frames = [{e: data.experts[e][i] for e in spec.expert_names if data.lengths[e][i]}
            for i in items]
  return mmt.audio_batch(frames, spec, max_tokens, rng, frame_width)


def mmt_batches(data: SplitArrays, epoch: int, seed: int, batch_size: int, spec: mmt.MMTSpec,
                config, num_hosts: int = 1, host: int = 0) -> Iterator[dict]:
  """This host's slice of every MMT training batch of an epoch (items drawn as in
  `index_batches`): tokens and token_mask `[b, L]`, the audio inputs of `mmt.audio_batch`
  (frame subsets drawn per step and host), row masks."""
  max_samples = config.get('max_samples_per_epoch', 0)
  for step, index in enumerate(index_batches(data, epoch, seed, batch_size, num_hosts, host,
                                             max_samples)):
    rng = np.random.RandomState(np.random.SeedSequence([seed, epoch, step, host])
                                .generate_state(1))
    rows = index['captions']
    yield {'tokens': data.caption_ids[rows],
           'token_mask': token_mask(data.caption_lengths[rows], data.caption_ids.shape[1]),
           **mmt_audio(data, index['items'], spec, config.max_tokens, rng,
                       config.model.frame_width),
           'row_mask': index['row_mask'], 'text_row_mask': index['row_mask']}


def train_batches(data: SplitArrays, epoch: int, seed: int, batch_size: int,
                  num_hosts: int = 1, host: int = 0, max_samples: int = 0) -> Iterator[dict]:
  """This host's slice of every global batch of an epoch, gathered on the host."""
  source = arrays(data)
  for index in index_batches(data, epoch, seed, batch_size, num_hosts, host, max_samples):
    yield gather(source, index)


def shard(batch: dict, devices: int) -> dict:
  """[B, ...] -> [devices, B / devices, ...] on every leaf."""
  return jax.tree.map(lambda x: x.reshape((devices, -1) + x.shape[1:]), batch)


