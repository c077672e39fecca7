// Fused CPU kernels of the mHC primitive ops (the `cpp` backend; Python side in kernels/cpu_ops.py).
//
// Why they exist: the eager PyTorch reference (kernels/reference.py) runs each op as a chain of tensor-wide
// passes. On CPU the Sinkhorn projection is ~300 tiny ops over (n, n, T) tensors and the mixes are batched
// matmuls of (n × n)·(n × C) per token; one mHC connection cost ≈ 22 ms forward + backward at T = 4096,
// n = 4, C = 96 (2 cores), most of the mHC step overhead. Here every op is one loop over tokens
// (at::parallel_for, torch's own thread pool and thread count), and each token's n × n matrix and its
// n rows of C live in L1: Sinkhorn forward and backward run in registers/stack, the backward recomputes the
// iterations from the saved logits (as the Triton kernel and the reference's hand-written reverse pass do).
//
// Layouts (all contiguous, float32 or float64; the Python wrappers promote and check):
//   logits, H_res  (T, n, n)  H_res left-multiplies the streams: x'_i = Σ_j H[i, j] x_j + h_post[i] f
//   x, grad_x      (T, n, C)  the n residual streams
//   f, u           (T, C)     the sublayer output / input
//   h_pre, h_post  (T, n)
// Equations and conventions: kernels/reference.py (the ground truth these must match).
//
// Only standard headers and the light ATen / torch::library headers are included, so the JIT build
// (kernels/cpu_build.py) takes seconds, not the minute torch/extension.h costs.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

namespace {

constexpr int64_t kMaxStreams = 8;
// Tokens per parallel chunk at least: below this one fork/join costs more than the work it splits.
constexpr int64_t kGrainTokens = 128;

void check_input(const at::Tensor& t, const char* name, int64_t dims) {
  TORCH_CHECK(t.device().is_cpu(), "mhc_cpu: ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.dim() == dims, "mhc_cpu: ", name, " must have ", dims, " dims, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "mhc_cpu: ", name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, "mhc_cpu: ", name,
              " must be float32 or float64, got ", t.scalar_type());
}

void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* name) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "mhc_cpu: ", name, " has dtype ", b.scalar_type(),
              ", expected ", a.scalar_type());
}

int64_t check_streams(int64_t n) {
  TORCH_CHECK(n >= 1 && n <= kMaxStreams, "mhc_cpu: n (", n, ") must be from 1 to ", kMaxStreams);
  return n;
}

// ---------------------------------------------------------------------------------------------------------
// Every kernel is a template on the stream count N (1..8), so the n × n loops unroll and the per-token
// matrices live in registers; `with_streams` turns the runtime n into that constant.

template <typename F>
void with_streams(int64_t n, F&& body) {
  switch (check_streams(n)) {
    case 1: return body(std::integral_constant<int, 1>{});
    case 2: return body(std::integral_constant<int, 2>{});
    case 3: return body(std::integral_constant<int, 3>{});
    case 4: return body(std::integral_constant<int, 4>{});
    case 5: return body(std::integral_constant<int, 5>{});
    case 6: return body(std::integral_constant<int, 6>{});
    case 7: return body(std::integral_constant<int, 7>{});
    default: return body(std::integral_constant<int, 8>{});
  }
}

// ---------------------------------------------------------------------------------------------------------
// Sinkhorn-Knopp. Normalisation step s divides by d = Σ_axis m + floor along one axis:
//   paper:        m0 = exp(L − max L);            steps: (columns, rows) × t;           floor 0
//   deepseek-v4:  m0[i][j] = softmax_row(L)[j][i] + eps (the logits hold H_resᵀ);
//                 steps: rows, then (columns, rows) × (t − 1);                          floor eps
// Rows are normalised last, so each output row sums to exactly 1 (up to rounding).

struct SinkhornPlan {
  int64_t steps;
  bool deepseek;
  double eps;

  SinkhornPlan(int64_t iters, bool deepseek_, double eps_)
      : steps(deepseek_ ? 1 + 2 * std::max<int64_t>(iters - 1, 0) : 2 * iters), deepseek(deepseek_), eps(eps_) {}

