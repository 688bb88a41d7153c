# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Differentiable subset sampling with `subsets_jax`
#
# This notebook walks through sampling without replacement, its Gumbel-top-k form, the
# continuous relaxation of Xie & Ermon (IJCAI 2019) and its straight-through variant, checks
# the samplers against exact probabilities, looks at the gradients a user gets, and trains a
# small differentiable k-nearest-neighbour (dKNN) embedding. Everything runs on a CPU in a
# couple of minutes.

# %%
import itertools

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import subsets_jax as sj

key = jax.random.key(0)

# %% [markdown]
# ## 1. The math, briefly
#
# **Sampling without replacement.** Items $i = 1..n$ have weights $w_i = e^{s_i} > 0$ with
# total $Z$. Draw one item with probability $w_i / Z$, remove it, draw the next from what
# remains, and so on $k$ times. An *ordered* draw $(i_1, \dots, i_k)$ has probability
#
# $$p(i_1, \dots, i_k) = \prod_{j=1}^{k} \frac{w_{i_j}}{Z - \sum_{l<j} w_{i_l}}
# \qquad\text{(`sj.subset_log_prob(scores, indices)`)}$$
#
# and the unordered set $S$ has the sum of this over the $k!$ orders
# (`sj.unordered_subset_log_prob`, computed with Kool et al.'s integral rather than $k!$ terms).
#
# **Gumbel-top-k.** Add independent standard Gumbel noise $g_i$ to $s_i$ and keep the $k$
# largest keys $s_i + g_i$: the result, in descending order of keys, is an exact sample of the
# ordered draw above (`sj.gumbel_topk(key, scores, k)`).
#
# **The relaxation.** Top-k is piecewise constant, so its gradient is useless. Starting from
# $a^1 = s + g$, repeat for $j = 1..k$:
# $p^j = \mathrm{softmax}(a^j/\tau)$ and $a^{j+1} = a^j + \log(1 - p^j)$; the relaxed k-hot
# vector is $\sum_j p^j$ (`sj.gumbel_topk_relaxed(key, scores, k, tau)`; without noise,
# `sj.soft_topk(scores, k, tau)`). Each step is a soft arg-max; $\log(1-p^j)$ pushes down
# what was just picked. The temperature $\tau$ trades smoothness (large $\tau$) for fidelity
# to the exact k-hot (small $\tau$).
#
# **Straight-through.** `hard=True` returns the exact k-hot sample in the forward pass and
# the relaxed vector's gradient in the backward pass.

# %% [markdown]
# ## 2. The relaxed top-k at several temperatures
#
# The seed's example: scores $[1, 2, 3, 4]$, $k = 2$, no noise.

# %%
scores = jnp.array([1.0, 2.0, 3.0, 4.0])
taus = [0.05, 0.1, 0.3, 1.0, 3.0, 10.0]
relaxed = np.stack([np.asarray(sj.soft_topk(scores, 2, t)) for t in taus])
print(f"{'tau':>6} | " + " ".join(f"item {i}" for i in range(4)) + " |   sum")
for t, row in zip(taus, relaxed, strict=True):
  print(f"{t:6.2f} | " + " ".join(f"{v:6.3f}" for v in row) + f" | {row.sum():.4f}")

fig, ax = plt.subplots(figsize=(6, 3))
for t, row in zip(taus, relaxed, strict=True):
  ax.plot(range(4), row, marker="o", label=f"tau={t}")
ax.set(xlabel="item", ylabel="relaxed k-hot", xticks=range(4), title="soft_topk([1,2,3,4], k=2)")
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# Every row sums to $k = 2$; as $\tau$ falls the vector approaches the exact k-hot
# $[0, 0, 1, 1]$. The relaxation is not a vector of inclusion probabilities: when $\tau$ is
# not small compared with the score gaps, an entry can exceed 1.

# %%
print(sj.soft_topk(jnp.array([0.0, 10.0]), 2, 1.0))  # the larger item gets about 1.5

# %% [markdown]
# ## 3. Synthetic samples: the seed's missing section
#
# Weights $[0.1, 0.2, 0.3, 0.4]$, $k = 2$. The six subsets have exact probabilities from
# `unordered_subset_log_prob`; we compare them with the empirical frequencies of exact
# samples (`gumbel_topk`) and of the straight-through samples (`hard=True`).

