// The relaxed top-k on CPU as one fused C++ kernel per row, called from JAX through the XLA
// FFI: `implementation="cpu_kernel"` of subsets_jax's `soft_topk` (see cpu_kernel.py, which
// compiles this file on first use). It runs the library's CPU form (relaxed_topk.py,
// `_carried_forward` / `_exact_forward` and `_block_backward`): the same carried
// e = exp(b - m), per-step scalars, dominant-item rules and analytic backward, with far fewer
// passes over each row than XLA:CPU's fusions need.
//
// Forward, per row of b = (scores - row max) / tau (computed here too): k steps, each ONE pass
// over the row for tau >= 1/16 (XLA:CPU needs three or more): the pass applies step j with the
// scalars gathered by the pass before (p = e / s, total += p, b += log(1 - p) / tau) and writes
// e = exp(b - m_next) for step j + 1 while summing it and taking its maximum. Below tau = 1/16
// a second pass per step shifts by the exact maximum. The dominant item's other weights and
// runner-up (rows with p_top > 1/2) take one extra pass, as under the library's `lax.cond`.
// Stores the library's per-step scalars [m, 1/s, log1m_top, inv_share] per row and step.
// Backward: replays the steps' p from those scalars (bitwise the forward's), in segments of at
// most 16 steps, and walks back with `_step_vjp`'s formulas, one pass per step (each pass
// applies step j and sums step j - 1's reductions, tau's term only when tau is differentiated).
// Rows are shared out over XLA's CPU thread pool, padded with excluded items to whole vectors,
// with subnormals flushed to zero as in XLA's own computations; with AVX-512, short rows
// (n <= 256, k <= 16, tau >= 1/16) go 16 at a time, one row per vector lane.
//
// Noise: JAX's threefry words for `gumbel_topk_relaxed`, and (GumbelPerturb) their Gumbel
// transform, written with the operations XLA:CPU compiles `log` to, added to the scores in
// the same pass; GumbelForward / GumbelBackward draw each row's noise inside the relaxation's
// own tasks.
//
// With AVX-512 (`-march=native` on such a CPU) the hot loops are written with intrinsics, 16
// items at a time: `exp` by a degree-7 polynomial and `vscalefps`, and for a block of 16 items
// that all have p < 1/64 (nearly all of them at large n) log(1 - p) and 1 / (1 - p) by short
// series instead of a division (forward 19 -> 11.6 ms at (100, 60000, 9)); a step whose
// largest p is below 1/64 (stored with its scalars) takes them without testing each block;
// elsewhere plain loops that the compiler vectorises. float32 only.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#ifdef __SSE__
#include <xmmintrin.h>
#endif

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr float kOthersFloor = 1e-28f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// From this tau on, the forward carries e with a shift bounded from the step's scalars
// (relaxed_topk.py, `_CARRIED_TAU_MIN`); below, each step takes the exact maximum.
constexpr float kCarriedTauMin = 1.0f / 16;

// exp(x) for x <= 0 (b - m with m >= max(b) up to rounding; -inf gives 0): 2^i * 2^f with a
// degree-7 polynomial for 2^f on [-1/2, 1/2]; written so that GCC vectorises the loops that
// call it. Taylor remainder below 6e-9, so a few ulps with rounding. (With degree 6, 1.2e-7,
// the tau gradient of a row with an overwhelming top item was off by 25x XLA's error; now 9x,
// 3e-4 of its value.) tests/test_cpu_kernel.py bounds the effect on values and gradients.
inline float fast_exp(float x) {
  x = std::max(x, -87.0f);  // below: 0 (flushed by the scale), and -inf stays finite here
  const float t = x * 1.44269504088896341f;
  const float i = std::nearbyint(t);
  const float f = t - i;  // [-1/2, 1/2]
  // 2^f = exp(f ln 2): Taylor coefficients of exp times powers of ln 2.
  float p = 1.5252733804059838e-5f;
  p = p * f + 1.5403530393381606e-4f;
  p = p * f + 1.3333558146428443e-3f;
  p = p * f + 9.6181291076284772e-3f;
  p = p * f + 5.5504108664821580e-2f;
  p = p * f + 2.4022650695910071e-1f;
  p = p * f + 6.9314718055994531e-1f;
  p = p * f + 1.0f;
  const int32_t bits = (static_cast<int32_t>(i) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return x <= -87.0f ? 0.0f : p * scale;
}

// The library's `_log1m`: log(1 - p) for 0 <= p <= 1/2 as -2 atanh(p / (2 - p)), odd series.
inline float log1m_series(float p) {
  const float z = p / (2.0f - p);
  const float z2 = z * z;
  float acc = 1.0f / 15.0f;
  acc = acc * z2 + 1.0f / 13.0f;
  acc = acc * z2 + 1.0f / 11.0f;
  acc = acc * z2 + 1.0f / 9.0f;
  acc = acc * z2 + 1.0f / 7.0f;
  acc = acc * z2 + 1.0f / 5.0f;
  acc = acc * z2 + 1.0f / 3.0f;
  acc = acc * z2 + 1.0f;
  return -2.0f * z * acc;
}

// b = (scores - row max) / tau, -inf kept: `_scaled_rows` for one row (its operations);
// b[n, padded_n) = -inf, excluded items that pad the row (see `padded`).
void scaled_row(const float* scores, float* b, int64_t n, int64_t padded_n, float tau) {
  float row_max = kNegInf;
#pragma omp simd reduction(max : row_max)
  for (int64_t i = 0; i < n; ++i) row_max = std::max(row_max, scores[i]);
  if (!std::isfinite(row_max)) row_max = 0.0f;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const bool alive = scores[i] > kNegInf;
    b[i] = alive ? ((alive ? scores[i] : 0.0f) - row_max) / tau : kNegInf;
  }
  std::fill(b + n, b + padded_n, kNegInf);
}

#ifdef __AVX512F__
// 16 lanes at a time, for blocks of 16 items; the scalar functions above do the row's tail.
// The forward and the backward's replay split rows the same way, so they stay bitwise equal.
constexpr int64_t kLanes = 16;

// Clamped at -150, where the scaling by 2^i gives exactly 0 (so -inf gives 0 without a mask);
// XLA's threads flush the subnormal results of (-104, -87) to 0 as well.
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-150.0f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  const __m512 i = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, i);
  // The polynomial in Estrin's form (pairs, then f^2 and f^4) rather than Horner's: a chain
  // of 4 dependent multiply-adds instead of 7. The passes are bound by such chains: forward
  // and backward 355 / 351 -> 320 / 323 ns per row and step at n = 1,008 (with the passes
  // unrolled twice), one thread.
  const auto c = [](float v) { return _mm512_set1_ps(v); };
  const __m512 f2 = _mm512_mul_ps(f, f), f4 = _mm512_mul_ps(f2, f2);
  const __m512 p01 = _mm512_fmadd_ps(c(6.9314718055994531e-1f), f, c(1.0f));
  const __m512 p23 = _mm512_fmadd_ps(c(5.5504108664821580e-2f), f, c(2.4022650695910071e-1f));
  const __m512 p45 = _mm512_fmadd_ps(c(1.3333558146428443e-3f), f, c(9.6181291076284772e-3f));
  const __m512 p67 = _mm512_fmadd_ps(c(1.5252733804059838e-5f), f, c(1.5403530393381606e-4f));
  const __m512 low = _mm512_fmadd_ps(p23, f2, p01), high = _mm512_fmadd_ps(p67, f2, p45);
  return _mm512_scalef_ps(_mm512_fmadd_ps(high, f4, low), i);
}

// log(1 - p) for 16 items that all have p < 1/64 (nearly all blocks at large n):
// -p (1 + p/2 + p^2/3 + p^3/4), relative error below p^4 / 5 < 1.2e-8 (float32's half ulp is
// 6e-8), instead of a division and the atanh series.
inline __m512 log1m16_small(__m512 p) {
  __m512 acc = _mm512_fmadd_ps(_mm512_set1_ps(-0.25f), p, _mm512_set1_ps(-1.0f / 3.0f));
  acc = _mm512_fmadd_ps(acc, p, _mm512_set1_ps(-0.5f));
  acc = _mm512_fmadd_ps(acc, p, _mm512_set1_ps(-1.0f));
  return _mm512_mul_ps(p, acc);
}

// log(1 - p) for 16 items; p > 1/2 (the dominant item) gives `log1m_top` (its lane's). Blocks
// with every p < 1/64 take the short series above.
inline __m512 log1m16(__m512 p, __m512 log1m_top) {
  const __mmask16 small = _mm512_cmp_ps_mask(p, _mm512_set1_ps(1.0f / 64), _CMP_LT_OQ);
  if (small == 0xFFFF) return log1m16_small(p);
  const __mmask16 dom = _mm512_cmp_ps_mask(p, _mm512_set1_ps(0.5f), _CMP_GT_OQ);
  const __m512 q = _mm512_maskz_mov_ps(~dom, p);
  const __m512 z = _mm512_div_ps(q, _mm512_sub_ps(_mm512_set1_ps(2.0f), q));
  const __m512 z2 = _mm512_mul_ps(z, z);
  __m512 acc = _mm512_set1_ps(1.0f / 15.0f);
  acc = _mm512_fmadd_ps(acc, z2, _mm512_set1_ps(1.0f / 13.0f));
  acc = _mm512_fmadd_ps(acc, z2, _mm512_set1_ps(1.0f / 11.0f));
  acc = _mm512_fmadd_ps(acc, z2, _mm512_set1_ps(1.0f / 9.0f));
  acc = _mm512_fmadd_ps(acc, z2, _mm512_set1_ps(1.0f / 7.0f));
  acc = _mm512_fmadd_ps(acc, z2, _mm512_set1_ps(1.0f / 5.0f));
  acc = _mm512_fmadd_ps(acc, z2, _mm512_set1_ps(1.0f / 3.0f));
  acc = _mm512_fmadd_ps(acc, z2, _mm512_set1_ps(1.0f));
  const __m512 l = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(-2.0f), z), acc);
  return _mm512_mask_mov_ps(l, dom, log1m_top);
}