  // true: step s normalises columns (a sum over rows i); false: rows.
  bool normalises_columns(int64_t s) const { return deepseek ? (s >= 1 && (s - 1) % 2 == 0) : (s % 2 == 0); }
};

// Tokens are processed kLanes at a time, lane-innermost ([entry][lane] arrays), so every step of the
// iteration is a vector operation across kLanes tokens: the ≈ 40 normalisations of a token form a chain of
// dependent divisions that a token-at-a-time loop cannot vectorise.
constexpr int kLanes = 8;

template <typename T, int N>
struct Sinkhorn {
  static constexpr int NN = N * N;
  using Block = T[NN][kLanes];
  using Rows = T[N][kLanes];

  // Gather (or scatter) the matrices of tokens [t, t + count) into (from) lane-major form; missing lanes
  // repeat the first token so that they stay finite.
  static void gather(const T* src, int64_t t, int count, Block out) {
    for (int l = 0; l < kLanes; ++l) {
      const T* m = src + (t + (l < count ? l : 0)) * NN;
      for (int k = 0; k < NN; ++k) out[k][l] = m[k];
    }
  }

  static void scatter(const Block in, int64_t t, int count, T* dst) {
    for (int l = 0; l < count; ++l) {
      T* m = dst + (t + l) * NN;
      for (int k = 0; k < NN; ++k) m[k] = in[k][l];
    }
  }

  // The starting matrix m0 from the logits (in place); `probs` receives the softmax (deepseek-v4 only).
  static void start(const SinkhornPlan& plan, Block m, Block probs) {
    if (!plan.deepseek) {
      T peak[kLanes];
      std::copy(m[0], m[0] + kLanes, peak);
      for (int k = 1; k < NN; ++k)
        for (int l = 0; l < kLanes; ++l) peak[l] = std::max(peak[l], m[k][l]);
      for (int k = 0; k < NN; ++k)
        for (int l = 0; l < kLanes; ++l) m[k][l] = std::exp(m[k][l] - peak[l]);
      return;
    }
    for (int a = 0; a < N; ++a) {
      T peak[kLanes], total[kLanes] = {};
      std::copy(m[a * N], m[a * N] + kLanes, peak);
      for (int b = 1; b < N; ++b)
        for (int l = 0; l < kLanes; ++l) peak[l] = std::max(peak[l], m[a * N + b][l]);
      for (int b = 0; b < N; ++b)
        for (int l = 0; l < kLanes; ++l) total[l] += (probs[a * N + b][l] = std::exp(m[a * N + b][l] - peak[l]));
      for (int b = 0; b < N; ++b)
        for (int l = 0; l < kLanes; ++l) probs[a * N + b][l] /= total[l];
    }
    const T eps = static_cast<T>(plan.eps);
    for (int i = 0; i < N; ++i)
      for (int j = 0; j < N; ++j)
        for (int l = 0; l < kLanes; ++l) m[i * N + j][l] = probs[j * N + i][l] + eps;
  }

  // Index of entry (i, j) and of its divisor for a column (sum over i) or row (sum over j) normalisation.
  static int divisor_of(bool columns, int i, int j) { return columns ? j : i; }

  // One normalisation of m in place: d = Σ_axis m + floor, m /= d; the N divisors go to `d`.
  static void step(bool columns, T floor, Block m, Rows d) {
    for (int r = 0; r < N; ++r)
      for (int l = 0; l < kLanes; ++l) d[r][l] = 0;
    for (int i = 0; i < N; ++i)
      for (int j = 0; j < N; ++j)
        for (int l = 0; l < kLanes; ++l) d[divisor_of(columns, i, j)][l] += m[i * N + j][l];
    for (int r = 0; r < N; ++r)
      for (int l = 0; l < kLanes; ++l) d[r][l] += floor;
    for (int i = 0; i < N; ++i)
      for (int j = 0; j < N; ++j)
        for (int l = 0; l < kLanes; ++l) m[i * N + j][l] /= d[divisor_of(columns, i, j)][l];
  }

