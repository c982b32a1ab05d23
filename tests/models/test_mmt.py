"""MMT against the original's forward pass written in torch (tiny config), and its pieces."""

import dataclasses

import jax
import numpy as np
import pytest
import torch

from jaxretrieval.losses import max_margin_ranking_loss
from jaxretrieval.models import mmt
from jaxretrieval.models.bert import BertConfig
from jaxretrieval.torch_import import mmt_convert
from tests import compiled
from tests.models import mmt_torch_reference as ref

VOCAB, SAME_DIM, MAX_FRAMES = 30, 64, 5
EXPERT_DIMS = {'vggish': 6, 'vggsound': 10}
# One 64-wide head: the head width of every BERT, which the importer relies on.
TXT = ref.tiny_bert_config(VOCAB, type_vocab_size=2, num_attention_heads=1)
VID = ref.tiny_bert_config(None, max_position_embeddings=8)  # small: positions get clamped


def tiny_spec(dropout=0.0, keep_missing=True):
  bert = lambda c, vocab: BertConfig(
      vocab_size=vocab, hidden_size=c.hidden_size, num_layers=c.num_hidden_layers,
      num_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
      max_positions=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
      hidden_dropout=dropout, attention_dropout=dropout)
  return mmt.MMTSpec(mmt.mmt_experts(EXPERT_DIMS), text_bert=bert(TXT, VOCAB),
                     audio_bert=bert(VID, None), same_dim=SAME_DIM, weight_dropout=dropout,
                     keep_missing_modalities=keep_missing)


def torch_model(seed=0):
  """The reference with every tensor random, BatchNorm statistics included."""
  torch.manual_seed(seed)
  dims = {m: (d, mmt.TOKEN_TYPES[m]) for m, d in EXPERT_DIMS.items()}
  model = ref.MMT(dims, TXT, VID, SAME_DIM)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(torch.randn_like(p) * (0.5 if 'batch_norm' in name else 0.2))
    for name, b in model.named_buffers():
      if name.endswith('running_mean'):
        b.copy_(torch.randn_like(b) * 0.1)
      elif name.endswith('running_var'):
        b.copy_(torch.rand_like(b) + 0.5)
  return model


def tiny_variables(spec):
  """Variables of the tiny spec, converted from the random reference (no init needed)."""
  return mmt_convert.convert_state_dict(
      {k: v.numpy() for k, v in torch_model().state_dict().items()}, spec)


def original_choose_or_pad(frames, max_tokens):
  """The original loader's evaluation-time subset (times as floats: centre + 2, padding 1)."""
  t = np.arange(len(frames)) + 0.5 + 2.0
  tensor, tensor_t, ind = np.zeros((max_tokens, frames.shape[1])), np.ones(max_tokens), \
      np.zeros(max_tokens)
  keep = min(len(frames), max_tokens)
  pick = np.sort(np.random.RandomState(0).choice(len(frames), size=keep, replace=False))
  tensor[:keep], tensor_t[:keep], ind[:keep] = frames[pick], t[pick], 1
  return tensor, tensor_t, ind


def make_inputs(n=5, seed=0):
  """Torch inputs as the original loader makes them, and our batch from `expert_tokens`.

  Item 1 misses VGGish (its features are NaN in our input: the model must ignore them);
  item 3 has more VGGSound frames than MAX_FRAMES (subset) and times beyond the clamp.
  """
  rng = np.random.default_rng(seed)
  lengths = {'vggish': [3, 0, 5, 2, 4], 'vggsound': [2, 4, 1, 9, 5]}
  theirs = {k: {m: [] for m in EXPERT_DIMS} for k in ('frames', 'times', 'ind', 'pooled')}
  ours = {k: {m: [] for m in EXPERT_DIMS} for k in ('frames', 'mask', 'positions', 'pooled')}
  for m, d in EXPERT_DIMS.items():
    for i in range(n):
      t = lengths[m][i]
      raw = rng.normal(size=(t, d)).astype(np.float32)
      if t:
        f, times, ind = original_choose_or_pad(raw, MAX_FRAMES)
        pooled = raw.max(0)
      else:  # the original fills a missing expert with zeros, times 1, indicators 0
        f, times, ind, pooled = np.zeros((MAX_FRAMES, d)), np.ones(MAX_FRAMES), \
            np.zeros(MAX_FRAMES), np.zeros(d)
        raw = np.full((3, d), np.nan, np.float32)
      for k, v in zip(('frames', 'times', 'ind', 'pooled'), (f, times, ind, pooled)):
        theirs[k][m].append(v)
      tok = mmt.expert_tokens(raw, MAX_FRAMES, None, d)
      for k in ours:
        ours[k][m].append(tok[k])
  stack = lambda tree, dtype: {m: np.stack(v).astype(dtype) for m, v in tree.items()}
  theirs = {k: stack(v, np.float32) for k, v in theirs.items()}
  ours = {k: stack(v, np.int32 if k in ('mask', 'positions') else np.float32)
          for k, v in ours.items()}
  tokens = rng.integers(1, VOCAB, (n, 7)).astype(np.int32)
  token_mask = np.ones_like(tokens)
  token_mask[2, 4:] = 0
  token_mask[4, 3:] = 0
  tokens[token_mask == 0] = 0
  availability = np.stack([[float(lengths[m][i] > 0) for m in sorted(EXPERT_DIMS)]
                           for i in range(n)]).astype(np.float32)
  batch = dict(tokens=tokens, token_mask=token_mask, experts=ours['frames'],
               expert_masks=ours['mask'], expert_positions=ours['positions'],
               pooled=ours['pooled'], availability=availability)
  return theirs, batch