// log(1 - p) for a step whose every p is below 1/64 (std::true_type: no test per block) or
// not known to be (std::false_type).
inline __m512 log1m16(__m512 p, __m512, std::true_type) { return log1m16_small(p); }
inline __m512 log1m16(__m512 p, __m512 log1m_top, std::false_type) {
  return log1m16(p, log1m_top);
}

// 1 / (1 - p) for 16 items that all have p < 1/64: 1 + p + ... + p^4, relative error below
// p^5 < 1e-9.
inline __m512 inv1m16_small(__m512 p) {
  __m512 acc = _mm512_fmadd_ps(p, p, p);
  acc = _mm512_fmadd_ps(acc, p, p);
  acc = _mm512_fmadd_ps(acc, p, p);
  return _mm512_add_ps(acc, _mm512_set1_ps(1.0f));
}

// 1 / (1 - p) for 16 items that are not dominant (p <= 1/2); blocks with every p < 1/64 take
// the series above.
inline __m512 inv1m16(__m512 p) {
  const __mmask16 small = _mm512_cmp_ps_mask(p, _mm512_set1_ps(1.0f / 64), _CMP_LT_OQ);
  if (small == 0xFFFF) return inv1m16_small(p);
  return _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_sub_ps(_mm512_set1_ps(1.0f), p));
}
#else
constexpr int64_t kLanes = 0;  // no vector path: the scalar loops do whole rows
#endif

// fn(std::true_type{}) when `flag`, else fn(std::false_type{}): a loop body compiled for both
// outcomes of a test that holds for the whole loop.
template <typename F>
inline void with_flag(bool flag, F&& fn) {
  if (flag) {
    fn(std::true_type{});
  } else {
    fn(std::false_type{});
  }
}

#ifdef __AVX512F__
// The vector passes shared by the row kernel (a row's blocks of 16 items, the step's scalars
// broadcast) and the short-row kernel (16 rows item by item, one row's scalar per lane): the
// same operations on `count` floats either way, so both replay their forward bitwise. Each
// loop is unrolled twice, which puts more independent blocks in flight (forward 364 -> 355 ns
// per row and step at n = 1,008, one thread).

// Applies a step: p = e inv_s, total += p, b += log(1 - p) / tau. Carried: writes the next
// step's e = exp(b - m_next), adding it to *s and taking its maximum into *e_max; otherwise
// takes b's maximum into *b_max.
template <bool kCarried, typename AllSmall>
inline void step_pass16(float* b, float* e, float* total, int64_t count, __m512 inv_s,
                        __m512 log1m_top, __m512 inv_tau, __m512 m_next, AllSmall all_small,
                        __m512* s, __m512* e_max, __m512* b_max) {
#pragma GCC unroll 2
  for (int64_t i = 0; i < count; i += kLanes) {
    const __m512 p = _mm512_mul_ps(_mm512_loadu_ps(e + i), inv_s);
    _mm512_storeu_ps(total + i, _mm512_add_ps(_mm512_loadu_ps(total + i), p));
    const __m512 l = log1m16(p, log1m_top, all_small);
    const __m512 bn = _mm512_fmadd_ps(l, inv_tau, _mm512_loadu_ps(b + i));
    _mm512_storeu_ps(b + i, bn);
    if constexpr (kCarried) {
      const __m512 en = exp16(_mm512_sub_ps(bn, m_next));
      _mm512_storeu_ps(e + i, en);
      *s = _mm512_add_ps(*s, en), *e_max = _mm512_max_ps(*e_max, en);
    } else {
      *b_max = _mm512_max_ps(*b_max, bn);
    }
  }
}

// Replays a step on b from its scalars (bitwise the forward's p); stores p when `p_out`.
template <typename AllSmall>
inline void replay_pass16(float* b, float* p_out, int64_t count, __m512 m, __m512 inv_s,
                          __m512 log1m_top, __m512 inv_tau, AllSmall all_small) {
#pragma GCC unroll 2
  for (int64_t i = 0; i < count; i += kLanes) {
    const __m512 bv = _mm512_loadu_ps(b + i);
    const __m512 pi = _mm512_mul_ps(exp16(_mm512_sub_ps(bv, m)), inv_s);
    if (p_out) _mm512_storeu_ps(p_out + i, pi);
    const __m512 l = log1m16(pi, log1m_top, all_small);
    _mm512_storeu_ps(b + i, _mm512_fmadd_ps(l, inv_tau, bv));
  }
}

// The backward walk's pass for step j (see backward_row): b_bar += step j's VJP, then step
// j - 1's t = g / (1 - p_prev) (0 for its dominant item) and its sums <p_prev, total_bar - t>,
// g over its dominant item and, when `want_tau`, <g, log(1 - p_prev)>, added to the last three.
template <typename WantTau, typename PrevSmall>
inline void walk_pass16(const float* p, const float* p_prev, const float* total_bar, float* t,
                        float* b_bar, int64_t count, __m512 share_m1, __m512 top_term,
                        __m512 softmax_dot, __m512 inv_tau, __m512 log1m_top_prev, WantTau,
                        PrevSmall, __m512* dot_prev, __m512* g_top_prev, __m512* tau_prev) {
  const __m512 half = _mm512_set1_ps(0.5f), minus1 = _mm512_set1_ps(-1.0f);
#pragma GCC unroll 2
  for (int64_t i = 0; i < count; i += kLanes) {
    const __m512 pv = _mm512_loadu_ps(p + i), tb = _mm512_loadu_ps(total_bar + i);
    const __mmask16 dom = _mm512_cmp_ps_mask(pv, half, _CMP_GT_OQ);
    const __m512 p_bar = _mm512_sub_ps(tb, _mm512_loadu_ps(t + i));
    const __m512 coef = _mm512_mask_mov_ps(share_m1, dom, minus1);
    const __m512 inner = _mm512_fmadd_ps(top_term, coef, _mm512_sub_ps(p_bar, softmax_dot));
    const __m512 bb = _mm512_fmadd_ps(pv, inner, _mm512_loadu_ps(b_bar + i));
    _mm512_storeu_ps(b_bar + i, bb);
    const __m512 g = _mm512_mul_ps(bb, inv_tau);
    const __m512 pp = _mm512_loadu_ps(p_prev + i);
    __m512 t_prev;
    if constexpr (PrevSmall::value) {
      t_prev = _mm512_mul_ps(g, inv1m16_small(pp));
      if constexpr (WantTau::value) *tau_prev = _mm512_fmadd_ps(g, log1m16_small(pp), *tau_prev);
    } else {
      const __mmask16 dom_prev = _mm512_cmp_ps_mask(pp, half, _CMP_GT_OQ);
      t_prev = _mm512_maskz_mul_ps(~dom_prev, g, inv1m16(_mm512_maskz_mov_ps(~dom_prev, pp)));
      *g_top_prev = _mm512_mask_add_ps(*g_top_prev, dom_prev, *g_top_prev, g);
      if constexpr (WantTau::value)
        *tau_prev = _mm512_fmadd_ps(g, log1m16(pp, log1m_top_prev), *tau_prev);
    }
    _mm512_storeu_ps(t + i, t_prev);
    *dot_prev = _mm512_fmadd_ps(pp, _mm512_sub_ps(tb, t_prev), *dot_prev);
  }
}
#endif

// Floats stored per row and step: the scalars below, then the step's largest p (e_max / s),
// which lets the backward's passes skip the per-block tests when every p is small.
constexpr int64_t kAux = 5;

struct StepScalars {
  float m, inv_s, log1m_top, inv_share;
};

// The scalars of one step from e = exp(b - m): `_shifted_step` for one row; returns m_next.
float step_scalars(const float* b, const float* e, int64_t n, float m, float s, float e_max,
                   float tau, StepScalars* out) {
  const float inv_s = 1.0f / (s > 0.0f ? s : 1.0f);
  const bool dominant = e_max * inv_s > 0.5f;
  const float log_e_max = std::log(e_max > 0.0f ? e_max : 1.0f);
  const float top = m + log_e_max;
  if (!dominant) {
    // No item has p > 1/2, so log1m_top and inv_share are never used (they serve the dominant
    // item, and the backward scales inv_share by g_top = 0): their values, log(s / s) = 0
    // and 1, without the two logs and the exp (most of the per-row cost at small n).
    *out = {m, inv_s, 0.0f, 1.0f};
    return e_max > 0.0f ? top : m;
  }
  float others = 0.0f, runner_up = kNegInf;
  int64_t i = 0;
#ifdef __AVX512F__
  {
    // 16 partial sums instead of one dependent add per item (the scalar loop below).
    __m512 vothers = _mm512_setzero_ps(), vrunner = _mm512_set1_ps(kNegInf);
    const __m512 vtop = _mm512_set1_ps(e_max);
    for (; i + kLanes <= n; i += kLanes) {
      const __m512 ev = _mm512_loadu_ps(e + i);
      const __mmask16 rest = _mm512_cmp_ps_mask(ev, vtop, _CMP_NEQ_UQ);
      vothers = _mm512_mask_add_ps(vothers, rest, vothers, ev);
      vrunner = _mm512_mask_max_ps(vrunner, rest, vrunner, _mm512_loadu_ps(b + i));
    }
    others = _mm512_reduce_add_ps(vothers), runner_up = _mm512_reduce_max_ps(vrunner);
  }
#endif
  for (; i < n; ++i) {
    if (e[i] != e_max) {
      others += e[i];
      runner_up = std::max(runner_up, b[i]);
    }
  }
  const bool use_log = others > kOthersFloor * e_max;
  const bool needs_gap = !use_log && s < 2.0f * e_max && std::isfinite(runner_up);
  const float gap = needs_gap ? runner_up - top : 0.0f;
  const float log_others = use_log ? std::log(others) : gap + log_e_max;
  const float log1m_top = log_others + std::log(inv_s);
  *out = {m, inv_s, log1m_top, use_log ? std::exp(-log1m_top) : 0.0f};
  const float m_next = std::max(top + log1m_top / tau, runner_up);
  return e_max > 0.0f ? m_next : m;
}