  static T floor_of(const SinkhornPlan& plan) { return plan.deepseek ? static_cast<T>(plan.eps) : T(0); }

  static void forward(const SinkhornPlan& plan, const T* logits, T* out, int64_t tokens) {
    at::parallel_for(0, tokens, kGrainTokens, [&](int64_t begin, int64_t end) {
      Block m, probs;
      Rows d;
      for (int64_t t = begin; t < end; t += kLanes) {
        const int count = static_cast<int>(std::min<int64_t>(kLanes, end - t));
        gather(logits, t, count, m);
        start(plan, m, probs);
        for (int64_t s = 0; s < plan.steps; ++s) step(plan.normalises_columns(s), floor_of(plan), m, d);
        scatter(m, t, count, out);
      }
    });
  }

  // Vector-Jacobian product: recompute the iterates (kept per block), then walk the steps backwards with
  // ∂m = (∂y − Σ_axis(∂y ⊙ y)) / d, and finish with the start's product: paper ∂L = m0 ⊙ ∂m0;
  // deepseek-v4 ∂P[j][i] = ∂m0[i][j], ∂L = P ⊙ (∂P − Σ_row(∂P ⊙ P)).
  static void backward(const SinkhornPlan& plan, const T* grad_out, const T* logits, T* grad_logits,
                       int64_t tokens) {
    at::parallel_for(0, tokens, kGrainTokens, [&](int64_t begin, int64_t end) {
      // iterates[s] = y after step s, divisors[s] = its d.
      std::vector<T> iterate_store(plan.steps * NN * kLanes), divisor_store(plan.steps * N * kLanes);
      auto* iterates = reinterpret_cast<Block*>(iterate_store.data());
      auto* divisors = reinterpret_cast<Rows*>(divisor_store.data());
      Block m0, probs, g, out;
      for (int64_t t = begin; t < end; t += kLanes) {
        const int count = static_cast<int>(std::min<int64_t>(kLanes, end - t));
        gather(logits, t, count, m0);
        start(plan, m0, probs);
        const Block* previous = &m0;
        for (int64_t s = 0; s < plan.steps; ++s) {
          std::copy(&(*previous)[0][0], &(*previous)[0][0] + NN * kLanes, &iterates[s][0][0]);
          step(plan.normalises_columns(s), floor_of(plan), iterates[s], divisors[s]);
          previous = &iterates[s];
        }
        gather(grad_out, t, count, g);
        for (int64_t s = plan.steps - 1; s >= 0; --s) {
          const bool columns = plan.normalises_columns(s);
          const Block& y = iterates[s];
          const Rows& d = divisors[s];
          Rows dot = {};
          for (int i = 0; i < N; ++i)
            for (int j = 0; j < N; ++j)
              for (int l = 0; l < kLanes; ++l) dot[divisor_of(columns, i, j)][l] += g[i * N + j][l] * y[i * N + j][l];
          for (int i = 0; i < N; ++i)
            for (int j = 0; j < N; ++j) {
              const int r = divisor_of(columns, i, j);
              for (int l = 0; l < kLanes; ++l) g[i * N + j][l] = (g[i * N + j][l] - dot[r][l]) / d[r][l];
            }
        }
        if (!plan.deepseek) {
          for (int k = 0; k < NN; ++k)
            for (int l = 0; l < kLanes; ++l) out[k][l] = g[k][l] * m0[k][l];
        } else {
          for (int a = 0; a < N; ++a) {
            T dot[kLanes] = {};
            for (int b = 0; b < N; ++b)
              for (int l = 0; l < kLanes; ++l) dot[l] += g[b * N + a][l] * probs[a * N + b][l];
            for (int b = 0; b < N; ++b)
              for (int l = 0; l < kLanes; ++l) out[a * N + b][l] = probs[a * N + b][l] * (g[b * N + a][l] - dot[l]);
          }
        }
        scatter(out, t, count, grad_logits);
      }
    });
  }
};

