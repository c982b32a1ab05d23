"""The original MMT's forward pass in torch, for parity tests (written for this project).

Semantics follow akoepke/audio-retrieval-benchmark `mmt/model/{bert,model,loss}.py` for the
configuration of `AudioCaps_mmt.json` (txt bertftn/gbn/emb, vid_cont bert, vid_inp both,
pos_enc tint, out_tok mxp, vid_wgh none, keep_missing_modalities): a BERT (the text one with
word embeddings and Hugging Face's `LayerNorm` names, the audio one with features added and the
original's `layer_norm` names), gated embedding units, the [CLS]/[AGG]/frame token layout, the
weighted similarity and the max-margin loss. Parameter names equal the original's state_dict.
"""

import math
import types

import torch
from torch import nn
import torch.nn.functional as F


def tiny_bert_config(vocab_size=None, **kw):
  c = dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
           intermediate_size=96, max_position_embeddings=40, type_vocab_size=5,
           layer_norm_eps=1e-12)
  c.update(kw)
  return types.SimpleNamespace(**c)


class Embeddings(nn.Module):

  def __init__(self, c, norm_name):
    super().__init__()
    if c.vocab_size:
      self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
    self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
    self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
    self.norm_name = norm_name
    setattr(self, norm_name, nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps))

  def forward(self, input_ids, token_type_ids, position_ids, features):
    x = self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
    x = x + (self.word_embeddings(input_ids) if features is None else features)
    return getattr(self, self.norm_name)(x)


class Dense(nn.Module):
  """`dense` (+ optional LayerNorm named as the checkpoint names it)."""

  def __init__(self, n_in, n_out, c=None, norm_name=None):
    super().__init__()
    self.dense = nn.Linear(n_in, n_out)
    self.norm_name = norm_name
    if norm_name:
      setattr(self, norm_name, nn.LayerNorm(n_out, eps=c.layer_norm_eps))


class SelfAttention(nn.Module):

  def __init__(self, c):
    super().__init__()
    self.query = nn.Linear(c.hidden_size, c.hidden_size)
    self.key = nn.Linear(c.hidden_size, c.hidden_size)
    self.value = nn.Linear(c.hidden_size, c.hidden_size)
    self.heads = c.num_attention_heads


class Attention(nn.Module):

  def __init__(self, c, norm_name):
    super().__init__()
    self.self = SelfAttention(c)
    self.output = Dense(c.hidden_size, c.hidden_size, c, norm_name)


class Layer(nn.Module):

  def __init__(self, c, norm_name):
    super().__init__()
    self.attention = Attention(c, norm_name)
    self.intermediate = Dense(c.hidden_size, c.intermediate_size)
    self.output = Dense(c.intermediate_size, c.hidden_size, c, norm_name)

  def forward(self, x, bias):
    a = self.attention.self
    b, n, h = x.shape
    d = h // a.heads
    split = lambda y: y.view(b, n, a.heads, d).permute(0, 2, 1, 3)
    q, k, v = split(a.query(x)), split(a.key(x)), split(a.value(x))
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, dim=-1)
    ctx = (probs @ v).permute(0, 2, 1, 3).reshape(b, n, h)
    out = self.attention.output
    x = getattr(out, out.norm_name)(out.dense(ctx) + x)
    inter = self.intermediate.dense(x)
    inter = inter * 0.5 * (1.0 + torch.erf(inter / math.sqrt(2.0)))
    o = self.output
    return getattr(o, o.norm_name)(o.dense(inter) + x)


class Encoder(nn.Module):

  def __init__(self, c, norm_name):
    super().__init__()
    self.layer = nn.ModuleList([Layer(c, norm_name) for _ in range(c.num_hidden_layers)])


class Bert(nn.Module):
  """BERT as the original's `BertModel` (norm_name='layer_norm') or HF's ('LayerNorm')."""

  def __init__(self, c, norm_name='LayerNorm'):
    super().__init__()
    self.embeddings = Embeddings(c, norm_name)
    self.encoder = Encoder(c, norm_name)
    self.pooler = Dense(c.hidden_size, c.hidden_size)

  def forward(self, input_ids, attention_mask, token_type_ids, position_ids, features=None):
    x = self.embeddings(input_ids, token_type_ids, position_ids, features)
    bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
    for layer in self.encoder.layer:
      x = layer(x, bias)
    return x, torch.tanh(self.pooler.dense(x[:, 0]))


class ContextGating(nn.Module):

  def __init__(self, d):
    super().__init__()
    self.fc = nn.Linear(d, d)
    self.batch_norm = nn.BatchNorm1d(d)

  def forward(self, x):
    return F.glu(torch.cat((x, self.batch_norm(self.fc(x))), 1), 1)


