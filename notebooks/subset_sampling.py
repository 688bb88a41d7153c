# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
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
# A short dKNN training run on scikit-learn's 8x8 digits: a two-layer perceptron embedding
# trained with `sj.dknn_loss` and SGD with momentum (optax), classified by `sj.knn_predict`
# against the training images, before and after; then a 2-D projection (PCA) of the test
# embeddings. (`examples/train_mnist.py` runs the full protocol with the reference ConvNet.)

# %%
import optax  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

digits = load_digits()
images = jnp.asarray(digits.data / 16.0, jnp.float32)
labels = jnp.asarray(digits.target, jnp.int32)
order = np.random.default_rng(0).permutation(len(labels))
test, train = order[:400], order[400:]


def embed(params, x):
  hidden = jax.nn.relu(x @ params["w1"] + params["b1"])
  return hidden @ params["w2"] + params["b2"]


k1, k2 = jax.random.split(jax.random.key(0))
init = {
  "w1": jax.random.normal(k1, (64, 128)) / 8.0,
  "b1": jnp.zeros(128),
  "w2": jax.random.normal(k2, (128, 32)) / np.sqrt(128.0),
  "b2": jnp.zeros(32),
}
optimizer = optax.sgd(1e-2, momentum=0.9)


@jax.jit
def train_step(params, opt_state, key, queries, neighbors):
  def loss_fn(p):
    q, x = embed(p, images[queries]), embed(p, images[neighbors])
    return sj.dknn_loss(key, q, x, labels[queries], labels[neighbors], k=9, tau=1.0, num_samples=4)

  loss, grads = jax.value_and_grad(loss_fn)(params)
  updates, opt_state = optimizer.update(grads, opt_state)
  return optax.apply_updates(params, updates), opt_state, loss


def accuracy(params):
  bank = embed(params, images[train])
  predicted = sj.knn_predict(embed(params, images[test]), bank, labels[train], k=9, num_classes=10)
  return float(jnp.mean(predicted == labels[test]))


params, opt_state = init, optimizer.init(init)
rng = np.random.default_rng(1)
for step in range(600):
  queries, neighbors = rng.choice(train, 100, replace=False), rng.choice(train, 100, replace=False)
  key = jax.random.fold_in(jax.random.key(1), step)
  params, opt_state, loss = train_step(params, opt_state, key, queries, neighbors)
before, after = accuracy(init), accuracy(params)
print(f"kNN test accuracy: untrained embedding {before:.3f}, after dKNN training {after:.3f}")


# %%
def project(params):
  emb = np.asarray(embed(params, images[test]))
  emb = emb - emb.mean(0)
  _, _, vt = np.linalg.svd(emb, full_matrices=False)
  return emb @ vt[:2].T


fig, axes = plt.subplots(1, 2, figsize=(9, 4))
for ax, p, title in (
  (axes[0], init, f"PCA of test embeddings, before: acc {before:.3f}"),
  (axes[1], params, f"after dKNN training: acc {after:.3f}"),
):
  xy = project(p)
  scatter = ax.scatter(xy[:, 0], xy[:, 1], c=np.asarray(labels[test]), cmap="tab10", s=6)
  ax.set(title=title, xticks=[], yticks=[])
fig.colorbar(scatter, ax=axes, ticks=range(10))
plt.show()

# %% [markdown]
# ## 6. Gradient estimators against exact gradients
#
# Two distributions over sets of $k$ items: the Gumbel-top-k (Plackett–Luce) draw
# (`sj.gumbel_topk`, likelihood `sj.unordered_subset_log_prob`, marginals
# `sj.inclusion_probs`) and the exactly-k distribution $p(S) \propto \prod_{i \in S} w_i$
# (`sj.exactly_k_sample`, `sj.exactly_k_log_prob`, `sj.exactly_k_marginals`). For a small
# problem ($n = 8$, $k = 3$, 56 sets) and a fixed objective $f$ of the k-hot vector $z$,
# the exact gradient of $\mathbb{E}[f(S)]$ with respect to the scores is a sum over all
# sets. Against it: the relaxed estimator at several temperatures and the straight-through
# estimator (both for the Plackett–Luce family), and SIMPLE (for the exactly-k family),
# each averaged over 4,000 draws. The relaxed estimator trades bias (large tau) for
# variance (small tau); straight-through and SIMPLE are biased, with small variance.

