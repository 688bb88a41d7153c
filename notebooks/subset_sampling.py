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