# %%
weights = jnp.array([0.1, 0.2, 0.3, 0.4])
log_w = jnp.log(weights)
sets = list(itertools.combinations(range(4), 2))
exact = np.exp(
  np.asarray(sj.unordered_subset_log_prob(jnp.broadcast_to(log_w, (6, 4)), jnp.array(sets)))
)
num = 100_000
keys = jax.random.split(key, num)
draws = np.asarray(jax.jit(jax.vmap(lambda k: sj.gumbel_topk(k, log_w, 2)))(keys))
hard = np.asarray(
  jax.jit(jax.vmap(lambda k: sj.gumbel_topk_relaxed(k, log_w, 2, 1.0, hard=True)))(keys)
)


def frequencies(index_sets):
  counts = {s: 0 for s in sets}
  for row in index_sets:
    counts[tuple(sorted(row))] += 1
  return np.array([counts[s] for s in sets]) / len(index_sets)


freq_exact = frequencies(draws.tolist())
freq_hard = frequencies([np.flatnonzero(r).tolist() for r in hard])
x = np.arange(6)
fig, ax = plt.subplots(figsize=(7, 3))
ax.bar(x - 0.25, exact, 0.25, label="exact p(S)")
ax.bar(x, freq_exact, 0.25, label="gumbel_topk")
ax.bar(x + 0.25, freq_hard, 0.25, label="hard=True")
ax.set(xticks=x, xticklabels=[str(s) for s in sets], ylabel="probability")
ax.legend()
plt.show()
print("exact p(S):", np.round(exact, 4), "sum", exact.sum())

# %% [markdown]
# Total-variation distance between the empirical subset distribution and the exact one
# shrinks like $1/\sqrt{\text{samples}}$ (the dashed line is the bound
# $\tfrac12\sum_S\sqrt{p(S)(1-p(S))/m}$ on its expectation).

# %%
sizes = np.logspace(2, 5, 7).astype(int)
tv = [0.5 * np.abs(frequencies(draws[:m].tolist()) - exact).sum() for m in sizes]
bound = [0.5 * np.sqrt(exact * (1 - exact) / m).sum() for m in sizes]
fig, ax = plt.subplots(figsize=(5, 3))
ax.loglog(sizes, tv, "o-", label="TV(empirical, exact)")
ax.loglog(sizes, bound, "--", label="bound on E[TV]")
ax.set(xlabel="number of samples", ylabel="total variation")
ax.legend()
plt.show()

# %% [markdown]
# For the *relaxed* samples, two questions. (a) Does the top-k of the relaxed vector pick the
# right subsets? Empirically yes, at every $\tau$ here: its total variation stays at the
# sampling-noise level (the order *within* the top k can change, as the $\tau = 0.3$ row of
# the table above shows, but not which items are in it). (b) How far is the relaxed vector
# itself from a k-hot sample? We measure the mean over samples of
# $\tfrac{1}{2k}\lVert y - \text{khot}\rVert_1$, and the distance between the average
# relaxed vector and the exact inclusion probabilities $P(i \in S)$: both vanish as
# $\tau \to 0$.

# %%
inclusion = np.array([sum(p for s, p in zip(sets, exact, strict=True) if i in s) for i in range(4)])
tau_grid = np.logspace(-2, 1, 7)
tv_topk, gap_khot, gap_marginal = [], [], []
for t in tau_grid:
  soft = np.asarray(jax.jit(jax.vmap(lambda k, t=t: sj.gumbel_topk_relaxed(k, log_w, 2, t)))(keys))
  picked = np.argsort(-soft, axis=1)[:, :2]
  tv_topk.append(0.5 * np.abs(frequencies(picked.tolist()) - exact).sum())
  gap_khot.append(np.abs(soft - hard).sum(1).mean() / 4)
  gap_marginal.append(0.5 * np.abs(soft.mean(0) - inclusion).sum() / 2)
fig, ax = plt.subplots(figsize=(6, 3))
ax.semilogx(tau_grid, tv_topk, "o-", label="TV of top-k(relaxed) subsets")
ax.semilogx(tau_grid, gap_khot, "s-", label="mean |relaxed - k-hot| / 2k")
ax.semilogx(tau_grid, gap_marginal, "^-", label="|E[relaxed] - P(i in S)| / 2k")
ax.set(xlabel="tau", ylabel="distance")
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# ## 4. Gradients: bias and variance against tau
#
# Take the objective $f(S) = \sum_{i \in S} c_i$ with fixed costs $c$. Its expectation
# $\mathbb{E}_S[f(S)] = \sum_S p(S) f(S)$ has an exact gradient with respect to the scores,
# computable here by enumerating the six subsets. The relaxed estimator differentiates
# $c \cdot y$ through the relaxed sample $y$. Small $\tau$: low bias but high variance
# (and vanishing gradients per sample); large $\tau$: smooth but biased.