# %%
jax.config.update("jax_enable_x64", True)
n_e, k_e = 8, 3
theta = jnp.asarray(np.random.default_rng(5).normal(size=n_e))
c = jnp.asarray(np.random.default_rng(6).normal(size=n_e))
d = jnp.asarray(np.random.default_rng(7).normal(size=n_e))


def f(z):
  return jnp.dot(c, z) + jnp.dot(d, z) ** 2 / k_e


all_sets = jnp.asarray(list(itertools.combinations(range(n_e), k_e)))
all_khots = sj.khot(all_sets, n_e, dtype=jnp.float64)
f_sets = jax.vmap(f)(all_khots)


def exact_objective(log_prob):
  return lambda s: jnp.sum(
    jnp.exp(log_prob(jnp.broadcast_to(s, (len(all_sets), n_e)), all_sets)) * f_sets
  )


exact_pl = jax.grad(exact_objective(sj.unordered_subset_log_prob))(theta)
exact_ek = jax.grad(exact_objective(sj.exactly_k_log_prob))(theta)
draw_keys = jax.random.split(jax.random.key(3), 4000)


def estimates(sample):
  return jax.vmap(jax.grad(lambda s, key: f(sample(key, s))), in_axes=(None, 0))(theta, draw_keys)


def summary(grads, exact):
  mean = grads.mean(0)
  return float(jnp.linalg.norm(mean - exact)), float(jnp.sqrt(jnp.sum(grads.var(0))))


taus = [0.05, 0.1, 0.3, 1.0, 3.0]
rows = {}
for tau in taus:
  rows[f"relaxed, tau={tau}"] = summary(
    estimates(lambda key, s, tau=tau: sj.gumbel_topk_relaxed(key, s, k_e, tau)), exact_pl
  )
rows["straight-through, tau=1"] = summary(
  estimates(lambda key, s: sj.gumbel_topk_relaxed(key, s, k_e, 1.0, hard=True)), exact_pl
)
rows["SIMPLE (exactly-k)"] = summary(
  estimates(lambda key, s: sj.simple_topk(key, s, k_e)), exact_ek
)
# The Monte-Carlo error of the 4,000-draw mean is std / sqrt(4000): a |bias| near it is
# not resolved from zero.
print(f"{'estimator':<26} {'|bias|':>8} {'std (per draw)':>15} {'MC error':>9}")
for name, (bias, std) in rows.items():
  print(f"{name:<26} {bias:8.4f} {std:15.4f} {std / np.sqrt(len(draw_keys)):9.4f}")
print(
  f"|exact gradient|: Plackett-Luce {float(jnp.linalg.norm(exact_pl)):.4f}, "
  f"exactly-k {float(jnp.linalg.norm(exact_ek)):.4f}"
)

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(taus, [rows[f"relaxed, tau={t}"][0] for t in taus], "o-", label="relaxed: |bias|")
ax.plot(taus, [rows[f"relaxed, tau={t}"][1] for t in taus], "s--", label="relaxed: std")
for name, style in (("straight-through, tau=1", "C2"), ("SIMPLE (exactly-k)", "C3")):
  ax.axhline(rows[name][0], color=style, label=f"{name}: |bias|")
  ax.axhline(rows[name][1], color=style, ls=":", label=f"{name}: std")
ax.set(xscale="log", yscale="log", xlabel="tau", title="gradient estimators, n = 8, k = 3")
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# At small temperature the mean of the relaxed vector approaches the inclusion
# probabilities of the Gumbel-top-k draw, which `sj.inclusion_probs` computes exactly;
# the exactly-k marginals of the same scores differ.