def run_torch(model, theirs, batch, train):
  model.train(train)
  t = lambda tree: {m: torch.as_tensor(v) for m, v in tree.items()}
  with torch.no_grad():
    out = model(torch.as_tensor(batch['tokens']).long(), torch.as_tensor(batch['token_mask']),
                t(theirs['frames']), t(theirs['times']), t(theirs['ind']), t(theirs['pooled']))
    loss = ref.max_margin_loss(out['sims'], 0.05)
  return out, loss


@pytest.mark.parametrize('train', [False, True])
def test_forward_matches_original(train):
  model = torch_model()
  state_dict = {k: v.numpy() for k, v in model.state_dict().items()}
  spec = tiny_spec()
  variables = mmt_convert.convert_state_dict(state_dict, spec)
  theirs, batch = make_inputs()
  want, want_loss = run_torch(model, theirs, batch, train)
  flax_model = mmt.MMT(spec)
  (text, weights, audio), _ = compiled.apply(flax_model, variables, batch, train=train,
                                             method=mmt.MMT.embed, mutable=('batch_stats',))
  sims, _ = compiled.apply(flax_model, variables, batch, train=train, mutable=('batch_stats',))
  for e in EXPERT_DIMS:
    np.testing.assert_allclose(text[e], want['text'][e].numpy(), atol=1e-5, err_msg=e)
    np.testing.assert_allclose(audio[e], want['audio'][e].numpy(), atol=1e-5, err_msg=e)
  np.testing.assert_allclose(weights, want['text_weights'].numpy(), atol=1e-5)
  np.testing.assert_allclose(sims, want['sims'].numpy(), atol=1e-5)
  loss = max_margin_ranking_loss(sims, margin=0.05, fix_norm=True)
  np.testing.assert_allclose(loss, want_loss.numpy(), atol=1e-5)
  # Item 1 misses VGGish, whose cosine still counts at its full text weight.
  full = sum(weights[:, i] * (text[e] @ audio[e][1]) for i, e in enumerate(sorted(EXPERT_DIMS)))
  np.testing.assert_allclose(sims[:, 1], full, atol=1e-5)