at::Tensor sinkhorn_fwd(const at::Tensor& logits, int64_t iters, bool deepseek, double eps) {
  check_input(logits, "logits", 3);
  const int64_t tokens = logits.size(0), n = logits.size(1);
  TORCH_CHECK(logits.size(2) == n, "mhc_cpu: logits must be (T, n, n), got ", logits.sizes());
  TORCH_CHECK(iters >= 0, "mhc_cpu: sinkhorn iterations (", iters, ") must be >= 0");
  const SinkhornPlan plan(iters, deepseek, eps);
  at::Tensor out = at::empty_like(logits);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "mhc_cpu_sinkhorn_fwd", [&] {
    with_streams(n, [&](auto streams) {
      Sinkhorn<scalar_t, decltype(streams)::value>::forward(plan, logits.const_data_ptr<scalar_t>(),
                                                            out.mutable_data_ptr<scalar_t>(), tokens);
    });
  });
  return out;
}

at::Tensor sinkhorn_bwd(const at::Tensor& grad, const at::Tensor& logits, int64_t iters, bool deepseek, double eps) {
  check_input(logits, "logits", 3);
  check_input(grad, "grad", 3);
  check_same_dtype(logits, grad, "grad");
  TORCH_CHECK(grad.sizes() == logits.sizes(), "mhc_cpu: grad shape ", grad.sizes(), " != logits ", logits.sizes());
  TORCH_CHECK(logits.size(2) == logits.size(1), "mhc_cpu: logits must be (T, n, n), got ", logits.sizes());
  const SinkhornPlan plan(iters, deepseek, eps);
  at::Tensor grad_logits = at::empty_like(logits);
  AT_DISPATCH_FLOATING_TYPES(logits.scalar_type(), "mhc_cpu_sinkhorn_bwd", [&] {
    with_streams(logits.size(1), [&](auto streams) {
      Sinkhorn<scalar_t, decltype(streams)::value>::backward(plan, grad.const_data_ptr<scalar_t>(),
                                                             logits.const_data_ptr<scalar_t>(),
                                                             grad_logits.mutable_data_ptr<scalar_t>(), logits.size(0));
    });
  });
  return grad_logits;
}

// ---------------------------------------------------------------------------------------------------------
// Stream mixes. Rows of C are contiguous, so the inner loops over C vectorise (`omp simd`; the dot products'
// reductions need it to be reassociated). The loops live in these templates because a pragma cannot appear
// inside the AT_DISPATCH macro's lambda argument.

template <typename T>
T dot(const T* a, const T* b, int64_t len) {
  T total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t c = 0; c < len; ++c) total += a[c] * b[c];
  return total;
}

struct StreamShape {
  int64_t tokens, n, width;
};

StreamShape check_streams_tensor(const at::Tensor& x) {
  check_input(x, "x", 3);
  return {x.size(0), check_streams(x.size(1)), x.size(2)};
}

void check_per_token(const at::Tensor& x, const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  check_input(t, name, static_cast<int64_t>(shape.size()));
  check_same_dtype(x, t, name);
  TORCH_CHECK(t.sizes() == shape, "mhc_cpu: ", name, " has shape ", t.sizes(), ", expected ", shape);
}