// `_row_max`: the row's maximum, 0 when it is not finite (a row of -inf).
float row_max(const float* b, int64_t n) {
  float m = kNegInf;
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = std::max(m, b[i]);
  return std::isfinite(m) ? m : 0.0f;
}

// e = exp(b - m) over the row; returns its sum and maximum.
void exp_pass(const float* b, float* e, int64_t n, float m, float* s_out, float* e_max_out) {
  float s = 0.0f, e_max = 0.0f;
  const int64_t vec_end = kLanes ? n / kLanes * kLanes : 0;
#ifdef __AVX512F__
  {
    __m512 vs = _mm512_setzero_ps(), vmax = _mm512_setzero_ps();
    const __m512 vm = _mm512_set1_ps(m);
    for (int64_t i = 0; i < vec_end; i += kLanes) {
      const __m512 ev = exp16(_mm512_sub_ps(_mm512_loadu_ps(b + i), vm));
      _mm512_storeu_ps(e + i, ev);
      vs = _mm512_add_ps(vs, ev);
      vmax = _mm512_max_ps(vmax, ev);
    }
    s = _mm512_reduce_add_ps(vs), e_max = _mm512_reduce_max_ps(vmax);
  }
#endif
  for (int64_t i = vec_end; i < n; ++i) {
    e[i] = fast_exp(b[i] - m);
    s += e[i];
    e_max = std::max(e_max, e[i]);
  }
  *s_out = s, *e_max_out = e_max;
}

// One row's forward. b: the row (overwritten), e: scratch, total: output, aux: [k, kAux].
// tau >= kCarriedTauMin: `_carried_forward`, one pass per step (apply step j, write step
// j + 1's e = exp(b - m_next) with the shift bounded from step j's scalars, sum it and take its
// maximum). Below: `_exact_forward`, a second pass per step after the row's exact maximum.
void forward_row(float* b, float* e, float* total, int64_t n, int64_t k, float tau, float* aux) {
  const bool carried = tau >= kCarriedTauMin;
  float m = row_max(b, n), s, e_max;
  exp_pass(b, e, n, m, &s, &e_max);
  std::fill(total, total + n, 0.0f);
  const int64_t vec_end = kLanes ? n / kLanes * kLanes : 0;
  const float inv_tau = 1.0f / tau;
  for (int64_t j = 0; j < k; ++j) {
    StepScalars sc;
    float m_next = step_scalars(b, e, n, m, s, e_max, tau, &sc);
    float* a = aux + j * kAux;
    a[0] = sc.m, a[1] = sc.inv_s, a[2] = sc.log1m_top, a[3] = sc.inv_share;
    a[4] = e_max * sc.inv_s;
    if (j == k - 1) {  // the last step's b and e are not needed
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) total[i] += e[i] * sc.inv_s;
      break;
    }
    const float inv_s = sc.inv_s, log1m_top = sc.log1m_top;
    float s_next = 0.0f, e_max_next = 0.0f, b_max = kNegInf;
#ifdef __AVX512F__
    {
      __m512 vs = _mm512_setzero_ps(), vmax = _mm512_setzero_ps();
      __m512 vb_max = _mm512_set1_ps(kNegInf);
      const __m512 vinv_s = _mm512_set1_ps(inv_s), vinv_tau = _mm512_set1_ps(inv_tau);
      const __m512 vm = _mm512_set1_ps(m_next), vlog1m_top = _mm512_set1_ps(log1m_top);
      // `all_small`: every p of the row is below 1/64 (its largest, e_max / s, is), so each
      // block takes the short series without testing (the same values the test would give).
      with_flag(carried, [&](auto carry) {
        with_flag(e_max * inv_s < 1.0f / 64, [&](auto all_small) {
          step_pass16<decltype(carry)::value>(b, e, total, vec_end, vinv_s, vlog1m_top, vinv_tau,
                                              vm, all_small, &vs, &vmax, &vb_max);
        });
      });
      s_next = _mm512_reduce_add_ps(vs), e_max_next = _mm512_reduce_max_ps(vmax);
      b_max = _mm512_reduce_max_ps(vb_max);
    }
#endif
    for (int64_t i = vec_end; i < n; ++i) {
      const float p = e[i] * inv_s;
      total[i] += p;
      const bool dom = p > 0.5f;
      const float l = dom ? log1m_top : log1m_series(dom ? 0.0f : p);
      const float bn = b[i] + l * inv_tau;
      b[i] = bn;
      if (carried) {
        const float en = fast_exp(bn - m_next);
        e[i] = en;
        s_next += en;
        e_max_next = std::max(e_max_next, en);
      } else {
        b_max = std::max(b_max, bn);
      }
    }
    if (!carried) {
      m_next = std::isfinite(b_max) ? b_max : 0.0f;
      exp_pass(b, e, n, m_next, &s_next, &e_max_next);
    }
    m = m_next, s = s_next, e_max = e_max_next;
  }
}

// Replays step j on b from its scalars (bitwise the forward's p); stores p when `p_out`.
void replay_step(float* b, float* p_out, int64_t n, float inv_tau, const float* a) {
  const float m = a[0], inv_s = a[1], log1m_top = a[2];
  const int64_t vec_end = kLanes ? n / kLanes * kLanes : 0;
#ifdef __AVX512F__
  {
    const __m512 vm = _mm512_set1_ps(m), vinv_s = _mm512_set1_ps(inv_s);
    const __m512 vinv_tau = _mm512_set1_ps(inv_tau);
    // As in the forward: with every p below 1/64 no block needs testing.
    with_flag(a[4] < 1.0f / 64, [&](auto all_small) {
      replay_pass16(b, p_out, vec_end, vm, vinv_s, _mm512_set1_ps(log1m_top), vinv_tau,
                    all_small);
    });
  }
#endif
  for (int64_t i = vec_end; i < n; ++i) {
    const float pi = fast_exp(b[i] - m) * inv_s;
    if (p_out) p_out[i] = pi;
    const bool dom = pi > 0.5f;
    b[i] += (dom ? log1m_top : log1m_series(dom ? 0.0f : pi)) * inv_tau;
  }
}

// The backward's segments (as `_block_backward`): at most kSegment steps' p are held.
constexpr int64_t kSegment = 16;

struct Segments {
  int64_t length, count;
  // `length` is declared, hence initialised, before `count`.
  explicit Segments(int64_t k) : length(std::min(k, kSegment)), count((k + length - 1) / length) {}
  // Floats of scratch per row: b0, b, t, the later segments' start states, length + 1 p's.
  int64_t scratch(int64_t n) const { return (3 + (count - 1) + length + 1) * n; }
};

// One row's backward: b0 row, total_bar row -> b0_bar (= d/d b0, in b_bar) and, when
// `tau_grad`, the row's sum of the steps' tau terms, sum_j <g_j, log(1 - p_j)> with
// g_j = b_{j+1}_bar / tau (else 0: without them the walk takes no log(1 - p)).
// Segment s covers steps [s L, (s + 1) L); a forward replay keeps the state before step
// s L - 1 for s >= 1, and each segment, last first, is replayed from there into its steps' p
// (one step early: the walk's pass for step j needs step j - 1's p) and walked backwards.
// Walk: t = g / (1 - p) (0 for the dominant item) is kept from the pass that sums step j's
// <p, p_bar> and g_top to the pass that applies step j; that pass also computes step j - 1's
// t and sums: one pass and one division (or short series) per element and step.
double backward_row(const float* b0, const float* total_bar, float* b_bar, int64_t n, int64_t k,
                   float tau, bool tau_grad, const float* aux, float* scratch) {
  const float inv_tau = 1.0f / tau;
  const int64_t vec_end = kLanes ? n / kLanes * kLanes : 0;
  const Segments seg(k);
  float* b = scratch;
  float* t = b + n;
  float* starts = t + n;  // segment s >= 1 at starts + (s - 1) n
  float* ps = starts + (seg.count - 1) * n;
  if (seg.count > 1) {
    std::memcpy(b, b0, n * sizeof(float));
    for (int64_t j = 0; j < (seg.count - 1) * seg.length - 1; ++j) {
      if ((j + 1) % seg.length == 0) std::memcpy(starts + (j / seg.length) * n, b, n * sizeof(float));
      replay_step(b, nullptr, n, inv_tau, aux + j * kAux);
    }
    // The last start (before step (count - 1) L - 1) once that step is reached.
    std::memcpy(starts + (seg.count - 2) * n, b, n * sizeof(float));
  }
  std::fill(b_bar, b_bar + n, 0.0f);
  float dot = 0.0f, g_top = 0.0f;
  double tau_sum = 0.0;
  for (int64_t sgi = seg.count - 1; sgi >= 0; --sgi) {
    const int64_t first = sgi * seg.length, end = std::min(k, first + seg.length);
    const int64_t base = sgi > 0 ? first - 1 : 0;  // ps[0] holds step `base`'s p
    std::memcpy(b, sgi > 0 ? starts + (sgi - 1) * n : b0, n * sizeof(float));
    for (int64_t j = base; j < end; ++j)
      replay_step(b, ps + (j - base) * n, n, inv_tau, aux + j * kAux);
    if (sgi == seg.count - 1) {
      const float* p = ps + (k - 1 - base) * n;
#pragma omp simd reduction(+ : dot)
      for (int64_t i = 0; i < n; ++i) {
        t[i] = 0.0f;  // b_bar = 0 after the last step
        dot += p[i] * total_bar[i];
      }
    }
    for (int64_t j = end - 1; j >= first; --j) {
      const float inv_share = aux[j * kAux + 3];
      const float log1m_top_prev = j > 0 ? aux[(j - 1) * kAux + 2] : 0.0f;
      const bool prev_all_small = j > 0 && aux[(j - 1) * kAux + 4] < 1.0f / 64;
      const float* p = ps + (j - base) * n;
      const float* p_prev = ps + (j > 0 ? j - 1 - base : 0) * n;
      const float top_term = g_top, softmax_dot = dot;
      float dot_prev = 0.0f, g_top_prev = 0.0f, tau_prev = 0.0f;
#ifdef __AVX512F__
      {
        __m512 vdot_prev = _mm512_setzero_ps(), vg_top_prev = _mm512_setzero_ps();
        __m512 vtau_prev = _mm512_setzero_ps();
        // `prev_small`: every p of step j - 1 is below 1/64, so it has no dominant item and
        // each block takes the short series without testing.
        with_flag(tau_grad, [&](auto want_tau) {
          with_flag(prev_all_small, [&](auto prev_small) {
            walk_pass16(p, p_prev, total_bar, t, b_bar, vec_end, _mm512_set1_ps(inv_share - 1.0f),
                        _mm512_set1_ps(top_term), _mm512_set1_ps(softmax_dot),
                        _mm512_set1_ps(inv_tau), _mm512_set1_ps(log1m_top_prev), want_tau,
                        prev_small, &vdot_prev, &vg_top_prev, &vtau_prev);
          });
        });
        dot_prev = _mm512_reduce_add_ps(vdot_prev), g_top_prev = _mm512_reduce_add_ps(vg_top_prev);
        tau_prev = _mm512_reduce_add_ps(vtau_prev);
      }
#endif
      for (int64_t i = vec_end; i < n; ++i) {
        const bool dom = p[i] > 0.5f;
        const float p_bar = total_bar[i] - t[i];
        const float bb =
            b_bar[i] + p[i] * (p_bar - softmax_dot + top_term * ((dom ? 0.0f : inv_share) - 1.0f));
        b_bar[i] = bb;
        // Step j - 1's terms from the new b_bar (unused after step 0).
        const float g = bb * inv_tau;
        const bool dom_prev = p_prev[i] > 0.5f;
        const float t_prev = dom_prev ? 0.0f : g / (1.0f - p_prev[i]);
        t[i] = t_prev;
        dot_prev += p_prev[i] * (total_bar[i] - t_prev);
        g_top_prev += dom_prev ? g : 0.0f;
        if (tau_grad) tau_prev += g * (dom_prev ? log1m_top_prev : log1m_series(p_prev[i]));
      }
      dot = dot_prev, g_top = g_top_prev;
      if (j > 0) tau_sum += tau_prev;
    }
  }
  return tau_sum;
}