# %%
relaxed_mean = jax.vmap(lambda key: sj.gumbel_topk_relaxed(key, theta, k_e, 0.05))(draw_keys).mean(
  0
)
pi = sj.inclusion_probs(theta, k_e)
print("relaxed mean, tau=0.05:", np.round(np.asarray(relaxed_mean), 3))
print("inclusion_probs:       ", np.round(np.asarray(pi), 3))
print("exactly_k_marginals:   ", np.round(np.asarray(sj.exactly_k_marginals(theta, k_e)), 3))
print(f"max |relaxed mean - inclusion_probs| = {float(jnp.max(jnp.abs(relaxed_mean - pi))):.4f}")
jax.config.update("jax_enable_x64", False)
# %% [markdown]
# ## 7. The estimator study
#
# Every estimator of `sj.expectation` on the synthetic problem of I-MLE (Niepert et al.
# 2021), measured as SIMPLE (Ahmed et al. 2023) measures gradient estimators. There are
# $n = 10$ items and sets of $k = 5$. Each of 10 seeds (SIMPLE's) draws scores
# $\theta \sim \mathcal{N}(0, I)$ and a target $b = \lvert \mathcal{N}(0, I) \rvert$; the
# objective is $f(z) = \lVert z - b \rVert^2$ of the k-hot vector $z$. For a k-hot $z$,
# $f = \sum_i b_i^2 + \sum_{i \in S} (1 - 2 b_i)$, so the best set holds the $k$ items with
# the largest $b_i$.
#
# Each estimator is compared with the exact gradient of $\mathbb{E}[f]$ under the
# distribution it samples, summed over all 252 sets in float64:
#
# - the **exactly-k** family, $p(S) \propto \exp(\sum_{i \in S} \theta_i)$: SIMPLE, I-MLE and
#   the score function with `family="exactly_k"`;
# - the **Gumbel-top-k** family: the relaxed and straight-through estimators and the score
#   function with `family="gumbel_topk"`. A set's probability is the sum of the
#   Plackett–Luce probabilities of its $5! = 120$ orders (30,240 ordered draws in all),
#   computed by a recursion over the item drawn last:
#   $p(S) = \sum_{i \in S} p(S \setminus i)\, w_i / (Z - \sum_{j \in S \setminus i} w_j)$.
#   L2X relaxes $k$ categorical draws *with* replacement, which no family here samples; it
#   is compared with the Gumbel-top-k gradient, the draw without replacement it stands for.
#
# Settings: the relaxed estimator at $\tau = 0.5$ and $\tau = 0.1$, straight-through at
# $\tau = 0.5$, L2X at its own $\tau = 0.1$, I-MLE at $\lambda = 10$ (the library default)
# and $\lambda = 2$ (I-MLE's synthetic experiment) with noise temperature 1. The score
# function's single estimate uses `num_samples=2`: each draw's baseline is the value of
# the other draw, so one estimate needs two draws.

# %%
import functools  # noqa: E402

jax.config.update("jax_enable_x64", True)
n_s, k_s = 10, 5
seeds = [1234, 1067, 9198, 9453, 6240, 7044, 1755, 7898, 3131, 1277]


def synth_problem(seed):
  rng = np.random.default_rng(seed)
  theta = rng.normal(size=n_s)
  return theta, np.abs(rng.normal(size=n_s))


theta0, targets = (jnp.asarray(np.stack(a)) for a in zip(*map(synth_problem, seeds), strict=True))

# The sets of each size up to k, the items each set holds, and the set without each member.
levels = [list(itertools.combinations(range(n_s), j)) for j in range(k_s + 1)]
place = [{s: row for row, s in enumerate(level)} for level in levels]
taken = [np.zeros((len(level), n_s), bool) for level in levels]
for level, mask in zip(levels, taken, strict=True):
  for row, s in enumerate(level):
    mask[row, list(s)] = True
