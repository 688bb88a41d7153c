"""subsets_jax: differentiable k-subset sampling in JAX.

Two k-subset distributions, each with an exact sampler, likelihood and marginals: the
Gumbel-top-k (Plackett-Luce) draw and the exactly-k (conditional Poisson) distribution;
the gradient estimators the field compares, behind one call (`expectation`): the continuous
relaxation of Xie & Ermon with its straight-through variant, SIMPLE, I-MLE, the score
function with a leave-one-out baseline, and L2X's relaxation; a differentiable
k-nearest-neighbour loss with exact kNN classification.
"""

from subsets_jax._src.dknn import dknn_loss, pairwise_sq_distances
from subsets_jax._src.exactly_k import (
  exactly_k_entropy,
  exactly_k_log_partition,
  exactly_k_log_prob,
  exactly_k_marginals,
  exactly_k_sample,
  simple_topk,
)
from subsets_jax._src.expectation import ESTIMATORS, FAMILIES, expectation
from subsets_jax._src.gumbel import gumbel_noise, gumbel_topk, khot
from subsets_jax._src.imle import imle_topk, sum_of_gamma_noise
from subsets_jax._src.inclusion import inclusion_probs
from subsets_jax._src.knn import knn_predict
from subsets_jax._src.l2x import l2x_relaxed
from subsets_jax._src.log_prob import subset_log_prob, unordered_subset_log_prob
from subsets_jax._src.relaxed_topk import gumbel_topk_relaxed, soft_topk

__version__ = "0.2.0"

__all__ = (
  "ESTIMATORS",
  "FAMILIES",
  "dknn_loss",
  "exactly_k_entropy",
  "exactly_k_log_partition",
  "exactly_k_log_prob",
  "exactly_k_marginals",
  "exactly_k_sample",
  "expectation",
  "gumbel_noise",
  "gumbel_topk",
  "gumbel_topk_relaxed",
  "imle_topk",
  "inclusion_probs",
  "khot",
  "knn_predict",
  "l2x_relaxed",
  "pairwise_sq_distances",
  "simple_topk",
  "soft_topk",
  "subset_log_prob",
  "sum_of_gamma_noise",
  "unordered_subset_log_prob",
)