// Scratch buffers kept between calls: fresh ones would be page-faulted in on every call.
// `bytes()` is what the pool holds (the kernel's memory beyond XLA's buffers).
class ScratchPool {
 public:
  std::unique_ptr<std::vector<float>> take(int64_t size) {
    std::unique_ptr<std::vector<float>> buf;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!free_.empty()) {
        buf = std::move(free_.back());
        free_.pop_back();
      }
    }
    if (!buf) buf = std::make_unique<std::vector<float>>();
    if (static_cast<int64_t>(buf->size()) < size) {
      const int64_t grown = size - static_cast<int64_t>(buf->size());
      buf->resize(size);
      bytes_.fetch_add(grown * static_cast<int64_t>(sizeof(float)));
    }
    return buf;
  }
  void give(std::unique_ptr<std::vector<float>> buf) {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(std::move(buf));
  }
  int64_t bytes() const { return bytes_.load(); }

 private:
  std::mutex mu_;
  std::vector<std::unique_ptr<std::vector<float>>> free_;
  std::atomic<int64_t> bytes_{0};
};

ScratchPool& scratch_pool() {
  static ScratchPool* pool = new ScratchPool();
  return *pool;
}

// Flushes subnormal floats to zero (inputs and results) while in scope, as XLA:CPU does for
// its own computations. Without it the handlers ran at the calling thread's setting: the
// short log(1 - p) series of tiny p makes subnormals, and at (100, 1000, 9) the forward took
// 422 instead of 230 us when called from a thread that kept them (x86; a no-op elsewhere).
class DenormalsAreZero {
#ifdef __SSE__
 public:
  DenormalsAreZero() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }  // FTZ | DAZ
  ~DenormalsAreZero() { _mm_setcsr(saved_); }

 private:
  unsigned int saved_;
#endif
};

// fn(row, scratch) for every row, on XLA's CPU thread pool and the calling thread; each
// participant holds `scratch_size` floats from the pool. Rows are claimed one at a time from
// an atomic counter, and the caller waits for rows done, not for tasks: a task that starts
// late finds no row left and touches nothing but the shared counters.
template <typename F>
void parallel_rows(ffi::ThreadPool& pool, int64_t rows, int64_t work_per_row,
                   int64_t scratch_size, F& fn) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto state = std::make_shared<State>();
  auto work = [state, rows, scratch_size, fnp = &fn]() {
    DenormalsAreZero ftz;
    std::unique_ptr<std::vector<float>> scratch;
    for (int64_t r; (r = state->next.fetch_add(1)) < rows;) {
      if (!scratch) scratch = scratch_pool().take(scratch_size);
      (*fnp)(r, scratch->data());
      state->done.fetch_add(1, std::memory_order_release);
    }
    if (scratch) scratch_pool().give(std::move(scratch));
  };
  // The caller is one of the participants: with as many helpers as the pool has threads, one
  // more thread than cores ran on 2 cores, and a row held by a thread that had been switched
  // out kept everyone waiting (at (100, 1000, 9) the noisy forward+backward: 0.58-0.59 ms with
  // one helper, 0.64-0.94 ms with two).
  int64_t helpers = std::min<int64_t>(pool.num_threads() - 1, rows - 1);
  // Small problems stay on the calling thread.
  if (rows * work_per_row < (int64_t{1} << 16)) helpers = 0;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(work)(work));
  work();
  while (state->done.load(std::memory_order_acquire) < rows) std::this_thread::yield();
}

// Rows are processed at a whole number of vectors: a row of n items is padded with excluded
// items (-inf, which get p = 0 and gradient 0 exactly) to a multiple of kLanes, so that no pass
// runs a scalar tail (at n = 111 the 15 tail items cost as much as the 7 vector blocks:
// forward+backward 1.92 against 1.00 ms for n = 112, 1000 rows, k = 9).
inline int64_t padded(int64_t n) { return kLanes ? (n + kLanes - 1) / kLanes * kLanes : n; }

// Shapes shared by both handlers: scores [..., n] as rows of n, and tau of T elements, one
// per group of rows / T consecutive rows (T = 1, or a vmapped tau: `broadcast_all` batching
// puts the batch axes first on every operand).
struct Layout {
  int64_t rows = 1, n = 0, rows_per_tau = 1;
};

ffi::Error layout(ffi::AnyBuffer::Dimensions dims, int64_t tau_size, int64_t k, Layout* out) {
  if (dims.size() < 1) return ffi::Error::InvalidArgument("scores must have an item axis");
  out->n = dims.back();
  for (size_t d = 0; d + 1 < dims.size(); ++d) out->rows *= dims[d];
  if (k < 1 || k > out->n) return ffi::Error::InvalidArgument("k must satisfy 1 <= k <= n");
  if (tau_size < 1 || out->rows % tau_size)
    return ffi::Error::InvalidArgument("tau must have one element per group of rows");
  out->rows_per_tau = out->rows / tau_size;
  return ffi::Error::Success();
}

#ifdef __AVX512F__
// Short rows, 16 at a time. A row of n = 100 items is 7 vectors, and each step's fixed costs
// (the step's scalars, three horizontal reductions, a test per block) took about half of the
// forward's time at (100, 100, 9). For rows of at most kShortMax items (k <= kSegment, every
// tau >= kCarriedTauMin) the forward and backward instead run 16 rows at once, one per lane:
// a group's rows are transposed into [n][16] scratch, vector i holding item i of all 16 rows,
// so that every pass and reduction is the row kernel's, lane by lane, with no horizontal
// work, and the step's scalars are its formulas on vectors (their logs by the Gumbel
// transform's vector `log`). Lanes past the last row hold rows of -inf (p = 0 everywhere).
// The backward replays the forward's p bitwise, as the row kernel's. Up to 256 items: at 512
// the two layouts were even once the transposes are counted, at 1,000 the short one's
// backward (k arrays of 16 rows) no longer stayed in cache.
constexpr int64_t kShortMax = 256;

inline __m512 xla_log16(__m512 v);  // defined with the Gumbel transform below

struct ShortScalars {
  __m512 m, inv_s, log1m_top, inv_share;
};

inline __m512 finite_or_zero(__m512 v) {
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, _mm512_set1_ps(kNegInf), _CMP_NEQ_OQ), v);
}

