"""Importing an original MMT `trained_model.pth` (torch-written, tiny) into a workdir."""

import copy
import json

import jax
import ml_collections
import numpy as np
import pytest
import torch

from configs import common, mmt_audiocaps
from jaxretrieval import checkpointing
from jaxretrieval.models import mmt
from jaxretrieval.torch_import import mmt_convert
from jaxretrieval.torch_import.bert_convert import BertCheckpointError
from jaxretrieval.torch_import.importer import import_checkpoint
from tests import compiled
from tests.models import test_mmt
from tests.reference_checkpoint import write_reference_checkpoint


def original_config(dataset='AudioCaps'):
  """The parts of the original AudioCaps_mmt.json the import reads, with the tiny sizes."""
  vid = test_mmt.VID
  return {
      'experts': {'modalities': ['vggsound', 'vggish']},
      'arch': {'type': 'CENet', 'args': {
          'keep_missing_modalities': True, 'test_caption_mode': 'indep', 'l2renorm': False,
          **mmt_convert.SUPPORTED_FLAGS,
          'vid_bert_params': {
              'vocab_size_or_config_json_file': 10, 'hidden_size': vid.hidden_size,
              'num_hidden_layers': vid.num_hidden_layers,
              'num_attention_heads': vid.num_attention_heads,
              'intermediate_size': vid.intermediate_size, 'hidden_act': 'gelu',
              'hidden_dropout_prob': 0.1, 'attention_probs_dropout_prob': 0.1,
              'max_position_embeddings': vid.max_position_embeddings,
              'type_vocab_size': vid.type_vocab_size, 'initializer_range': 0.02,
              'layer_norm_eps': 1e-12},
          'txt_bert_params': {'hidden_dropout_prob': 0.1, 'attention_probs_dropout_prob': 0.1},
          'same_dim': test_mmt.SAME_DIM}},
      'train_sets': [{'type': 'ExpertDataLoader', 'args': {'batch_size': 32, 'mix': [{
          'dataset_name': dataset, 'split_name': 'train', 'query_shuffling': 'cat',
          'max_text_words': 52, 'max_expert_tokens': test_mmt.MAX_FRAMES}]}}],
      'optimizer': {'type': 'Adam', 'args': {'lr': 5e-05, 'weight_decay': 0}},
      'loss': {'type': 'MaxMarginRankingLoss', 'args': {'margin': 0.05, 'fix_norm': True}},
      'lr_scheduler': {'type': 'StepLR', 'args': {'step_size': 1, 'gamma': 0.9}},
      'trainer': {'epochs': 50, 'max_samples_per_epoch': 32000, 'monitor': 'max epoch'},
  }


@pytest.fixture(scope='module')
def reference():
  model = test_mmt.torch_model(seed=3)
  return model, {k: v.numpy() for k, v in model.state_dict().items()}


def test_imported_workdir_matches_the_original(tmp_path, reference):
  model, state_dict = reference
  path = tmp_path / 'trained_model.pth'
  write_reference_checkpoint(path, state_dict, original_config(), epoch=50, monitor_best=50)
  meta = import_checkpoint(str(path), str(tmp_path / 'work'), common.get_config(),
                           mmt_base=mmt_audiocaps.get_config('protocol=original'))
  assert meta['variant'] == 'mmt' and meta['epoch'] == 50
  assert meta['experts'] == ['vggish', 'vggsound']
  config = ml_collections.ConfigDict(json.loads((tmp_path / 'work' / 'config.json').read_text()))
  # The original recipe and protocol: fused queries of 52 words, one per test item.
  assert (config.fuse_captions, config.num_test_captions, config.max_tokens.text) == (True, 1, 52)
  assert (config.batch_size, config.num_epochs, config.optimizer.learning_rate,
          config.optimizer.lr_decay, config.loss.margin) == (32, 50, 5e-5, 0.9, 0.05)
  restored = checkpointing.restore(checkpointing.manager(tmp_path / 'work'), 50)
  spec = mmt.mmt_spec(config, test_mmt.EXPERT_DIMS)
  theirs, batch = test_mmt.make_inputs(seed=1)
  want, _ = test_mmt.run_torch(model, theirs, batch, train=False)
  np.testing.assert_allclose(compiled.apply(mmt.MMT(spec), restored['model'], batch, train=False),
                             want['sims'].numpy(), atol=1e-5)


