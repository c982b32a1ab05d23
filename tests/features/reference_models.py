"""Reference implementations built in the tests, with random weights in the published formats.

* `torch_resnet18`: VGGSound's model H as hche11/VGGSound builds it (`AVENet.audnet`, a
  torchvision-style ResNet-18 with one input channel and 309 classes), in PyTorch.
* `OfficialVGGish`: the official VGGish graph (slim variable names under `vggish/`) built
  with TensorFlow ops in a session; `write_tf_vggish` saves one as a TF checkpoint like
  `vggish_model.ckpt` and runs it on examples.
* `torch_vggish`: the torchvggish package's VGG stack (`features.*`, `embeddings.*`).
* `official_wavfile_examples`: the official VGGish frontend (`vggish_input.py`).
"""

import numpy as np
import torch
from torch import nn


class _Block(nn.Module):

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

  def forward(self, x):
    y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
    return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
  """Model H's network; `features` returns layer4's map `[B, 512, 9, T']`."""

  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    cin = 64
    for k, (cout, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], start=1):
      setattr(self, f'layer{k}', nn.Sequential(_Block(cin, cout, stride), _Block(cout, cout, 1)))
      cin = cout
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(512, 309)

  def features(self, x):
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class AVENet(nn.Module):

  def __init__(self):
    super().__init__()
    self.audnet = ResNet18()


def torch_resnet18(seed: int = 0) -> AVENet:
  """Model H with random weights and non-trivial BatchNorm statistics, in eval mode."""
  torch.manual_seed(seed)
  model = AVENet()
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 2.0)
  return model.eval()


def torch_vggish(seed: int = 0) -> nn.Module:
  """torchvggish's VGG: `features` (convs), `embeddings` (FC 4096-4096-128, each with ReLU)."""
  torch.manual_seed(seed)
  layers, cin = [], 1
  for v in [64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M']:
    if v == 'M':
      layers.append(nn.MaxPool2d(2, 2))
    else:
      layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(True)]
      cin = v
  model = nn.Module()
  model.features = nn.Sequential(*layers)
  model.embeddings = nn.Sequential(nn.Linear(512 * 4 * 6, 4096), nn.ReLU(True),
                                   nn.Linear(4096, 4096), nn.ReLU(True),
                                   nn.Linear(4096, 128), nn.ReLU(True))
  return model.eval()


def run_torch_vggish(model, examples: np.ndarray) -> np.ndarray:
  """torchvggish's forward: NCHW convs, then flatten in HWC order."""
  with torch.no_grad():
    x = model.features(torch.from_numpy(examples)[:, None])
    x = x.permute(0, 2, 3, 1).reshape(len(examples), -1)
    return model.embeddings(x).numpy()


def official_examples(x: np.ndarray) -> np.ndarray:
  """`vggish_input.waveform_to_examples` after resampling, written out from its definition
  (`mel_features.py`): 25/10 ms |STFT| (periodic Hann, 512 bins), HTK-mel 64 x 125-7500 Hz
  without the DC bin, log(+0.01), 96-frame examples; `x` is 16 kHz mono float64."""
  n = 1 + (len(x) - 400) // 160 if len(x) >= 400 else 0
  frames = np.stack([x[i * 160:i * 160 + 400] for i in range(n)]) if n else np.zeros((0, 400))
  hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
  spec = np.abs(np.fft.rfft(frames * hann, 512))
  to_mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)
  bins = to_mel(np.linspace(0, 8000, 257))
  edges = np.linspace(to_mel(125.0), to_mel(7500.0), 66)
  bank = np.zeros((257, 64))
  for i in range(64):
    lo, mid, hi = edges[i:i + 3]
    bank[:, i] = np.maximum(0, np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)))
  bank[0] = 0
  log_mel = np.log(spec @ bank + 0.01)
  k = len(log_mel) // 96
  return log_mel[:k * 96].reshape(k, 96, 64)


def official_wavfile_examples(path) -> np.ndarray:
  """`vggish_input.wavfile_to_examples`: int16 / 32768, channel mean, resampy kaiser_best,
  then `official_examples`."""
  import resampy
  import soundfile
  data, rate = soundfile.read(str(path), dtype='int16', always_2d=True)
  x = (data / 32768.0).mean(axis=1)
  if rate != 16000:
    x = resampy.resample(x, rate, 16000)
  return official_examples(x)


TF_CONVS = [('conv1', 1, 64), ('conv2', 64, 128), ('conv3/conv3_1', 128, 256),
            ('conv3/conv3_2', 256, 256), ('conv4/conv4_1', 256, 512),
            ('conv4/conv4_2', 512, 512)]
TF_FCS = [('fc1/fc1_1', 12288, 4096), ('fc1/fc1_2', 4096, 4096), ('fc2', 4096, 128)]


class OfficialVGGish:
  """The official VGGish graph (TF ops, slim variable names under `vggish/`) with random
  weights, in a TF1 session using `threads` threads (0: TensorFlow's default)."""

  def __init__(self, seed: int = 0, threads: int = 0):
    import tensorflow as tf
    tf1 = tf.compat.v1
    self.graph = tf.Graph()
    with self.graph.as_default():
      tf1.set_random_seed(seed)
      variables = {}
      for name, shape in [(n, (3, 3, cin, cout)) for n, cin, cout in TF_CONVS] + [
          (n, (cin, cout)) for n, cin, cout in TF_FCS]:
        fan_in = int(np.prod(shape[:-1]))
        variables[name] = (
            tf1.get_variable(f'vggish/{name}/weights', shape, initializer=(
                tf1.random_normal_initializer(stddev=np.sqrt(2 / fan_in)))),
            tf1.get_variable(f'vggish/{name}/biases', shape[-1:],
                             initializer=tf1.random_normal_initializer(stddev=0.05)))
      self.features = tf1.placeholder(tf.float32, (None, 96, 64))
      net = tf.reshape(self.features, [-1, 96, 64, 1])
      for name, _, _ in TF_CONVS:
        w, b = variables[name]
        net = tf.nn.relu(tf.nn.conv2d(net, w, 1, 'SAME') + b)
        if name in ('conv1', 'conv2', 'conv3/conv3_2', 'conv4/conv4_2'):
          net = tf.nn.max_pool2d(net, 2, 2, 'SAME')
      net = tf.reshape(net, [-1, 6 * 4 * 512])
      for name, _, _ in TF_FCS:
        w, b = variables[name]
        net = tf.matmul(net, w) + b
        if name != 'fc2':
          net = tf.nn.relu(net)
      self.embedding = net
      config = tf1.ConfigProto(intra_op_parallelism_threads=threads,
                               inter_op_parallelism_threads=threads)
      self.session = tf1.Session(config=config)
      self.session.run(tf1.global_variables_initializer())
      self.saver = tf1.train.Saver()

  def __call__(self, examples: np.ndarray) -> np.ndarray:
    """`[n, 96, 64]` log-mel examples -> `[n, 128]` embeddings."""
    return self.session.run(self.embedding, {self.features: examples})

  def save(self, path) -> None:
    """A TF checkpoint like `vggish_model.ckpt`."""
    with self.graph.as_default():
      self.saver.save(self.session, str(path), write_meta_graph=False)

  def close(self) -> None:
    self.session.close()


def write_tf_vggish(path, examples: np.ndarray, seed: int = 0) -> np.ndarray:
  """Saves a random VGGish as a TF checkpoint under the official variable names and returns
  the official graph's embeddings of `examples` `[n, 96, 64]`."""
  model = OfficialVGGish(seed)
  try:
    model.save(path)
    return model(examples)
  finally:
    model.close()