members = [
  jnp.asarray(level, dtype=jnp.int32).reshape(len(level), j) for j, level in enumerate(levels)
]
without = [
  jnp.asarray([[place[j - 1][s[:m] + s[m + 1 :]] for m in range(j)] for s in levels[j]])
  for j in range(1, k_s + 1)
]
khots = jnp.asarray(taken[k_s], jnp.float64)  # [252, n]


def exactly_k_log_probs(theta):
  logits = khots @ theta
  return logits - jax.nn.logsumexp(logits)


def gumbel_topk_log_probs(theta):
  """log p(S) of the Gumbel-top-k draw for all 252 sets, summed over each set's orders."""
  log_p = jnp.zeros(1)  # the empty prefix
  for j in range(1, k_s + 1):
    log_left = jax.nn.logsumexp(jnp.where(taken[j - 1], -jnp.inf, theta), axis=1)
    prev = without[j - 1]
    log_p = jax.nn.logsumexp(log_p[prev] + theta[members[j]] - log_left[prev], axis=1)
  return log_p


LOG_PROBS = {"exactly_k": exactly_k_log_probs, "gumbel_topk": gumbel_topk_log_probs}


def expected_f(family, theta, b):
  f_sets = jnp.sum(b**2) + khots @ (1 - 2 * b)
  return jnp.dot(jnp.exp(LOG_PROBS[family](theta)), f_sets)


def min_f(b):
  return jnp.sum(b**2) + jnp.sum(jnp.sort(1 - 2 * b)[:k_s])


# Check the recursion on the first seed: against all 30,240 ordered draws, one by one, and
# against the library's likelihood (quadrature).
w = np.exp(np.asarray(theta0[0]))
by_set = dict.fromkeys(levels[k_s], 0.0)
for order in itertools.permutations(range(n_s), k_s):
  p, left = 1.0, w.sum()
  for i in order:
    p, left = p * w[i] / left, left - w[i]
  by_set[tuple(sorted(order))] += p
ordered_sum = np.array(list(by_set.values()))
recursion = np.exp(np.asarray(gumbel_topk_log_probs(theta0[0])))
quadrature = np.exp(
  np.asarray(sj.unordered_subset_log_prob(jnp.broadcast_to(theta0[0], (252, n_s)), members[k_s]))
)
print(f"sum of p(S): {recursion.sum():.15f}")
for name, other in (("the 30,240 orders", ordered_sum), ("unordered_subset_log_prob", quadrature)):
  print(
    f"max relative difference, recursion vs {name}: {np.max(np.abs(recursion / other - 1)):.1e}"
  )
exact_grad = {
  family: jax.vmap(jax.grad(functools.partial(expected_f, family)))(theta0, targets)
  for family in sj.FAMILIES
}

# %% [markdown]
# **Bias and variance.** For each seed, 10,000 single gradient estimates $g_t$ of each
# estimator (`jax.grad` of `sj.expectation` with `num_samples=1`, or 2 for the score
# function, under `jax.vmap` over 10,000 keys; the estimates in float32, the library's
# compute dtype) give SIMPLE's two numbers: the bias $1 - \cos(\bar g, \nabla)$ between their
# mean $\bar g$ and the exact gradient $\nabla$, and the variance
# $\operatorname{Var}_t \cos(g_t, \bar g)$. An estimate of zero (the two score-function draws
# are the same set, or I-MLE's perturbed state does not move) counts as cosine 0. The
# Monte-Carlo floor is the $1 - \cos$ an unbiased estimator with the same spread would show
# from 10,000 estimates, $\operatorname{tr}(P \Sigma P) / (2 N \lVert\nabla\rVert^2)$ with
# $P$ the projection orthogonal to $\nabla$: a bias near it is not resolved from zero.

