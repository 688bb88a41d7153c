"""subsets_jax: differentiable k-subset sampling in JAX.

Two k-subset distributions, each with an exact sampler, likelihood and marginals: the
Gumbel-top-k (Plackett-Luce) draw and the exactly-k (conditional Poisson) distribution;
gradient estimators for both (the continuous relaxation of Xie & Ermon with its
straight-through variant, and SIMPLE); a differentiable k-nearest-neighbour loss with exact
kNN classification.
"""

from subsets_jax._src.dknn import dknn_loss, pairwise_sq_distances
from subsets_jax._src.exactly_k import (
  exactly_k_log_partition,
  exactly_k_log_prob,
  exactly_k_marginals,
  exactly_k_sample,
  simple_topk,
)
from subsets_jax._src.gumbel import gumbel_noise, gumbel_topk, khot
from subsets_jax._src.inclusion import inclusion_probs
from subsets_jax._src.knn import knn_predict
from subsets_jax._src.log_prob import subset_log_prob, unordered_subset_log_prob
from subsets_jax._src.relaxed_topk import gumbel_topk_relaxed, soft_topk

__version__ = "0.2.0"

__all__ = (
  "dknn_loss",
  "exactly_k_log_partition",
  "exactly_k_log_prob",
  "exactly_k_marginals",
  "exactly_k_sample",
  "gumbel_noise",
  "gumbel_topk",
  "gumbel_topk_relaxed",
  "inclusion_probs",
  "khot",
  "knn_predict",
  "pairwise_sq_distances",
  "simple_topk",
  "soft_topk",
  "subset_log_prob",
  "unordered_subset_log_prob",
)