// `step_scalars` for 16 rows, lane by lane (b, e: [n][16]); returns m_next.
__m512 step_scalars16(const float* b, const float* e, int64_t n, __m512 m, __m512 s,
                      __m512 e_max, __m512 tau, ShortScalars* out) {
  const __m512 one = _mm512_set1_ps(1.0f), zero = _mm512_setzero_ps();
  const __m512 inv_s =
      _mm512_div_ps(one, _mm512_mask_mov_ps(one, _mm512_cmp_ps_mask(s, zero, _CMP_GT_OQ), s));
  const __mmask16 dominant =
      _mm512_cmp_ps_mask(_mm512_mul_ps(e_max, inv_s), _mm512_set1_ps(0.5f), _CMP_GT_OQ);
  const __mmask16 e_pos = _mm512_cmp_ps_mask(e_max, zero, _CMP_GT_OQ);
  const __m512 log_e_max = xla_log16(_mm512_mask_mov_ps(one, e_pos, e_max));
  const __m512 top = _mm512_add_ps(m, log_e_max);
  *out = {m, inv_s, zero, one};
  if (!dominant) return _mm512_mask_mov_ps(m, e_pos, top);
  __m512 others = zero, runner_up = _mm512_set1_ps(kNegInf);
  for (int64_t i = 0; i < n; ++i) {
    const __m512 ev = _mm512_loadu_ps(e + i * kLanes);
    const __mmask16 rest = _mm512_cmp_ps_mask(ev, e_max, _CMP_NEQ_UQ);
    others = _mm512_mask_add_ps(others, rest, others, ev);
    runner_up = _mm512_mask_max_ps(runner_up, rest, runner_up, _mm512_loadu_ps(b + i * kLanes));
  }
  const __mmask16 use_log =
      _mm512_cmp_ps_mask(others, _mm512_mul_ps(_mm512_set1_ps(kOthersFloor), e_max), _CMP_GT_OQ);
  const __mmask16 needs_gap =
      ~use_log & _mm512_cmp_ps_mask(s, _mm512_mul_ps(_mm512_set1_ps(2.0f), e_max), _CMP_LT_OQ) &
      _mm512_cmp_ps_mask(runner_up, _mm512_set1_ps(kNegInf), _CMP_NEQ_OQ);
  const __m512 gap = _mm512_maskz_mov_ps(needs_gap, _mm512_sub_ps(runner_up, top));
  const __m512 log_others = _mm512_mask_mov_ps(_mm512_add_ps(gap, log_e_max), use_log,
                                               xla_log16(_mm512_mask_mov_ps(one, use_log, others)));
  const __m512 log1m_top = _mm512_add_ps(log_others, xla_log16(inv_s));
  const __m512 inv_share = _mm512_maskz_mov_ps(use_log, exp16(_mm512_sub_ps(zero, log1m_top)));
  out->log1m_top = _mm512_maskz_mov_ps(dominant, log1m_top);
  out->inv_share = _mm512_mask_mov_ps(one, dominant, inv_share);
  const __m512 m_next = _mm512_max_ps(_mm512_add_ps(top, _mm512_div_ps(log1m_top, tau)), runner_up);
  return _mm512_mask_mov_ps(m, e_pos, _mm512_mask_mov_ps(top, dominant, m_next));
}

// Lanes 0-7 (half 0) or 8-15 (half 1) of v in double (AVX-512F alone, no DQ extract).
inline __m512d widen_half(__m512 v, int half) {
  return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), half)));
}

// Lane l of 16 rows' aux, [16][k][kAux]: float c of step j, as a vector.
inline __m512 aux_lanes(const float* aux, int64_t k, int64_t j, int c) {
  const __m512i rows = _mm512_mullo_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
      _mm512_set1_epi32(static_cast<int>(k * kAux)));
  return _mm512_i32gather_ps(rows, aux + j * kAux + c, 4);
}

inline void store_aux_lanes(float* aux, int64_t k, int64_t j, int c, __m512 v) {
  alignas(64) float lanes[kLanes];
  _mm512_store_ps(lanes, v);
  for (int64_t l = 0; l < kLanes; ++l) aux[l * k * kAux + j * kAux + c] = lanes[l];
}

inline bool all_below(__m512 v, float bound) {
  return _mm512_cmp_ps_mask(v, _mm512_set1_ps(bound), _CMP_LT_OQ) == 0xFFFF;
}

// `forward_row` (its carried form) for 16 rows: b [n][16] (overwritten), e, total [n][16],
// aux [16][k][kAux].
void forward_group(float* b, float* e, float* total, int64_t n, int64_t k, __m512 tau,
                   float* aux) {
  const __m512 inv_tau = _mm512_div_ps(_mm512_set1_ps(1.0f), tau);
  __m512 m = _mm512_set1_ps(kNegInf);
  for (int64_t i = 0; i < n; ++i) m = _mm512_max_ps(m, _mm512_loadu_ps(b + i * kLanes));
  m = finite_or_zero(m);
  __m512 s = _mm512_setzero_ps(), e_max = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; ++i) {
    const __m512 ev = exp16(_mm512_sub_ps(_mm512_loadu_ps(b + i * kLanes), m));
    _mm512_storeu_ps(e + i * kLanes, ev);
    s = _mm512_add_ps(s, ev), e_max = _mm512_max_ps(e_max, ev);
  }
  std::fill(total, total + n * kLanes, 0.0f);
  for (int64_t j = 0; j < k; ++j) {
    ShortScalars sc;
    const __m512 m_next = step_scalars16(b, e, n, m, s, e_max, tau, &sc);
    const __m512 p_max = _mm512_mul_ps(e_max, sc.inv_s);
    const __m512 scalars[kAux] = {sc.m, sc.inv_s, sc.log1m_top, sc.inv_share, p_max};
    for (int c = 0; c < kAux; ++c) store_aux_lanes(aux, k, j, c, scalars[c]);
    if (j == k - 1) {
      for (int64_t i = 0; i < n * kLanes; i += kLanes)
        _mm512_storeu_ps(total + i, _mm512_fmadd_ps(_mm512_loadu_ps(e + i), sc.inv_s,
                                                    _mm512_loadu_ps(total + i)));
      break;
    }
    __m512 s_next = _mm512_setzero_ps(), e_max_next = _mm512_setzero_ps();
    with_flag(all_below(p_max, 1.0f / 64), [&](auto all_small) {
      step_pass16<true>(b, e, total, n * kLanes, sc.inv_s, sc.log1m_top, inv_tau, m_next,
                        all_small, &s_next, &e_max_next, nullptr);
    });
    m = m_next, s = s_next, e_max = e_max_next;
  }
}

// `backward_row` for 16 rows in one segment (k <= kSegment): b0, total_bar [n][16] -> b_bar
// [n][16] (= d/d b0) and, when `tau_grad`, each lane's sum of the steps' tau terms (in
// double, lanes 0-7 and 8-15). scratch: (2 + k) n 16 floats.
void backward_group(const float* b0, const float* total_bar, float* b_bar, int64_t n, int64_t k,
                    __m512 tau, bool tau_grad, const float* aux, float* scratch,
                    __m512d tau_sum[2]) {
  const __m512 inv_tau = _mm512_div_ps(_mm512_set1_ps(1.0f), tau);
  const int64_t size = n * kLanes;
  float* b = scratch;
  float* t = b + size;
  float* ps = t + size;  // step j's p at ps + j size
  std::copy(b0, b0 + size, b);
  for (int64_t j = 0; j < k; ++j) {  // replay_step, storing every step's p
    const __m512 m = aux_lanes(aux, k, j, 0), inv_s = aux_lanes(aux, k, j, 1);
    const __m512 log1m_top = aux_lanes(aux, k, j, 2);
    with_flag(all_below(aux_lanes(aux, k, j, 4), 1.0f / 64), [&](auto all_small) {
      replay_pass16(b, ps + j * size, size, m, inv_s, log1m_top, inv_tau, all_small);
    });
  }
  std::fill(b_bar, b_bar + size, 0.0f);
  std::fill(t, t + size, 0.0f);  // b_bar = 0 after the last step
  __m512 dot = _mm512_setzero_ps(), g_top = _mm512_setzero_ps();
  for (int64_t i = 0; i < size; i += kLanes)
    dot = _mm512_fmadd_ps(_mm512_loadu_ps(ps + (k - 1) * size + i), _mm512_loadu_ps(total_bar + i),
                          dot);
  tau_sum[0] = tau_sum[1] = _mm512_setzero_pd();
  for (int64_t j = k - 1; j >= 0; --j) {
    const __m512 share_m1 = _mm512_sub_ps(aux_lanes(aux, k, j, 3), _mm512_set1_ps(1.0f));
    const __m512 log1m_top_prev = j > 0 ? aux_lanes(aux, k, j - 1, 2) : _mm512_setzero_ps();
    const bool prev_all_small = j > 0 && all_below(aux_lanes(aux, k, j - 1, 4), 1.0f / 64);
    const float* p = ps + j * size;
    const float* p_prev = ps + (j > 0 ? j - 1 : 0) * size;
    __m512 dot_prev = _mm512_setzero_ps(), g_top_prev = _mm512_setzero_ps();
    __m512 tau_prev = _mm512_setzero_ps();
    with_flag(tau_grad, [&](auto want_tau) {
      with_flag(prev_all_small, [&](auto prev_small) {
        walk_pass16(p, p_prev, total_bar, t, b_bar, size, share_m1, g_top, dot, inv_tau,
                    log1m_top_prev, want_tau, prev_small, &dot_prev, &g_top_prev, &tau_prev);
      });
    });
    dot = dot_prev, g_top = g_top_prev;
    if (j > 0 && tau_grad) {
      for (int half = 0; half < 2; ++half)
        tau_sum[half] = _mm512_add_pd(tau_sum[half], widen_half(tau_prev, half));
    }
  }
}

// Whether the calls run their rows 16 at a time (forward and backward decide alike).
bool short_rows(const Layout& lay, int64_t k, const float* taus) {
  if (lay.n > kShortMax || k > kSegment) return false;
  for (int64_t i = 0; i < lay.rows / lay.rows_per_tau; ++i)
    if (!(taus[i] >= kCarriedTauMin)) return false;
  return true;
}

// A row of n floats into lane l of [n][16].
inline void to_lane(const float* row, int64_t n, int64_t l, float* lanes) {
  for (int64_t i = 0; i < n; ++i) lanes[i * kLanes + l] = row[i];
}