# %%
num_estimates = 10_000
STUDY = [  # label, family of the exact gradient, static options of sj.expectation, tau, lam
  ("relaxed, tau 0.5", "gumbel_topk", (("estimator", "relaxed"),), 0.5, 10.0),
  ("relaxed, tau 0.1", "gumbel_topk", (("estimator", "relaxed"),), 0.1, 10.0),
  ("straight-through, tau 0.5", "gumbel_topk", (("estimator", "straight_through"),), 0.5, 10.0),
  ("L2X, tau 0.1", "gumbel_topk", (("estimator", "l2x"),), 0.1, 10.0),
  (
    "score function, Gumbel-top-k",
    "gumbel_topk",
    (("estimator", "score_function"), ("family", "gumbel_topk"), ("num_samples", 2)),
    1.0,
    10.0,
  ),
  ("SIMPLE", "exactly_k", (("estimator", "simple"),), 1.0, 10.0),
  ("I-MLE, lambda 10", "exactly_k", (("estimator", "imle"),), 1.0, 10.0),
  ("I-MLE, lambda 2", "exactly_k", (("estimator", "imle"),), 1.0, 2.0),
  (
    "score function, exactly-k",
    "exactly_k",
    (("estimator", "score_function"), ("family", "exactly_k"), ("num_samples", 2)),
    1.0,
    10.0,
  ),
]


def one_estimate(static, theta, b, key, tau, lam):
  """One estimate of the gradient of E[f(z)] with respect to the scores, in float32."""
  b = b.astype(jnp.float32)
  objective = lambda s: sj.expectation(
    lambda z: jnp.sum((z - b) ** 2), key, s, k_s, tau=tau, lam=lam, **dict(static)
  )
  return jax.grad(objective)(theta.astype(jnp.float32)).astype(jnp.float64)


def cosine(u, v):
  norms = jnp.linalg.norm(u, axis=-1) * jnp.linalg.norm(v, axis=-1)
  return jnp.where(norms > 0, jnp.sum(u * v, -1) / jnp.where(norms > 0, norms, 1), 0.0)


@functools.partial(jax.jit, static_argnames="static")
def bias_variance(static, tau, lam, exact):
  def per_seed(args):
    index, theta, b, g = args
    keys = jax.random.split(jax.random.fold_in(jax.random.key(7), index), num_estimates)
    grads = jax.vmap(lambda key: one_estimate(static, theta, b, key, tau, lam))(keys)
    mean = grads.mean(0)
    unit = g / jnp.linalg.norm(g)
    spread = jnp.sum(grads.var(0)) - jnp.var(grads @ unit)
    return {
      "bias": 1 - cosine(mean, g),
      "variance": jnp.var(cosine(grads, mean)),
      "floor": spread / (2 * num_estimates * jnp.sum(g**2)),
      "zero": jnp.mean(jnp.all(grads == 0, axis=-1)),
    }

  return jax.lax.map(per_seed, (jnp.arange(len(seeds)), theta0, targets, exact))


stats = {
  label: jax.tree.map(np.asarray, bias_variance(static, tau, lam, exact_grad[family]))
  for label, family, static, tau, lam in STUDY
}
pm = lambda x, digits=4: f"{x.mean():.{digits}f} ± {x.std(ddof=1):.{digits}f}"
print(
  f"{'estimator':<30} {'bias: 1 - cos':>17} {'variance of cos':>17} {'MC floor':>9} {'zero':>6}"
)
for label, s in stats.items():
  print(
    f"{label:<30} {pm(s['bias']):>17} {pm(s['variance']):>17} {s['floor'].mean():9.4f}"
    f" {s['zero'].mean():6.3f}"
  )
print("mean ± sd over the 10 seeds; MC floor and zero (fraction of zero estimates): means")

# %%
fig, ax = plt.subplots(figsize=(7, 4.5))
for i, (label, s) in enumerate(stats.items()):
  ax.errorbar(
    s["variance"].mean(),
    s["bias"].mean(),
    xerr=s["variance"].std(ddof=1),
    yerr=s["bias"].std(ddof=1),
    fmt="o",
    color=f"C{i}",
    label=label,
    capsize=2,
  )