# %%
c = jnp.array([1.0, -2.0, 0.5, 3.0])
set_idx = jnp.array(sets)
values = jnp.array([float(c[np.array(s)].sum()) for s in sets])


def expected_f(s):
  lp = sj.unordered_subset_log_prob(jnp.broadcast_to(s, (6, 4)), set_idx)
  return jnp.sum(jnp.exp(lp) * values)


exact_grad = np.asarray(jax.grad(expected_f)(log_w))
print("exact gradient:", np.round(exact_grad, 4))


def per_sample_grads(t, m=2000):
  g = jax.vmap(
    jax.grad(lambda s, k: jnp.dot(c, sj.gumbel_topk_relaxed(k, s, 2, t))), in_axes=(None, 0)
  )
  return np.asarray(jax.jit(g)(log_w, keys[:m]))


bias, spread = [], []
for t in tau_grid:
  grads = per_sample_grads(float(t))
  bias.append(np.linalg.norm(grads.mean(0) - exact_grad) / np.linalg.norm(exact_grad))
  spread.append(np.sqrt(grads.var(0).sum()) / np.linalg.norm(exact_grad))
fig, ax = plt.subplots(figsize=(6, 3))
ax.loglog(tau_grid, bias, "o-", label="relative bias of the mean gradient")
ax.loglog(tau_grid, spread, "s-", label="relative std of one sample's gradient")
ax.loglog(tau_grid, np.array(spread) / np.sqrt(2000), ":", label="Monte-Carlo error of the mean")
ax.set(xlabel="tau")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Reading the plot: at large $\tau$ the gradient is smooth (small spread) but biased, because
# the relaxed vector's mean differs from the inclusion probabilities; as $\tau$ falls the bias
# drops until it meets the Monte-Carlo error of the 2,000-sample mean (dotted), which grows
# with the per-sample spread. Around $\tau \in [0.1, 1]$ both are small for this problem.

# %% [markdown]
# ## 5. Differentiable kNN on the bundled digits
#
# A short dKNN training run on scikit-learn's 8x8 digits with the library's ConvNet
# (SAME padding for the small images): kNN accuracy before and after, and a 2-D projection
# (PCA) of the test embeddings.

# %%
import pathlib  # noqa: E402
import tempfile  # noqa: E402

from subsets_jax import datasets  # noqa: E402
from subsets_jax import dknn_training as training  # noqa: E402

config = training.TrainConfig(
  dataset="digits",
  num_queries=50,
  num_neighbors=50,
  num_epochs=5,
  validation_size=150,
  progress=False,
)
data = datasets.load("digits")
splits = training.make_splits(data, config)
init = training.create_train_state(jax.random.key(config.seed), config, (8, 8, 1), 24)


def accuracy(state):
  return training.evaluate(
    state,
    splits.train_images,
    splits.train_labels,
    splits.test_images,
    splits.test_labels,
    k=config.k,
    num_classes=10,
  )


before = accuracy(init)
workdir = tempfile.mkdtemp()
summary = training.train_and_evaluate(config, workdir, log=lambda _: None)
trained, _ = training.restore_checkpoint(init, pathlib.Path(workdir) / training.BEST)
after = accuracy(trained)
print(f"kNN test accuracy: untrained embedding {before:.3f}, after dKNN training {after:.3f}")


# %%
def project(state):
  emb = np.asarray(training.embed(state, splits.test_images, 1000))
  emb = emb - emb.mean(0)
  _, _, vt = np.linalg.svd(emb, full_matrices=False)
  return emb @ vt[:2].T


fig, axes = plt.subplots(1, 2, figsize=(9, 4))
for ax, state, title in (
  (axes[0], init, f"PCA of test embeddings, before: acc {before:.3f}"),
  (axes[1], trained, f"after dKNN training: acc {after:.3f}"),
):
  xy = project(state)
  scatter = ax.scatter(xy[:, 0], xy[:, 1], c=splits.test_labels, cmap="tab10", s=6)
  ax.set(title=title, xticks=[], yticks=[])
fig.colorbar(scatter, ax=axes, ticks=range(10))
plt.show()
