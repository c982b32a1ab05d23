"""The input pipeline: padding, captions, epochs, partial batches, host slices."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxretrieval import evaluation, input_pipeline
from jaxretrieval.data import splits
from jaxretrieval.models.spec import model_spec
from tests.conftest import tiny_config


@pytest.fixture(scope='module')
def loaded(synthcaps_tiny):
  config = tiny_config(synthcaps_tiny)
  config.max_tokens.logmel = 2  # shorter than most clips: truncation
  builder = splits.tfds_builder(config)
  spec = model_spec(config)
  table = splits.CaptionVocab()
  data = splits.load_split(builder, 'train', config, spec, table)
  raw = {e['id'].decode(): e for e in tfds.as_numpy(builder.as_dataset(split='train'))}
  return config, data, table, raw


def test_experts_are_truncated_and_zero_padded(loaded):
  config, data, _, raw = loaded
  for i, item in enumerate(data.ids):
    for e in ('logmel', 'spectral'):
      x = raw[item]['experts'][e]
      n = min(len(x), config.max_tokens[e])
      assert data.lengths[e][i] == n
      np.testing.assert_array_equal(data.experts[e][i, :n], x[:n])
      assert not data.experts[e][i, n:].any()


def test_caption_ids_reproduce_the_word_vectors(loaded):
  config, data, table, raw = loaded
  matrix = table.matrix
  assert not matrix[0].any()
  for i, item in enumerate(data.ids[:10]):
    lengths = raw[item]['caption_lengths']
    vectors = np.split(raw[item]['caption_vectors'], np.cumsum(lengths)[:-1])
    assert data.caption_count[i] == len(vectors) == 5
    for k, v in enumerate(vectors):
      row = data.caption_start[i] + k
      n = min(len(v), config.max_tokens.text)
      np.testing.assert_array_equal(matrix[data.caption_ids[row, :n]], v[:n])
      assert not data.caption_ids[row, n:].any()


def test_epochs_cover_every_item_with_a_fresh_random_caption(loaded):
  _, data, _, _ = loaded
  seen_captions = []
  for epoch in (0, 1):
    batches = list(input_pipeline.train_batches(data, epoch, seed=0, batch_size=20))
    assert len(batches) == 3  # 48 items: 20 + 20 + 8 real rows
    masks = np.concatenate([b['row_mask'] for b in batches])
    assert masks.sum() == len(data) and masks[-12:].sum() == 0
    ids = np.concatenate([b['text_ids'] for b in batches])[masks > 0]
    seen_captions.append(ids)
  assert not np.array_equal(seen_captions[0], seen_captions[1])
  again = list(input_pipeline.train_batches(data, 1, seed=0, batch_size=20))
  np.testing.assert_array_equal(again[0]['text_ids'], list(
      input_pipeline.train_batches(data, 1, seed=0, batch_size=20))[0]['text_ids'])


def test_host_slices_make_up_the_global_batch(loaded):
  _, data, _, _ = loaded
  whole = list(input_pipeline.train_batches(data, 3, seed=1, batch_size=16))
  parts = [list(input_pipeline.train_batches(data, 3, 1, 16, num_hosts=2, host=h)) for h in (0, 1)]
  for step, batch in enumerate(whole):
    for key in ('text_ids', 'row_mask', 'availability'):
      np.testing.assert_array_equal(
          batch[key], np.concatenate([parts[0][step][key], parts[1][step][key]]))
    np.testing.assert_array_equal(batch['experts']['logmel'], np.concatenate(
        [parts[0][step]['experts']['logmel'], parts[1][step]['experts']['logmel']]))
  sharded = input_pipeline.shard(whole[0], 4)
  assert sharded['experts']['spectral'].shape[:2] == (4, 4)


def test_single_item_last_batch_is_left_out_and_logged(loaded, caplog):
  _, data, _, _ = loaded
  import logging
  with caplog.at_level(logging.WARNING):
    batches = list(input_pipeline.train_batches(data, 0, seed=0, batch_size=47))
  assert len(batches) == 1 and 'leaves out item' in caplog.text


def test_fraction_and_eval_queries(loaded):
  _, data, _, _ = loaded
  half = splits.subset(data, 0.5, seed=3)
  assert len(half) == 24 and set(half.ids) < set(data.ids)
  assert half.ids == splits.subset(data, 0.5, seed=3).ids
  rows, masks = evaluation.eval_queries(data, 7)
  assert masks.shape == (48, 7) and masks[:, :5].all() and not masks[:, 5:].any()
  assert rows[7 * 2 + 1] == data.caption_start[2] + 1


def test_fused_captions_make_one_query(synthcaps_tiny):
  config = tiny_config(synthcaps_tiny, fuse_captions=True)
  config.max_tokens.text = 200
  builder = splits.tfds_builder(config)
  data = splits.load_split(builder, 'val', config, model_spec(config),
                                   splits.CaptionVocab())
  assert (data.caption_count == 1).all()
  raw = next(iter(tfds.as_numpy(builder.as_dataset(split='val').take(1))))
  assert data.caption_lengths[data.ids.index(raw['id'].decode())] == len(raw['caption_vectors'])


def test_unbuilt_dataset_and_bad_config_are_explained(synthcaps_tiny, tmp_path):
  config = tiny_config(tmp_path, tfds_name='clotho')
  with pytest.raises(FileNotFoundError, match='tfds build data_builders/clotho --manual_dir'):
    splits.tfds_builder(config)
  config = tiny_config(synthcaps_tiny, experts=('logmel', 'vggish'))
  with pytest.raises(ValueError, match="names 'vggish'.*logmel"):
    splits.load_split(splits.tfds_builder(config), 'val', config,
                              model_spec(config), splits.CaptionVocab())