ax.set(
  xscale="log",
  yscale="log",
  xlabel="variance: Var cos(single estimate, mean estimate)",
  ylabel="bias: 1 - cos(mean estimate, exact gradient)",
  title="n = 10, k = 5, 10 seeds x 10,000 estimates (mean ± sd)",
)
ax.legend(fontsize=7, loc="lower right")
plt.show()

# %% [markdown]
# What the table shows:
#
# - The two **score-function** estimators are the only unbiased ones: their $1 - \cos$ sits
#   at the Monte-Carlo floor. Their variance is moderate (about 0.05); about 2% of their
#   estimates are zero, when the two draws are the same set.
# - **SIMPLE** has the lowest variance and a small bias. Its gradient is exact for an
#   objective linear in $z$ (checked below on $\sum_i b_i^2 + \sum_i (1 - 2 b_i) z_i$, which
#   equals $f$ on every k-hot); its bias comes from the quadratic term of $f$,
#   differentiated at the sample.
# - **Straight-through** and **relaxed** at $\tau = 0.5$ are biased (about 0.05 to 0.06)
#   with more variance than the score function. At $\tau = 0.1$ the relaxed estimates are
#   heavy-tailed: the Monte-Carlo floor exceeds the measured $1 - \cos$, so 10,000 estimates
#   do not resolve its bias.
# - **L2X** is biased against the Gumbel-top-k gradient, by very different amounts across
#   seeds: it relaxes draws with replacement, a different distribution.
# - **I-MLE** has the largest bias, at low variance; its mean estimate is still within 90°
#   of the exact gradient. Its perturb-and-MAP samples (sum-of-gamma noise, whose sum over
#   $k$ items is one Gumbel variable) are sharper than the exactly-k distribution, as its
#   mean k-hot below shows, and its finite difference spans a step of $\lambda$.

# %%
theta_a, b_a = theta0[0].astype(jnp.float32), targets[0].astype(jnp.float32)
linear_f = lambda z: jnp.sum(b_a**2) + jnp.dot(1 - 2 * b_a, z)
simple_linear = jax.grad(
  lambda s: sj.expectation(linear_f, jax.random.key(0), s, k_s, estimator="simple")
)(theta_a)
print(
  "SIMPLE, one estimate, linear form of f: 1 - cos = "
  f"{float(1 - cosine(simple_linear.astype(jnp.float64), exact_grad['exactly_k'][0])):.1e}"
)
imle_draws = jax.vmap(lambda key: sj.imle_topk(key, theta_a, k_s))(
  jax.random.split(jax.random.key(1), num_estimates)
)
print("first seed, per item:")
print("  I-MLE mean k-hot:       ", np.round(np.asarray(imle_draws.mean(0)), 2))
print("  exactly_k_marginals:    ", np.round(np.asarray(sj.exactly_k_marginals(theta0[0], k_s)), 2))
print("  Gumbel-top-k inclusion: ", np.round(np.asarray(sj.inclusion_probs(theta0[0], k_s)), 2))

# %% [markdown]
# **Optimisation.** From each seed's $\theta$, 100 steps of SGD with momentum 0.9
# ($v \leftarrow 0.9 v + g$, $\theta \leftarrow \theta - \eta v$, as `optax.sgd(eta,
# momentum=0.9)`) with one gradient estimate per step (two draws for the score function).
# The optimality gap is the exact $\mathbb{E}[f]$ under the estimator's family minus
# $\min_S f(S)$. The learning rate $\eta$ of each estimator is the one of
# $\{0.01, 0.03, 0.1, 0.3, 1, 3, 10\}$ with the smallest final gap averaged over the 10 seeds (a
# run whose scores become non-finite counts as diverged).