// Rows [16 g, 16 g + 16) as [n][16] scaled scores (excluded -inf; lanes past the last row all
// -inf), each row from `row_input(r, row)` and scaled in `row` (n floats); and their taus.
template <typename In>
__m512 scaled_group(const Layout& lay, const float* taus, int64_t g, In& row_input, float* row,
                    float* out) {
  const int64_t n = lay.n;
  alignas(64) float lane_tau[kLanes];
  std::fill(out, out + n * kLanes, kNegInf);
  for (int64_t l = 0; l < kLanes; ++l) {
    const int64_t r = g * kLanes + l;
    lane_tau[l] = r < lay.rows ? taus[r / lay.rows_per_tau] : 1.0f;
    if (r >= lay.rows) continue;
    scaled_row(row_input(r, row), row, n, n, lane_tau[l]);
    to_lane(row, n, l, out);
  }
  return _mm512_load_ps(lane_tau);
}

// Lanes of [n][16] back to the group's rows of `out` ([rows][n]).
void ungroup(const Layout& lay, int64_t g, const float* in, float* out) {
  for (int64_t l = 0; l < kLanes && g * kLanes + l < lay.rows; ++l) {
    float* row = out + (g * kLanes + l) * lay.n;
    for (int64_t i = 0; i < lay.n; ++i) row[i] = in[i * kLanes + l];
  }
}

// Lane values of aux ([16][k][kAux]) to the group's rows of `rows_aux` ([rows][k][kAux]).
void aux_to_rows(const Layout& lay, int64_t k, int64_t g, const float* lanes, float* rows_aux) {
  const int64_t per_row = k * kAux;
  for (int64_t l = 0; l < kLanes && g * kLanes + l < lay.rows; ++l)
    std::copy(lanes + l * per_row, lanes + (l + 1) * per_row, rows_aux + (g * kLanes + l) * per_row);
}

// The group's rows of `rows_aux` to lanes; lanes past the last row get a row of -inf's
// scalars (m = 0, 1 / s = 1, no dominant item).
void aux_to_lanes(const Layout& lay, int64_t k, int64_t g, const float* rows_aux, float* lanes) {
  const int64_t per_row = k * kAux;
  constexpr float kEmpty[kAux] = {0.0f, 1.0f, 0.0f, 1.0f, 0.0f};
  for (int64_t l = 0; l < kLanes; ++l) {
    const int64_t r = g * kLanes + l;
    float* lane = lanes + l * per_row;
    if (r < lay.rows) {
      std::copy(rows_aux + r * per_row, rows_aux + (r + 1) * per_row, lane);
    } else {
      for (int64_t j = 0; j < k; ++j) std::copy(kEmpty, kEmpty + kAux, lane + j * kAux);
    }
  }
}

template <typename In>
void forward_groups(ffi::ThreadPool& pool, const Layout& lay, const float* taus, int64_t k,
                    float* out, float* aux_out, In& row_input) {
  const int64_t n = lay.n, size = n * kLanes, groups = (lay.rows + kLanes - 1) / kLanes;
  auto group = [&](int64_t g, float* scratch) {
    float *b = scratch, *e = b + size, *total = e + size, *row = total + size;
    float* aux = row + n;
    const __m512 tau = scaled_group(lay, taus, g, row_input, row, b);
    forward_group(b, e, total, n, k, tau, aux);
    ungroup(lay, g, total, out);
    aux_to_rows(lay, k, g, aux, aux_out);
  };
  parallel_rows(pool, groups, size * k, 3 * size + n + kLanes * k * kAux, group);
}

template <typename In>
void backward_groups(ffi::ThreadPool& pool, const Layout& lay, const float* tb, const float* a,
                     const float* taus, int64_t k, bool tau_grad, float* out, float* tau_out,
                     In& row_input) {
  const int64_t n = lay.n, size = n * kLanes, groups = (lay.rows + kLanes - 1) / kLanes;
  auto group = [&](int64_t g, float* scratch) {
    float *b0 = scratch, *tb_lanes = b0 + size, *b_bar = tb_lanes + size, *row = b_bar + size;
    float* aux = row + n;
    float* work = aux + kLanes * k * kAux;
    const __m512 tau = scaled_group(lay, taus, g, row_input, row, b0);
    std::fill(tb_lanes, tb_lanes + size, 0.0f);
    for (int64_t l = 0; l < kLanes && g * kLanes + l < lay.rows; ++l)
      to_lane(tb + (g * kLanes + l) * n, n, l, tb_lanes);
    aux_to_lanes(lay, k, g, a, aux);
    __m512d steps[2];
    backward_group(b0, tb_lanes, b_bar, n, k, tau, tau_grad, aux, work, steps);
    // As in backward_rows: d b0 / d scores = 1 / tau for kept items, d b0 / d tau = -b0 / tau.
    __m512d scale[2] = {_mm512_setzero_pd(), _mm512_setzero_pd()};
    for (int64_t i = 0; i < size; i += kLanes) {
      const __m512 bb = _mm512_loadu_ps(b_bar + i), b0v = _mm512_loadu_ps(b0 + i);
      const __mmask16 alive = _mm512_cmp_ps_mask(b0v, _mm512_set1_ps(kNegInf), _CMP_NEQ_OQ);
      if (tau_grad) {
        const __m512 x = _mm512_maskz_mov_ps(alive, bb), y = _mm512_maskz_mov_ps(alive, b0v);
        for (int half = 0; half < 2; ++half)
          scale[half] = _mm512_fmadd_pd(widen_half(x, half), widen_half(y, half), scale[half]);
      }
      _mm512_storeu_ps(b_bar + i, _mm512_maskz_div_ps(alive, bb, tau));
    }
    ungroup(lay, g, b_bar, out);
    alignas(64) double lane_steps[kLanes], lane_scale[kLanes];
    alignas(64) float lane_tau[kLanes];
    _mm512_store_pd(lane_steps, steps[0]), _mm512_store_pd(lane_steps + 8, steps[1]);
    _mm512_store_pd(lane_scale, scale[0]), _mm512_store_pd(lane_scale + 8, scale[1]);
    _mm512_store_ps(lane_tau, tau);
    for (int64_t l = 0; l < kLanes && g * kLanes + l < lay.rows; ++l)
      tau_out[g * kLanes + l] =
          tau_grad ? static_cast<float>(-(lane_steps[l] + lane_scale[l]) / lane_tau[l]) : 0.0f;
  };
  parallel_rows(pool, groups, size * k, (5 + k) * size + n + kLanes * k * kAux, group);
}
#endif

// The forward over rows laid out as `lay`: row r's scores are `row_input(r, b)` (called on
// the task that runs the row, so it may compute them there, in b, the row's first n floats
// of scratch, which the scaling then overwrites in place: GumbelForward's noise).
template <typename In>
void forward_rows(ffi::ThreadPool& pool, const Layout& lay, const float* taus, int64_t k,
                  float* out, float* aux_out, In&& row_input) {
#ifdef __AVX512F__
  if (short_rows(lay, k, taus)) return forward_groups(pool, lay, taus, k, out, aux_out, row_input);
#endif
  const int64_t n = lay.n, rows_per_tau = lay.rows_per_tau;
  const int64_t np = padded(n);
  auto row = [&](int64_t r, float* scratch) {
    const float tau_r = taus[r / rows_per_tau];
    scaled_row(row_input(r, scratch), scratch, n, np, tau_r);
    float* row_total = np == n ? out + r * n : scratch + 2 * np;
    forward_row(scratch, scratch + np, row_total, np, k, tau_r, aux_out + r * k * kAux);
    if (np != n) std::copy(row_total, row_total + n, out + r * n);
  };
  parallel_rows(pool, lay.rows, n * k, (np == n ? 2 : 3) * np, row);
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> scores, ffi::Buffer<ffi::F32> tau,
                   int64_t k, ffi::ResultBuffer<ffi::F32> total, ffi::ResultBuffer<ffi::F32> aux) {
  Layout lay;
  ffi::Error bad = layout(scores.dimensions(), static_cast<int64_t>(tau.element_count()), k, &lay);
  if (bad.failure()) return bad;
  const float* in = scores.typed_data();
  forward_rows(pool, lay, tau.typed_data(), k, total->typed_data(), aux->typed_data(),
               [&](int64_t r, float*) { return in + r * lay.n; });
  return ffi::Error::Success();
}

// The backward over rows laid out as `lay` (b0 from `row_input(r, b0)`, as in forward_rows).
template <typename In>
void backward_rows(ffi::ThreadPool& pool, const Layout& lay, const float* tb, const float* a,
                   const float* taus, int64_t k, bool tau_grad, float* out, float* tau_out,
                   In&& row_input) {
#ifdef __AVX512F__
  if (short_rows(lay, k, taus))
    return backward_groups(pool, lay, tb, a, taus, k, tau_grad, out, tau_out, row_input);
#endif
  const int64_t n = lay.n, rows_per_tau = lay.rows_per_tau;
  const Segments seg(k);
  const int64_t np = padded(n);
  auto row = [&](int64_t r, float* scratch) {
    const float tau_r = taus[r / rows_per_tau];
    float* b0 = scratch + seg.scratch(np) - np;
    scaled_row(row_input(r, b0), b0, n, np, tau_r);
    float* grad = out + r * n;
    const float* row_bar = tb + r * n;
    if (np != n) {
      float* copy = scratch + seg.scratch(np);
      std::copy(row_bar, row_bar + n, copy);
      std::fill(copy + n, copy + np, 0.0f);
      row_bar = copy, grad = copy + np;
    }
    const double steps =
        backward_row(b0, row_bar, grad, np, k, tau_r, tau_grad, a + r * k * kAux, scratch);
    // b0 = (scores - row max) / tau: d b0 / d scores = 1 / tau for kept items (the row
    // maximum is a constant shift) and d b0 / d tau = -b0 / tau.
    // Summed in double: with large score ranges it nearly cancels the steps' terms.
    double scale = 0.0;
    if (tau_grad) {
#pragma omp simd reduction(+ : scale)
      for (int64_t i = 0; i < n; ++i)
        scale += b0[i] > kNegInf ? static_cast<double>(grad[i]) * b0[i] : 0.0;
    }
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) grad[i] = b0[i] > kNegInf ? grad[i] / tau_r : 0.0f;
    tau_out[r] = tau_grad ? static_cast<float>(-(steps + scale) / tau_r) : 0.0f;
    if (np != n) std::copy(grad, grad + n, out + r * n);
  };
  parallel_rows(pool, lay.rows, n * k, seg.scratch(np) + (np == n ? 0 : 2 * np), row);
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> scores,
                    ffi::Buffer<ffi::F32> total_bar, ffi::Buffer<ffi::F32> aux,
                    ffi::Buffer<ffi::F32> tau, int64_t k, bool tau_grad,
                    ffi::ResultBuffer<ffi::F32> scores_bar,
                    ffi::ResultBuffer<ffi::F32> tau_bar) {
  Layout lay;
  ffi::Error bad = layout(scores.dimensions(), static_cast<int64_t>(tau.element_count()), k, &lay);
  if (bad.failure()) return bad;
  const float* in = scores.typed_data();
  backward_rows(pool, lay, total_bar.typed_data(), aux.typed_data(), tau.typed_data(), k,
                tau_grad, scores_bar->typed_data(), tau_bar->typed_data(),
                [&](int64_t r, float*) { return in + r * lay.n; });
  return ffi::Error::Success();
}