def _convert(state_dict, config=None):
  config = config or original_config()
  return mmt_convert.convert_state_dict(
      state_dict, mmt_convert.spec_from_config(config, state_dict))


def test_every_tensor_is_mapped_and_checked(reference):
  _, state_dict = reference
  variables = _convert(state_dict)
  bn = variables['batch_stats']['text_gu_vggish']['cg']['batch_norm']
  np.testing.assert_array_equal(bn['var'], state_dict['text_GU.vggish.cg.batch_norm.running_var'])
  np.testing.assert_array_equal(variables['params']['moe_fc_vggsound']['kernel'],
                                state_dict['moe_fc_txt.vggsound.weight'].T)
  extra = dict(state_dict, **{'vid_bert.encoder.layer.9.output.dense.bias': np.zeros(64)})
  with pytest.raises(BertCheckpointError, match='layer_9'):
    _convert(extra)
  stray = dict(state_dict, **{'video_GU.vggish.fc.weight': np.zeros((2, 2))})
  with pytest.raises(BertCheckpointError, match='video_GU.vggish.fc.weight'):
    _convert(stray)
  missing = {k: v for k, v in state_dict.items() if k != 'text_GU.vggsound.cg.fc.bias'}
  with pytest.raises(BertCheckpointError, match='text_gu_vggsound/cg/fc/bias'):
    _convert(missing)
  wrong = dict(state_dict, **{'moe_fc_txt.vggish.weight': np.zeros((2, 64), np.float32)})
  with pytest.raises(BertCheckpointError, match='moe_fc_txt.vggish.weight'):
    _convert(wrong)


@pytest.mark.parametrize('edit,message', [
    (lambda c: c['arch']['args'].update(vid_cont='coll'), "vid_cont='coll'"),
    (lambda c: c['arch']['args'].update(out_tok='sep'), "out_tok='sep'"),
    (lambda c: c['experts'].update(modalities=['vggish', 'face']), "'face'"),
])
def test_unsupported_configurations_are_refused(reference, edit, message):
  _, state_dict = reference
  config = copy.deepcopy(original_config())
  edit(config)
  with pytest.raises(BertCheckpointError, match=message):
    mmt_convert.spec_from_config(config, state_dict)


def test_unsupported_dataset_is_refused(reference):
  _, state_dict = reference
  config = original_config('SoundDescs')
  spec = mmt_convert.spec_from_config(config, state_dict)
  with pytest.raises(BertCheckpointError, match="'SoundDescs'"):
    mmt_convert.config_from_reference(config, spec, mmt_audiocaps.get_config())


def test_training_starts_from_the_pretrained_text_bert(tmp_path, reference):
  _, state_dict = reference
  spec = test_mmt.tiny_spec()
  with pytest.raises(FileNotFoundError, match='model.safetensors nor pytorch_model.bin'):
    mmt_convert.with_pretrained_text({}, tmp_path, spec)
  # A Hugging Face folder holding the reference's text BERT (with HF's `bert.` prefix).
  text = {f'bert.{k[len("txt_bert."):]}': torch.as_tensor(v) for k, v in state_dict.items()
          if k.startswith('txt_bert.')}
  torch.save(text, tmp_path / 'pytorch_model.bin')
  random = compiled.variables(mmt.MMT(spec))
  started = mmt_convert.with_pretrained_text(random, tmp_path, spec)
  want = _convert(state_dict)['params']['txt_bert']
  jax.tree.map(np.testing.assert_array_equal, started['params']['txt_bert'], want)
  jax.tree.map(np.testing.assert_array_equal, started['params']['vid_bert'],
               random['params']['vid_bert'])