template <typename T, int N>
struct Mix {
  // u = Σ_j h_pre[j] x_j
  static void pre_forward(const T* x, const T* h_pre, T* u, int64_t tokens, int64_t width) {
    at::parallel_for(0, tokens, kGrainTokens, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const T* xt = x + t * N * width;
        const T* h = h_pre + t * N;
        T* ut = u + t * width;
#pragma omp simd
        for (int64_t c = 0; c < width; ++c) {
          T total = 0;
          for (int j = 0; j < N; ++j) total += h[j] * xt[j * width + c];
          ut[c] = total;
        }
      }
    });
  }

  // ∂x_j = h_pre[j] ∂u,   ∂h_pre[j] = Σ_c x_j ∂u
  static void pre_backward(const T* grad_u, const T* x, const T* h_pre, T* grad_x, T* grad_h, int64_t tokens,
                           int64_t width) {
    at::parallel_for(0, tokens, kGrainTokens, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const T* gu = grad_u + t * width;
        for (int j = 0; j < N; ++j) {
          const int64_t row = (t * N + j) * width;
          const T h = h_pre[t * N + j];
          grad_h[t * N + j] = dot(x + row, gu, width);
          T* gx = grad_x + row;
#pragma omp simd
          for (int64_t c = 0; c < width; ++c) gx[c] = h * gu[c];
        }
      }
    });
  }

  // x'_i = Σ_j H[i, j] x_j + h_post[i] f
  static void post_res_forward(const T* x, const T* f, const T* h_post, const T* h_res, T* out, int64_t tokens,
                               int64_t width) {
    at::parallel_for(0, tokens, kGrainTokens, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const T* xt = x + t * N * width;
        const T* ft = f + t * width;
        const T* hr = h_res + t * N * N;
        for (int i = 0; i < N; ++i) {
          const T w = h_post[t * N + i];
          T* o = out + (t * N + i) * width;
#pragma omp simd
          for (int64_t c = 0; c < width; ++c) {
            T total = w * ft[c];
            for (int j = 0; j < N; ++j) total += hr[i * N + j] * xt[j * width + c];
            o[c] = total;
          }
        }
      }
    });
  }

  // ∂x_j = Σ_i H[i, j] g_i,  ∂f = Σ_i h_post[i] g_i,  ∂h_post[i] = Σ_c g_i f,  ∂H[i, j] = Σ_c g_i x_j
  static void post_res_backward(const T* grad, const T* x, const T* f, const T* h_post, const T* h_res, T* grad_x,
                                T* grad_f, T* grad_post, T* grad_res, int64_t tokens, int64_t width) {
    at::parallel_for(0, tokens, kGrainTokens, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const T* gt = grad + t * N * width;
        const T* xt = x + t * N * width;
        const T* ft = f + t * width;
        const T* hr = h_res + t * N * N;
        const T* hp = h_post + t * N;
        for (int i = 0; i < N; ++i) {
          grad_post[t * N + i] = dot(gt + i * width, ft, width);
          for (int j = 0; j < N; ++j) grad_res[(t * N + i) * N + j] = dot(gt + i * width, xt + j * width, width);
        }
        T* gf = grad_f + t * width;
#pragma omp simd
        for (int64_t c = 0; c < width; ++c) {
          T total = 0;
          for (int i = 0; i < N; ++i) total += hp[i] * gt[i * width + c];
          gf[c] = total;
        }
        for (int j = 0; j < N; ++j) {
          T* gx = grad_x + (t * N + j) * width;
#pragma omp simd
          for (int64_t c = 0; c < width; ++c) {
            T total = 0;
            for (int i = 0; i < N; ++i) total += hr[i * N + j] * gt[i * width + c];
            gx[c] = total;
          }
        }
      }
    });
  }
};

at::Tensor pre_mix_fwd(const at::Tensor& x, const at::Tensor& h_pre) {
  const auto [tokens, n, width] = check_streams_tensor(x);
  check_per_token(x, h_pre, "h_pre", {tokens, n});
  at::Tensor u = at::empty({tokens, width}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mhc_cpu_pre_mix_fwd", [&] {
    with_streams(n, [&](auto streams) {
      Mix<scalar_t, decltype(streams)::value>::pre_forward(
          x.const_data_ptr<scalar_t>(), h_pre.const_data_ptr<scalar_t>(), u.mutable_data_ptr<scalar_t>(), tokens,
          width);
    });
  });
  return u;
}