class GatedEmbeddingUnit(nn.Module):

  def __init__(self, d_in, d_out):
    super().__init__()
    self.fc = nn.Linear(d_in, d_out)
    self.cg = ContextGating(d_out)

  def forward(self, x):
    return F.normalize(self.cg(self.fc(x)), dim=-1)


class ReduceDim(nn.Module):

  def __init__(self, d_in, d_out):
    super().__init__()
    self.fc = nn.Linear(d_in, d_out)

  def forward(self, x):
    return F.normalize(self.fc(x), dim=-1)


class MMT(nn.Module):
  """CENet of the original restricted to the AudioCaps/CLOTHO MMT configuration.

  `expert_dims`: ordered {name: (dim, token type)}. Inputs per expert: frames `[B, T, D]`,
  float times `[B, T]` (clamped and truncated to positions as the original does), frame
  indicators `[B, T]`, max-pooled `[B, D]`.
  """

  def __init__(self, expert_dims, txt_config, vid_config, same_dim):
    super().__init__()
    self.modalities = list(expert_dims)
    self.expert_dims = expert_dims
    self.same_dim = same_dim
    self.max_pos = vid_config.max_position_embeddings - 1
    self.video_dim_reduce = nn.ModuleDict(
        {m: ReduceDim(d, same_dim) for m, (d, _) in expert_dims.items()})
    self.vid_bert = Bert(vid_config, 'layer_norm')
    self.txt_bert = Bert(txt_config, 'LayerNorm')
    h = txt_config.hidden_size
    self.text_GU = nn.ModuleDict({m: GatedEmbeddingUnit(h, same_dim) for m in expert_dims})
    self.moe_fc_txt = nn.ModuleDict({m: nn.Linear(h, 1) for m in expert_dims})

  def forward(self, token_ids, token_mask, frames, times, frame_ind, maxpool):
    q, length = token_ids.shape
    zeros = torch.zeros_like(token_ids)
    pos = torch.arange(length).expand(q, length)
    text = self.txt_bert(token_ids, token_mask, zeros, pos)[0][:, 0]
    text_embd = {m: self.text_GU[m](text) for m in self.modalities}
    text_w = torch.softmax(torch.cat([self.moe_fc_txt[m](text) for m in self.modalities], -1), 1)
    b = maxpool[self.modalities[0]].shape[0]
    ind = {m: frame_ind[m].max(1)[0] for m in self.modalities}
    feats = [torch.zeros(b, self.same_dim)]
    types_, positions, masks = [torch.zeros(b)], [torch.zeros(b)], [torch.ones(b)]
    agg_index, tok = {}, 0
    for m in self.modalities:
      t_type = self.expert_dims[m][1]
      reduce = self.video_dim_reduce[m]
      tok += 1
      agg_index[m] = tok
      feats.append(reduce(maxpool[m]))
      types_.append(torch.full((b,), t_type))
      positions.append(torch.zeros(b))
      masks.append(ind[m])
      frames_m = reduce(frames[m])
      pos_m = times[m].clamp(min=0, max=self.max_pos).long()
      for k in range(frames_m.shape[1]):
        tok += 1
        feats.append(frames_m[:, k])
        types_.append(torch.full((b,), t_type))
        positions.append(pos_m[:, k])
        masks.append(frame_ind[m][:, k])
    stack = lambda xs: torch.stack(xs, 1).long()
    last = self.vid_bert(None, stack(masks), stack(types_), stack(positions),
                         torch.stack(feats, 1))[0]
    audio = {m: F.normalize(last[:, agg_index[m]], dim=-1) for m in self.modalities}
    text_embd = {m: F.normalize(v, dim=-1) for m, v in text_embd.items()}
    vid_w = F.normalize(torch.ones(b, len(self.modalities)), p=1, dim=-1)
    text_w = F.normalize(text_w, p=1, dim=-1)
    moe = vid_w[None] * text_w[:, None]
    norm = moe.sum(2, keepdim=True)
    norm[norm == 0] = 1e-5
    moe = moe / norm
    sims = sum(moe[:, :, i] * (text_embd[m] @ audio[m].t()) for i, m in enumerate(self.modalities))
    return dict(text=text_embd, audio=audio, text_weights=text_w, sims=sims)


def max_margin_loss(x, margin):
  """The original MaxMarginRankingLoss with fix_norm=True."""
  n = x.shape[0]
  pos = torch.diag(x)[:, None].expand(n, n)
  keep = ~torch.eye(n, dtype=torch.bool)
  terms = torch.cat([F.relu(margin - pos + x)[keep], F.relu(margin - pos + x.t())[keep]])
  return terms.mean()