# %%
learning_rates = jnp.asarray([0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0])
num_steps = 100
run_keys = jax.random.split(jax.random.key(11), len(seeds))


@functools.partial(jax.jit, static_argnames="static")
def sgd_paths(static, tau, lam):
  """The scores over the steps for every learning rate and seed: [lr, seed, step, n]."""

  def run(lr, theta, b, key):
    def step(carry, t):
      theta, velocity = carry
      grad = one_estimate(static, theta, b, jax.random.fold_in(key, t), tau, lam)
      velocity = 0.9 * velocity + grad
      theta = theta - lr * velocity
      return (theta, velocity), theta

    _, path = jax.lax.scan(step, (theta, jnp.zeros_like(theta)), jnp.arange(num_steps))
    return jnp.concatenate([theta[None], path])

  over_seeds = jax.vmap(run, in_axes=(None, 0, 0, 0))
  return jax.vmap(over_seeds, in_axes=(0, None, None, None))(
    learning_rates, theta0, targets, run_keys
  )


def gap(family, theta, b):
  return expected_f(family, theta, b) - min_f(b)


gaps = jax.jit(
  jax.vmap(jax.vmap(jax.vmap(gap, (None, 0, None)), (None, 0, 0)), (None, 0, None)),
  static_argnums=0,
)
curves, chosen, final_by_lr = {}, {}, {}
for label, family, static, tau, lam in STUDY:
  all_gaps = np.asarray(gaps(family, sgd_paths(static, tau, lam), targets))  # [lr, seed, step]
  final = np.where(np.isfinite(all_gaps[:, :, -1]), all_gaps[:, :, -1], np.inf)
  final_by_lr[label] = final.mean(1)
  best = int(np.argmin(final_by_lr[label]))
  chosen[label], curves[label] = float(learning_rates[best]), all_gaps[best]
print(f"{'estimator':<30} {'lr':>5} {'final gap':>17}   mean final gap at lr = 0.01 ... 10")
for label, curve in curves.items():
  by_lr = " ".join(f"{g:6.3f}" for g in final_by_lr[label])
  print(f"{label:<30} {chosen[label]:5.2f} {pm(curve[:, -1], 3):>17}   {by_lr}")
start = {family: curves[label][:, 0] for label, family, *_ in STUDY}
print(
  f"initial gap: exactly-k {pm(start['exactly_k'], 3)}, Gumbel-top-k {pm(start['gumbel_topk'], 3)}"
)

# %%
family_of = {label: family for label, family, *_ in STUDY}
fig, ax = plt.subplots(figsize=(7, 4.5))
for i, (label, curve) in enumerate(curves.items()):
  style = "--" if family_of[label] == "exactly_k" else "-"
  ax.plot(curve.mean(0), style, color=f"C{i}", label=f"{label} (lr {chosen[label]:g})")
ax.set(yscale="log", xlabel="step", ylabel="optimality gap, mean over seeds")
ax.set_title("SGD with momentum, one estimate per step (dashed: exactly-k family)", fontsize=9)
ax.legend(fontsize=7)
plt.show()

# %% [markdown]
# What the curves show (the gap starts near 4.9 on average):
#
# - Bias measured as the angle to the exact gradient does not rank the estimators for
#   optimisation. I-MLE at $\lambda = 2$, among the most biased, reaches the smallest gap:
#   its estimates are low-variance descent directions. At $\lambda = 10$ its estimate is
#   about four times smaller, and it wants the largest rate of the grid.
# - SIMPLE and the exactly-k score function come next; SIMPLE, with the lowest variance,
#   takes a large rate.
# - Of the Gumbel-top-k estimators, the score function and the relaxed estimator at
#   $\tau = 0.5$ end lowest. Straight-through reaches its lowest gap early and then rises
#   again: its bias moves the scores away from the best set. The relaxed estimator at
#   $\tau = 0.1$ makes little progress at any rate.
# - L2X does best at the smallest rate and worse at every larger one: its steps follow the
#   relaxation of draws with replacement, not the set distribution that the gap measures.

