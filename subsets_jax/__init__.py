"""subsets_jax: differentiable k-subset sampling in JAX.

Exact Gumbel-top-k sampling without replacement, the continuous relaxation of Xie & Ermon
(IJCAI 2019) with a straight-through variant, exact subset log-probabilities, and a
differentiable k-nearest-neighbour loss with exact kNN classification.
"""

from subsets_jax._src.dknn import dknn_loss, pairwise_sq_distances
from subsets_jax._src.gumbel import gumbel_noise, gumbel_topk, khot
from subsets_jax._src.knn import knn_predict
from subsets_jax._src.log_prob import subset_log_prob, unordered_subset_log_prob
from subsets_jax._src.relaxed_topk import gumbel_topk_relaxed, soft_topk

__version__ = "0.2.0"

__all__ = (
  "dknn_loss",
  "gumbel_noise",
  "gumbel_topk",
  "gumbel_topk_relaxed",
  "khot",
  "knn_predict",
  "pairwise_sq_distances",
  "soft_topk",
  "subset_log_prob",
  "unordered_subset_log_prob",
)