std::tuple<at::Tensor, at::Tensor> pre_mix_bwd(const at::Tensor& grad_u, const at::Tensor& x, const at::Tensor& h_pre) {
  const auto [tokens, n, width] = check_streams_tensor(x);
  check_per_token(x, h_pre, "h_pre", {tokens, n});
  check_per_token(x, grad_u, "grad_u", {tokens, width});
  at::Tensor grad_x = at::empty_like(x), grad_h = at::empty_like(h_pre);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mhc_cpu_pre_mix_bwd", [&] {
    with_streams(n, [&](auto streams) {
      Mix<scalar_t, decltype(streams)::value>::pre_backward(
          grad_u.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), h_pre.const_data_ptr<scalar_t>(),
          grad_x.mutable_data_ptr<scalar_t>(), grad_h.mutable_data_ptr<scalar_t>(), tokens, width);
    });
  });
  return {grad_x, grad_h};
}

at::Tensor post_res_mix_fwd(const at::Tensor& x, const at::Tensor& f, const at::Tensor& h_post, const at::Tensor& h_res) {
  const auto [tokens, n, width] = check_streams_tensor(x);
  check_per_token(x, f, "f", {tokens, width});
  check_per_token(x, h_post, "h_post", {tokens, n});
  check_per_token(x, h_res, "h_res", {tokens, n, n});
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mhc_cpu_post_res_mix_fwd", [&] {
    with_streams(n, [&](auto streams) {
      Mix<scalar_t, decltype(streams)::value>::post_res_forward(
          x.const_data_ptr<scalar_t>(), f.const_data_ptr<scalar_t>(), h_post.const_data_ptr<scalar_t>(),
          h_res.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), tokens, width);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> post_res_mix_bwd(const at::Tensor& grad,
                                                                          const at::Tensor& x, const at::Tensor& f,
                                                                          const at::Tensor& h_post,
                                                                          const at::Tensor& h_res) {
  const auto [tokens, n, width] = check_streams_tensor(x);
  check_per_token(x, grad, "grad", {tokens, n, width});
  check_per_token(x, f, "f", {tokens, width});
  check_per_token(x, h_post, "h_post", {tokens, n});
  check_per_token(x, h_res, "h_res", {tokens, n, n});
  at::Tensor grad_x = at::empty_like(x), grad_f = at::empty_like(f);
  at::Tensor grad_post = at::empty_like(h_post), grad_res = at::empty_like(h_res);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mhc_cpu_post_res_mix_bwd", [&] {
    with_streams(n, [&](auto streams) {
      Mix<scalar_t, decltype(streams)::value>::post_res_backward(
          grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), f.const_data_ptr<scalar_t>(),
          h_post.const_data_ptr<scalar_t>(), h_res.const_data_ptr<scalar_t>(), grad_x.mutable_data_ptr<scalar_t>(),
          grad_f.mutable_data_ptr<scalar_t>(), grad_post.mutable_data_ptr<scalar_t>(),
          grad_res.mutable_data_ptr<scalar_t>(), tokens, width);
    });
  });
  return {grad_x, grad_f, grad_post, grad_res};
}

}  // namespace

TORCH_LIBRARY(mhc_cpu, m) {
  m.def("sinkhorn_fwd(Tensor logits, int iters, bool deepseek, float eps) -> Tensor");
  m.def("sinkhorn_bwd(Tensor grad, Tensor logits, int iters, bool deepseek, float eps) -> Tensor");
  m.def("pre_mix_fwd(Tensor x, Tensor h_pre) -> Tensor");
  m.def("pre_mix_bwd(Tensor grad_u, Tensor x, Tensor h_pre) -> (Tensor, Tensor)");
  m.def("post_res_mix_fwd(Tensor x, Tensor f, Tensor h_post, Tensor h_res) -> Tensor");
  m.def("post_res_mix_bwd(Tensor grad, Tensor x, Tensor f, Tensor h_post, Tensor h_res) -> "
        "(Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mhc_cpu, CPU, m) {
  m.impl("sinkhorn_fwd", &sinkhorn_fwd);
  m.impl("sinkhorn_bwd", &sinkhorn_bwd);
  m.impl("pre_mix_fwd", &pre_mix_fwd);
  m.impl("pre_mix_bwd", &pre_mix_bwd);
  m.impl("post_res_mix_fwd", &post_res_mix_fwd);
  m.impl("post_res_mix_bwd", &post_res_mix_bwd);
}