# %% [markdown]
# With `SUBSETS_JAX_WRITE_RESULTS=1` in the environment, the next cell also writes these
# numbers to `docs/results/estimator_study.md` and `.json`; otherwise it only switches
# float64 off again.

# %%
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402

if os.environ.get("SUBSETS_JAX_WRITE_RESULTS") == "1":
  lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
  cpu = next(
    (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
    platform.processor(),
  )
  today = datetime.date.today().isoformat()
  command = (
    "SUBSETS_JAX_WRITE_RESULTS=1 jupyter execute --inplace --timeout=900 "
    "notebooks/subset_sampling.ipynb"
  )
  results = pathlib.Path(sj.__file__).resolve().parents[1] / "docs" / "results"
  lr_list = [float(lr) for lr in learning_rates]
  record = {
    "command": command,
    "source": "executed by the tutorial notebook, section 7",
    "date": today,
    "cpu": cpu,
    "jax": jax.__version__,
    "n": n_s,
    "k": k_s,
    "seeds": seeds,
    "num_estimates": num_estimates,
    "num_steps": num_steps,
    "momentum": 0.9,
    "learning_rates": lr_list,
    "estimators": {},
  }
  for label, family, static, tau, lam in STUDY:
    s = stats[label]
    record["estimators"][label] = {
      "family": family,
      "options": dict(static),
      "tau": tau,
      "lam": lam,
      "bias": s["bias"].tolist(),
      "variance": s["variance"].tolist(),
      "mc_floor": s["floor"].tolist(),
      "zero_fraction": s["zero"].tolist(),
      "chosen_lr": chosen[label],
      "mean_final_gap_by_lr": [float(g) if np.isfinite(g) else None for g in final_by_lr[label]],
      "final_gap": curves[label][:, -1].tolist(),
      "mean_gap_curve": curves[label].mean(0).tolist(),
    }
  lines = [
    f"Executed by the tutorial notebook, section 7 (`{command}`); {today}; CPU: {cpu}; "
    f"JAX {jax.__version__}.",
    "",
    f"I-MLE's synthetic problem: n = {n_s}, k = {k_s}, f(z) = ||z - b||^2, theta ~ N(0, I), "
    f"b = |N(0, I)|; seeds {seeds}. Mean ± sd over the 10 seeds.",
    "",
    f"Bias and variance of {num_estimates:,} single estimates per seed against the exact "
    "gradient of the estimator's family (SIMPLE's measures); MC floor: the 1 - cos of an "
    "unbiased estimator with the same spread.",
    "",
    "| estimator | family | bias: 1 - cos(mean, exact) | variance of cos(single, mean) "
    "| MC floor | zero estimates |",
    "|---|---|---|---|---|---|",
  ]
  for label, family, *_ in STUDY:
    s = stats[label]
    lines.append(
      f"| {label} | {family} | {pm(s['bias'])} | {pm(s['variance'])} | "
      f"{s['floor'].mean():.4f} | {s['zero'].mean():.3f} |"
    )
  lines += [
    "",
    f"Optimality gap E[f] - min f after {num_steps} steps of SGD with momentum 0.9, one "
    f"estimate per step; learning rate chosen from {lr_list} by the mean final gap.",
    "",
    "| estimator | learning rate | final gap | mean final gap per learning rate |",
    "|---|---|---|---|",
  ]
  for label, *_ in STUDY:
    by_lr = ", ".join(f"{g:.3f}" for g in final_by_lr[label])
    lines.append(f"| {label} | {chosen[label]:g} | {pm(curves[label][:, -1], 3)} | {by_lr} |")
  (results / "estimator_study.md").write_text("\n".join(lines) + "\n")
  (results / "estimator_study.json").write_text(json.dumps(record, indent=1) + "\n")
jax.config.update("jax_enable_x64", False)
