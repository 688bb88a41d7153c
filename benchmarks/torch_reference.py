"""The seed's PyTorch code paths, re-implemented here for side-by-side timing.

`subset_operator` follows the seed's `SubsetOperator.forward` (Xie & Ermon's tutorial):
Gumbel noise, then k times `scores += log(max(1 - p, tiny_f32))`, `p = softmax(scores / tau)`,
`khot += p`. `ConvNet`, `dknn_loss` and the SGD step follow the reference `run_dknn.py`.
Requires the `torch` extra (`pip install torch==2.13.0`, a CPU build here); on a GPU machine
the benchmarks can run these on CUDA (`--torch_device cuda`).
"""

from __future__ import annotations

import numpy as np
import torch

TINY = float(np.finfo(np.float32).tiny)


def subset_operator(scores: torch.Tensor, k: int, tau: float, noise: bool = True) -> torch.Tensor:
  if noise:
    # Parameters on the scores' device, so that the noise is drawn there (CPU or CUDA).
    zero = torch.zeros((), device=scores.device)
    scores = scores + torch.distributions.Gumbel(zero, zero + 1.0).sample(scores.shape)
  khot = torch.zeros_like(scores)
  onehot = torch.zeros_like(scores)
  for _ in range(k):
    scores = scores + torch.log(torch.clamp(1.0 - onehot, min=TINY))
    onehot = torch.softmax(scores / tau, dim=-1)
    khot = khot + onehot
  return khot


class ConvNet(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.conv1 = torch.nn.Conv2d(1, 20, 5)
    self.conv2 = torch.nn.Conv2d(20, 50, 5)
    self.linear = torch.nn.Linear(800, 500)

  def forward(self, x):
    x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
    x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
    return torch.relu(self.linear(x.flatten(1)))


def dknn_loss(query, neighbors, query_labels, neighbor_labels, k, tau):
  scores = -((query.unsqueeze(1) - neighbors.unsqueeze(0)) ** 2).sum(-1)
  top_k = subset_operator(scores, k, tau)
  correct = (query_labels.unsqueeze(1) == neighbor_labels.unsqueeze(0)).float()
  return -(correct * top_k).sum(-1).mean()


def make_train_step(k: int = 9, tau: float = 1.0, lr: float = 1e-3, device: str = "cpu"):
  """The seed's SGD step; `float(loss)` at the end waits for the device."""
  net = ConvNet().to(device)
  opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)

  def step(query_x, query_y, cand_x, cand_y, num_samples: int = 1):
    opt.zero_grad()
    q, n = net(query_x), net(cand_x)
    loss = sum(dknn_loss(q, n, query_y, cand_y, k, tau) for _ in range(num_samples)) / num_samples
    loss.backward()
    opt.step()
    return float(loss.detach())

  return step