// Threefry-2x32, 20 rounds (Salmon et al., SC 2011), of the counters (0, i) under a key, one
// 32-bit word per element: b0 ^ b1, the bits of `jax.random.bits` for float32 in JAX's
// partitionable mode (the same hash as threefry.py, which tests/test_gumbel.py checks against
// `jax.random.gumbel` bit for bit). Integers, so exactly reproducible.
constexpr int kRotations[2][4] = {{13, 15, 26, 6}, {17, 29, 16, 24}};
constexpr uint32_t kParity = 0x1BD11BDA;

inline uint32_t rotl(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

void threefry_block(uint32_t k0, uint32_t k1, int64_t start, int64_t count, uint32_t* out) {
  const uint32_t ks[3] = {k0, k1, k0 ^ k1 ^ kParity};
  int64_t i = 0;
#ifdef __AVX512F__
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (; i + kLanes <= count; i += kLanes) {
    __m512i x0 = _mm512_set1_epi32(static_cast<int>(ks[0]));
    __m512i x1 = _mm512_add_epi32(
        _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(start + i)), lane),
        _mm512_set1_epi32(static_cast<int>(ks[1])));
    for (int round = 0; round < 5; ++round) {
      for (int j = 0; j < 4; ++j) {
        x0 = _mm512_add_epi32(x0, x1);
        x1 = _mm512_xor_si512(_mm512_rolv_epi32(x1, _mm512_set1_epi32(kRotations[round % 2][j])), x0);
      }
      x0 = _mm512_add_epi32(x0, _mm512_set1_epi32(static_cast<int>(ks[(round + 1) % 3])));
      x1 = _mm512_add_epi32(
          x1, _mm512_set1_epi32(static_cast<int>(ks[(round + 2) % 3] + uint32_t(round + 1))));
    }
    _mm512_storeu_si512(out + i, _mm512_xor_si512(x0, x1));
  }
#endif
  for (; i < count; ++i) {
    uint32_t x0 = ks[0], x1 = static_cast<uint32_t>(start + i) + ks[1];
    for (int round = 0; round < 5; ++round) {
      for (int j = 0; j < 4; ++j) {
        x0 += x1;
        x1 = rotl(x1, kRotations[round % 2][j]) ^ x0;
      }
      x0 += ks[(round + 1) % 3];
      x1 += ks[(round + 2) % 3] + uint32_t(round + 1);
    }
    out[i] = x0 ^ x1;
  }
}

// `jax.random.gumbel`'s transform of a word, -log(-log(u)) with u = max(tiny, f + tiny) and
// f = the word's top 23 bits as a float in [0, 1), written with the operations XLA:CPU's
// `log` compiles to (JAX 0.10 / XLA's Cephes-style polynomial, its multiply-adds contracted
// into FMAs as its backend does), so that the values are XLA's bit for bit. They are only
// used after `cpu_kernel.gumbel_transform_is_xlas()` has compared them with XLA's over all
// 2^23 possible words on the running machine; otherwise the transform stays in XLA.
constexpr uint32_t kLogConst[] = {
    0x3D9021BB, 0xBDEBD1B8, 0x3DEF251A,  // p0 p1 p2
    0xBDFE5D4F, 0x3E11E9BF, 0xBE2AAE50,  // p3 p4 p5
    0x3E4CCEAC, 0xBE7FFFFC, 0x3EAAAAAA,  // p6 p7 p8
    0xB95E8083, 0x3F318000,              // ln 2 = q2 - q1 (Cephes' split), as -q1 and q2
    0x3F3504F3,                          // sqrt(1/2)
};

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// log(v) for a positive normal float (the transform's arguments are in [2^-126, 88]).
inline float xla_log(float v) {
  const auto c = [](int i) { return bits_float(kLogConst[i]); };
  const uint32_t u = float_bits(v);
  float e = 1.0f + static_cast<float>(static_cast<int32_t>(u >> 23) - 127);
  const float m = bits_float((u & 0x807FFFFFu) | 0x3F000000u);  // in [1/2, 1)
  const bool low = m < c(11);
  float x = m - 1.0f;
  e = e - (low ? 1.0f : 0.0f);
  x = x + (low ? m : 0.0f);
  const float x2 = x * x, x3 = x2 * x;
  float y = std::fma(x, c(0), c(1)), y1 = std::fma(x, c(3), c(4)), y2 = std::fma(x, c(6), c(7));
  y = std::fma(y, x, c(2)), y1 = std::fma(y1, x, c(5)), y2 = std::fma(y2, x, c(8));
  y = std::fma(y, x3, y1);
  y = std::fma(y, x3, y2);
  y = std::fma(y, x3, c(9) * e);
  x = std::fma(-0.5f, x2, x);
  x = x + y;
  return std::fma(c(10), e, x);
}

inline float word_uniform(uint32_t word) {
  constexpr float kTiny = std::numeric_limits<float>::min();
  const float f = bits_float((word >> 9) | 0x3F800000u) - 1.0f;
  return std::max(kTiny, f + kTiny);
}

inline float gumbel_of_word(uint32_t word) { return -xla_log(-xla_log(word_uniform(word))); }

#ifdef __AVX512F__
inline __m512 xla_log16(__m512 v) {
  const auto c = [](int i) { return _mm512_set1_ps(bits_float(kLogConst[i])); };
  const __m512i u = _mm512_castps_si512(v);
  const __m512i exponent = _mm512_sub_epi32(_mm512_srli_epi32(u, 23), _mm512_set1_epi32(127));
  __m512 e = _mm512_add_ps(_mm512_set1_ps(1.0f), _mm512_cvtepi32_ps(exponent));
  const __m512 m = _mm512_castsi512_ps(_mm512_or_si512(
      _mm512_and_si512(u, _mm512_set1_epi32(static_cast<int>(0x807FFFFFu))),
      _mm512_set1_epi32(0x3F000000)));
  const __mmask16 low = _mm512_cmp_ps_mask(m, c(11), _CMP_LT_OQ);
  __m512 x = _mm512_sub_ps(m, _mm512_set1_ps(1.0f));
  e = _mm512_sub_ps(e, _mm512_maskz_mov_ps(low, _mm512_set1_ps(1.0f)));
  x = _mm512_add_ps(x, _mm512_maskz_mov_ps(low, m));
  const __m512 x2 = _mm512_mul_ps(x, x), x3 = _mm512_mul_ps(x2, x);
  __m512 y = _mm512_fmadd_ps(x, c(0), c(1));
  __m512 y1 = _mm512_fmadd_ps(x, c(3), c(4));
  __m512 y2 = _mm512_fmadd_ps(x, c(6), c(7));
  y = _mm512_fmadd_ps(y, x, c(2)), y1 = _mm512_fmadd_ps(y1, x, c(5));
  y2 = _mm512_fmadd_ps(y2, x, c(8));
  y = _mm512_fmadd_ps(y, x3, y1);
  y = _mm512_fmadd_ps(y, x3, y2);
  y = _mm512_fmadd_ps(y, x3, _mm512_mul_ps(c(9), e));
  x = _mm512_fnmadd_ps(_mm512_set1_ps(0.5f), x2, x);
  x = _mm512_add_ps(x, y);
  return _mm512_fmadd_ps(c(10), e, x);
}

inline __m512 gumbel16(__m512i words) {
  const __m512 tiny = _mm512_set1_ps(std::numeric_limits<float>::min());
  const __m512 f = _mm512_sub_ps(
      _mm512_castsi512_ps(_mm512_or_si512(_mm512_srli_epi32(words, 9), _mm512_set1_epi32(0x3F800000))),
      _mm512_set1_ps(1.0f));
  const __m512 u = _mm512_max_ps(tiny, _mm512_add_ps(f, tiny));
  const __m512 zero = _mm512_setzero_ps();
  return _mm512_sub_ps(zero, xla_log16(_mm512_sub_ps(zero, xla_log16(u))));
}
#endif

// out[i] = (scores ? scores[i] : 0) + the Gumbel noise of words[i], for `count` items.
void add_gumbel(const uint32_t* words, const float* scores, float* out, int64_t count) {
  int64_t i = 0;
#ifdef __AVX512F__
  for (; i + kLanes <= count; i += kLanes) {
    const __m512 g = gumbel16(_mm512_loadu_si512(words + i));
    _mm512_storeu_ps(out + i, scores ? _mm512_add_ps(_mm512_loadu_ps(scores + i), g) : g);
  }
#endif
  for (; i < count; ++i) out[i] = (scores ? scores[i] : 0.0f) + gumbel_of_word(words[i]);
}