def test_expert_tokens_follow_the_original_loader():
  theirs, batch = make_inputs()
  for m in EXPERT_DIMS:
    np.testing.assert_array_equal(batch['experts'][m], theirs['frames'][m])
    np.testing.assert_array_equal(batch['expert_masks'][m], theirs['ind'][m])
    np.testing.assert_array_equal(batch['pooled'][m], theirs['pooled'][m])
    # The model clamps; before the clamp, positions are the truncated times.
    np.testing.assert_array_equal(batch['expert_positions'][m],
                                  theirs['times'][m].astype(np.int64))
  # Item 3 keeps 5 of its 9 VGGSound frames; some lie beyond the clamp (7).
  assert batch['expert_positions']['vggsound'][3].max() > VID.max_position_embeddings - 1
  # Training draws another subset, in time order.
  frames = np.arange(20, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
  tok = mmt.expert_tokens(frames, 4, np.random.RandomState(3), 2)
  assert np.all(np.diff(tok['frames'][:, 0]) > 0) and tok['pooled'].tolist() == [19, 19]
  np.testing.assert_array_equal(tok['positions'], tok['frames'][:, 0].astype(int) + 2)
  with pytest.raises(ValueError, match=r'expected \[T, 3\]'):
    mmt.expert_tokens(frames, 4, None, 3)


def test_audio_batch_stacks_items_with_availability():
  theirs, batch = make_inputs()
  rng = np.random.default_rng(0)
  # The items of make_inputs again, through audio_batch.
  lengths = {'vggish': [3, 0, 5, 2, 4], 'vggsound': [2, 4, 1, 9, 5]}
  items = [{} for _ in range(5)]
  for m, d in EXPERT_DIMS.items():
    for i in range(5):
      raw = rng.normal(size=(lengths[m][i], d)).astype(np.float32)
      if lengths[m][i]:
        items[i][m] = raw
  out = mmt.audio_batch(items, tiny_spec(), {'vggish': MAX_FRAMES, 'vggsound': MAX_FRAMES}, None)
  np.testing.assert_array_equal(out['availability'], batch['availability'])
  for key in ('experts', 'expert_masks', 'expert_positions', 'pooled'):
    for m in EXPERT_DIMS:
      np.testing.assert_array_equal(out[key][m], batch[key][m], err_msg=f'{key} {m}')


def test_inputs_are_not_mutated_and_missing_inputs_are_ignored():
  spec = tiny_spec()
  variables = tiny_variables(spec)
  _, batch = make_inputs()
  before = jax.tree.map(np.copy, batch)
  # Traced on the caller's own dict and arrays (compiled, it would see copies of them).
  jax.eval_shape(lambda v: mmt.MMT(spec).apply(v, batch, False), variables)
  jax.tree.map(np.testing.assert_array_equal, batch, before)
  sims = compiled.apply(mmt.MMT(spec), variables, batch, train=False)
  # Whatever a missing expert's inputs hold (here NaN and huge positions), nothing changes.
  noisy = jax.tree.map(np.copy, batch)
  noisy['experts']['vggish'][1] = np.nan
  noisy['pooled']['vggish'][1] = np.nan
  noisy['expert_positions']['vggish'][1] = 1000
  noisy['expert_masks']['vggish'][1] = 1
  np.testing.assert_allclose(compiled.apply(mmt.MMT(spec), variables, noisy, train=False), sims,
                             atol=1e-6)
  # Queries and items are independent batches: here 10 queries against 5 items.
  more = dict(batch, tokens=np.concatenate([batch['tokens']] * 2),
              token_mask=np.concatenate([batch['token_mask']] * 2))
  assert compiled.apply(mmt.MMT(spec), variables, more, train=False).shape == (10, 5)


def test_without_keep_missing_modalities_weights_are_renormalised():
  spec = tiny_spec()
  variables = tiny_variables(spec)
  _, batch = make_inputs()
  model = mmt.MMT(dataclasses.replace(spec, keep_missing_modalities=False))
  text, weights, audio = compiled.apply(model, variables, batch, train=False, method=mmt.MMT.embed)
  sims = compiled.apply(model, variables, batch, train=False)
  # Item 1 misses VGGish: only its VGGSound cosine counts.
  np.testing.assert_allclose(sims[:, 1], text['vggsound'] @ audio['vggsound'][1], atol=1e-5)


def test_dropout_only_in_training():
  spec = tiny_spec(dropout=0.5)
  model = mmt.MMT(spec)
  _, batch = make_inputs()
  variables = tiny_variables(spec)
  args = (batch['tokens'], batch['token_mask'])
  run = lambda train, seed: model.apply(variables, *args, train, method=mmt.MMT.encode_text,
                                        rngs={'dropout': jax.random.key(seed)},
                                        mutable=['batch_stats'])[0][1]
  assert not np.allclose(run(True, 0), run(True, 1))
  np.testing.assert_array_equal(run(False, 0), run(False, 1))


def test_pooled_features_must_be_2d():
  spec = tiny_spec()
  model = mmt.MMT(spec)
  _, batch = make_inputs()
  variables = tiny_variables(spec)
  batch['pooled']['vggish'] = batch['pooled']['vggish'][:, None]  # the original's [B, 1, D]
  with pytest.raises(ValueError, match=r'vggish: pooled must be \[B, D\]'):
    model.apply(variables, batch, False)


def test_audiocaps_parameter_count_is_the_original():
  spec = mmt.MMTSpec(mmt.mmt_experts({'vggish': 128, 'vggsound': 512}))
  assert [(e.name, e.token_type) for e in spec.experts] == [('vggish', 2), ('vggsound', 3)]
  count = mmt.num_parameters(spec)
  assert count == 127_084_290 and round(count / 1e6, 2) == 127.08


def test_unknown_experts_get_free_token_types():
  experts = mmt.mmt_experts({'logmel': 128, 'spectral': 32, 'vggish': 128})
  assert [(e.name, e.token_type) for e in experts] == [('logmel', 1), ('spectral', 3),
                                                      ('vggish', 2)]
  with pytest.raises(ValueError, match='token type 12'):
    mmt.MMTSpec((mmt.MMTExpert('x', 3, 12),))

