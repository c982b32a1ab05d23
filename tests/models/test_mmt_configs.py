"""The MMT experiment configs: the original recipe, the protocols, and a tiny model that learns."""

import functools

import jax
import numpy as np
import optax
import pytest

from configs import mmt_audiocaps, mmt_clotho
from jaxretrieval.losses import max_margin_ranking_loss
from jaxretrieval.models import mmt
from jaxretrieval.step import lr_schedule, make_optimizer
from tests import compiled


@pytest.mark.parametrize('module,dataset,text,frames', [
    (mmt_audiocaps, 'audiocaps', 52, 32), (mmt_clotho, 'clotho', 21, 95)])
def test_original_recipe(module, dataset, text, frames):
  c = module.get_config()
  assert c.dataset == dataset and c.model.variant == 'mmt'
  assert c.max_tokens.to_dict() == {'text': text, 'vggish': frames, 'vggsound': frames}
  assert (c.batch_size, c.num_epochs, c.max_samples_per_epoch) == (32, 50, 32_000)
  assert (c.optimizer.name, c.optimizer.learning_rate, c.optimizer.weight_decay,
          c.optimizer.lr_decay) == ('adamw', 5e-5, 0.0, 0.9)
  assert (c.loss.name, c.loss.margin, c.loss.fix_norm) == ('max_margin', 0.05, True)
  assert c.model.dropout == 0.1 and c.model.keep_missing_modalities
  assert c.model_selection == 'last_epoch'
  # The paper's protocol by default: 5 independent captions per test item.
  assert (c.fuse_captions, c.num_test_captions) == (False, 5)
  spec = mmt.mmt_spec(c, {'vggish': 128, 'vggsound': 512, 'pann': 2048})
  assert spec.expert_names == ('vggish', 'vggsound')
  assert mmt.num_parameters(spec) == 127_084_290


def test_original_protocol_and_arguments():
  c = mmt_clotho.get_config('protocol=original,seed=2,experts=vggsound')
  assert (c.fuse_captions, c.num_test_captions, c.seed) == (True, 1, 2)
  assert c.experts == ('vggsound',) and c.max_tokens.to_dict() == {'text': 21, 'vggsound': 95}
  with pytest.raises(ValueError, match="protocol='cat'"):
    mmt_audiocaps.get_config('protocol=cat')
  with pytest.raises(ValueError, match=r"experts \['pann'\]"):
    mmt.mmt_spec(mmt_audiocaps.get_config('experts=pann'), {'vggish': 128})


def test_learning_rate_decays_by_0_9_per_epoch():
  c = mmt_audiocaps.get_config()
  schedule = lr_schedule(c.optimizer, 1000, c.optimizer.learning_rate)
  np.testing.assert_allclose([schedule(0), schedule(999), schedule(1000), schedule(2500)],
                             [5e-5, 5e-5, 4.5e-5, 5e-5 * 0.81], rtol=1e-6)


def tiny_config():
  """The AudioCaps recipe shrunk to a model that trains in seconds on CPU."""
  c = mmt_audiocaps.get_config()
  c.model.text_bert.update(vocab_size=24, hidden_size=32, num_layers=1, num_heads=2,
                           intermediate_size=48, max_positions=8)
  c.model.update(same_dim=32, audio_layers=1, audio_heads=2, audio_intermediate=48,
                 audio_max_positions=8, dropout=0.0)
  c.optimizer.learning_rate = 2e-3
  c.loss.margin = 0.2  # the recipe's 0.05 is met (loss 0) before this toy task is learnt
  return c


def toy_batch(items=16, frames=3, dim=8, seed=0):
  """Item i has frames around a random prototype p_i; its query is the word i + 4."""
  rng = np.random.default_rng(seed)
  protos = rng.normal(size=(items, dim)).astype(np.float32)
  x = protos[:, None] + 0.3 * rng.normal(size=(items, frames, dim)).astype(np.float32)
  tokens = np.stack([np.full(items, 2), np.arange(items) + 4, np.full(items, 3)], 1)
  experts = {'vggish': x, 'vggsound': x[..., ::-1].copy()}
  return {'tokens': tokens.astype(np.int32), 'token_mask': np.ones_like(tokens, np.int32),
          'experts': experts,
          'expert_masks': {e: np.ones((items, frames), np.int32) for e in experts},
          'expert_positions': {e: np.tile(np.arange(frames) + 2, (items, 1)).astype(np.int32)
                               for e in experts},
          'pooled': {e: v.max(1) for e, v in experts.items()},
          'availability': np.ones((items, 2), np.float32)}


@pytest.mark.slow
def test_tiny_mmt_learns_well_above_chance():
  c = tiny_config()
  spec = mmt.mmt_spec(c, {'vggish': 8, 'vggsound': 8})
  model = mmt.MMT(spec)
  batch = toy_batch()
  variables = compiled.variables(model)
  tx = make_optimizer(c.optimizer, lr_schedule(c.optimizer, 10, c.optimizer.learning_rate))

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, batch_stats):
    def loss_fn(p):
      sims, new = model.apply({'params': p, 'batch_stats': batch_stats}, batch, True,
                              mutable=['batch_stats'])
      loss = max_margin_ranking_loss(sims, c.loss.margin, c.loss.fix_norm)
      return loss, (new['batch_stats'], sims)
    (loss, (stats, sims)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, stats, loss, grads, sims

  params, stats = variables['params'], variables['batch_stats']
  opt_state = tx.init(params)
  params, opt_state, stats, first, grads, _ = step(params, opt_state, stats)
  # Both transformers are trained (the text BERT is fine-tuned, not frozen); only the unused
  # poolers get no gradient.
  grads = jax.device_get(grads)  # checked in NumPy: no program per gradient's shape
  for tower in ('txt_bert', 'vid_bert'):
    moved = {k: all(np.abs(g).max() > 0 for g in jax.tree.leaves(v))
             for k, v in grads[tower].items()}
    assert moved == {k: k != 'pooler' for k in moved}
  for _ in range(40):
    params, opt_state, stats, loss, _, train_sims = step(params, opt_state, stats)
  r1 = lambda sims: float(np.mean(np.argmax(np.asarray(sims), 1) == np.arange(16)))
  # Text->audio R@1 with the batch's BatchNorm statistics (training mode) and with the running
  # ones (evaluation mode, which lag behind the fast-moving weights); chance is 1/16.
  evaluate = jax.jit(lambda variables: model.apply(variables, batch, False))
  eval_r1 = r1(evaluate({'params': params, 'batch_stats': stats}))
  assert loss < 0.1 * first and r1(train_sims) >= 0.75 and eval_r1 >= 0.25