// keys [..., 2] -> bits [..., M]: one key per group of M consecutive words (M = size / keys),
// counters 0..M-1 in each group.
// fn(k0, k1, start, count, offset) over a buffer of `size` items with one threefry key per
// group of size / keys consecutive items (`broadcast_all` batching puts the keys' batch axes
// first): the group's counters [start, start + count) at items offset + start, in tasks of
// at most 2^14 items on XLA's thread pool.
template <typename F>
ffi::Error for_key_chunks(ffi::ThreadPool& pool, ffi::Buffer<ffi::U32>& keys, int64_t size,
                          F&& fn) {
  const int64_t num_keys = static_cast<int64_t>(keys.element_count()) / 2;
  if (num_keys < 1 || size % num_keys) return ffi::Error::InvalidArgument("one key per group");
  const int64_t per_key = size / num_keys;
  const uint32_t* k = keys.typed_data();
  constexpr int64_t kChunk = 1 << 14;
  const int64_t chunks_per_key = (per_key + kChunk - 1) / kChunk;
  auto chunk = [&](int64_t c, float*) {
    const int64_t key = c / chunks_per_key, start = (c % chunks_per_key) * kChunk;
    fn(k[2 * key], k[2 * key + 1], start, std::min(kChunk, per_key - start), key * per_key);
  };
  parallel_rows(pool, num_keys * chunks_per_key, kChunk, 0, chunk);
  return ffi::Error::Success();
}

ffi::Error ThreefryBits(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> keys,
                        ffi::ResultBuffer<ffi::U32> bits) {
  uint32_t* out = bits->typed_data();
  return for_key_chunks(pool, keys, static_cast<int64_t>(bits->element_count()),
                        [&](uint32_t k0, uint32_t k1, int64_t start, int64_t count, int64_t offset) {
                          threefry_block(k0, k1, start, count, out + offset + start);
                        });
}

// keys [..., 2], scores [..., M] -> scores + Gumbel noise: the words of ThreefryBits for the
// same keys and shape, turned into noise and added in the same pass (`gumbel.perturb`).
ffi::Error GumbelPerturb(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> keys,
                         ffi::Buffer<ffi::F32> scores, ffi::ResultBuffer<ffi::F32> perturbed) {
  const float* in = scores.typed_data();
  float* out = perturbed->typed_data();
  constexpr int64_t kBlock = 256;  // words held at once
  return for_key_chunks(
      pool, keys, static_cast<int64_t>(scores.element_count()),
      [&](uint32_t k0, uint32_t k1, int64_t start, int64_t count, int64_t offset) {
        uint32_t words[kBlock];
        for (int64_t i = start; i < start + count; i += kBlock) {
          const int64_t block = std::min(kBlock, start + count - i);
          threefry_block(k0, k1, i, block, words);
          add_gumbel(words, in + offset + i, out + offset + i, block);
        }
      });
}

// Row r of scores + Gumbel noise, as GumbelPerturb draws it: the row holds items
// [r n, (r + 1) n) of the flattened scores, whose key covers groups of size / keys items.
class NoisyRows {
 public:
  // The call's layout (as `layout`), and its rows' noise; checks that each key covers whole
  // rows.
  static ffi::Error make(ffi::Buffer<ffi::U32>& keys, ffi::Buffer<ffi::F32>& scores,
                         ffi::Buffer<ffi::F32>& tau, int64_t k, Layout* lay, NoisyRows* out) {
    ffi::Error bad =
        layout(scores.dimensions(), static_cast<int64_t>(tau.element_count()), k, lay);
    if (bad.failure()) return bad;
    const int64_t num_keys = static_cast<int64_t>(keys.element_count()) / 2;
    const int64_t size = lay->rows * lay->n;
    if (num_keys < 1 || size % num_keys || (size / num_keys) % lay->n)
      return ffi::Error::InvalidArgument("one key per group of rows");
    *out = NoisyRows(keys.typed_data(), scores.typed_data(), lay->n, size / num_keys);
    return ffi::Error::Success();
  }
  NoisyRows() = default;
  // Writes the row's n perturbed scores to `out`; returns `out`.
  const float* operator()(int64_t r, float* out) const {
    constexpr int64_t kBlock = 256;  // words held at once
    uint32_t words[kBlock];
    const int64_t item = r * n_, g = item / per_key_, start = item % per_key_;
    for (int64_t i = 0; i < n_; i += kBlock) {
      const int64_t block = std::min(kBlock, n_ - i);
      threefry_block(keys_[2 * g], keys_[2 * g + 1], start + i, block, words);
      add_gumbel(words, scores_ + item + i, out + i, block);
    }
    return out;
  }

 private:
  NoisyRows(const uint32_t* keys, const float* scores, int64_t n, int64_t per_key)
      : keys_(keys), scores_(scores), n_(n), per_key_(per_key) {}
  const uint32_t* keys_ = nullptr;
  const float* scores_ = nullptr;
  int64_t n_ = 0, per_key_ = 1;
};

// keys [..., 2], scores [..., n], tau -> Forward's total and aux for scores + Gumbel noise:
// GumbelPerturb and Forward in one call, each row's noise drawn by the task that then runs the
// row (one trip to the thread pool instead of two, and the row is still in cache). Writes the
// perturbed scores to `perturbed` when it has their shape; when it is empty they are not kept
// (GumbelBackward draws them again).
ffi::Error GumbelForward(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> keys,
                         ffi::Buffer<ffi::F32> scores, ffi::Buffer<ffi::F32> tau, int64_t k,
                         ffi::ResultBuffer<ffi::F32> total, ffi::ResultBuffer<ffi::F32> aux,
                         ffi::ResultBuffer<ffi::F32> perturbed) {
  Layout lay;
  NoisyRows noisy;
  ffi::Error bad = NoisyRows::make(keys, scores, tau, k, &lay, &noisy);
  if (bad.failure()) return bad;
  const bool keep = perturbed->element_count() != 0;
  if (keep && perturbed->element_count() != scores.element_count())
    return ffi::Error::InvalidArgument("perturbed must be empty or the scores' shape");
  float* kept = perturbed->typed_data();
  forward_rows(pool, lay, tau.typed_data(), k, total->typed_data(), aux->typed_data(),
               [&](int64_t r, float* b) { return noisy(r, keep ? kept + r * lay.n : b); });
  return ffi::Error::Success();
}

// Backward's gradients for GumbelForward's rows when the perturbed scores were not kept: each
// row's noise is drawn again (the same words) and added to its scores.
ffi::Error GumbelBackward(ffi::ThreadPool pool, ffi::Buffer<ffi::U32> keys,
                          ffi::Buffer<ffi::F32> scores, ffi::Buffer<ffi::F32> total_bar,
                          ffi::Buffer<ffi::F32> aux, ffi::Buffer<ffi::F32> tau, int64_t k,
                          bool tau_grad, ffi::ResultBuffer<ffi::F32> scores_bar,
                          ffi::ResultBuffer<ffi::F32> tau_bar) {
  Layout lay;
  NoisyRows noisy;
  ffi::Error bad = NoisyRows::make(keys, scores, tau, k, &lay, &noisy);
  if (bad.failure()) return bad;
  backward_rows(pool, lay, total_bar.typed_data(), aux.typed_data(), tau.typed_data(), k,
                tau_grad, scores_bar->typed_data(), tau_bar->typed_data(), noisy);
  return ffi::Error::Success();
}

// words [..., m] -> their Gumbel noise, row by row of m (the transform alone: what the check
// against XLA compares; rows shorter than a vector take the scalar code only).
ffi::Error GumbelFromBits(ffi::Buffer<ffi::U32> bits, ffi::ResultBuffer<ffi::F32> noise) {
  DenormalsAreZero ftz;  // as in GumbelPerturb's tasks
  const auto dims = bits.dimensions();
  const int64_t size = static_cast<int64_t>(bits.element_count());
  const int64_t m = dims.size() ? dims.back() : 1;
  for (int64_t i = 0; m > 0 && i < size; i += m)
    add_gumbel(bits.typed_data() + i, nullptr, noise->typed_data() + i, m);
  return ffi::Error::Success();
}

}  // namespace

// Bytes held by the kernel's scratch pool (for the benchmarks' memory figures).
extern "C" int64_t SjScratchBytes() { return scratch_pool().bytes(); }

// Items per vector step of the hand-written loops: 16 with AVX-512, 0 for the plain loops.
extern "C" int64_t SjVectorLanes() { return kLanes; }

XLA_FFI_DEFINE_HANDLER_SYMBOL(SjRelaxedTopkForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("k")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(SjThreefryBits, ThreefryBits,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::U32>>());

// The backwards' operands after any leading ones: scores, total_bar, aux, tau; k, tau_grad;
// results scores_bar, tau_bar.
template <typename Binding>
auto backward_operands(Binding binding) {
  return std::move(binding)
      .template Arg<ffi::Buffer<ffi::F32>>()
      .template Arg<ffi::Buffer<ffi::F32>>()
      .template Arg<ffi::Buffer<ffi::F32>>()
      .template Arg<ffi::Buffer<ffi::F32>>()
      .template Attr<int64_t>("k")
      .template Attr<bool>("tau_grad")
      .template Ret<ffi::Buffer<ffi::F32>>()
      .template Ret<ffi::Buffer<ffi::F32>>();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(SjRelaxedTopkBackward, Backward,
                              backward_operands(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(SjGumbelPerturb, GumbelPerturb,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(SjGumbelForward, GumbelForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("k")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(SjGumbelBackward, GumbelBackward,
                              backward_operands(ffi::Ffi::Bind()
                                                    .Ctx<ffi::ThreadPool>()
                                                    .Arg<ffi::Buffer<ffi::U32>>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(SjGumbelFromBits, GumbelFromBits,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
