// Fused CPU kernels of the mHC primitive ops (the `cpp` backend; Python side in kernels/cpu_ops.py).
//
// Why they exist: the eager PyTorch reference (kernels/reference.py) runs each op as a chain of tensor-wide
// passes. On CPU the Sinkhorn projection is ~300 tiny ops over (n, n, T) tensors and the mixes are batched
// matmuls of (n × n)·(n × C) per token; one mHC connection cost ≈ 22 ms forward + backward at T = 4096,
// n = 4, C = 96 (2 cores), most of the mHC step overhead. Here every op is one loop over tokens
// (at::parallel_for, torch's own thread pool and thread count), and each token's n × n matrix and its
// n rows of C live in L1: Sinkhorn forward and backward run in registers/stack, the backward recomputes the
// iterations from the saved logits (as the Triton kernel and the reference's hand-written reverse pass do).
// mHC's whole read side (coefficients, Sinkhorn, pre-mix) is also one kernel each way (`Read`).
//
// Layouts (all contiguous, float32 or float64; the Python wrappers promote and check):
//   logits, H_res  (T, n, n)  H_res left-multiplies the streams: x'_i = Σ_j H[i, j] x_j + h_post[i] f
//   x, grad_x      (T, n, C)  the n residual streams
//   f, u           (T, C)     the sublayer output / input
//   h_pre, h_post  (T, n)
// Equations and conventions: kernels/reference.py (the ground truth these must match).
//
// Only standard headers and the light ATen / torch::library headers are included: the JIT build
// (kernels/cpu_build.py, ≈ 1 minute on 2 cores) spends its time on the kernels' templates (n = 1..8 ×
// float32 / float64), not on the ≈ 40 s that parsing torch/extension.h adds.

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
#include <type_traits>
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
  // What a Block / Rows parameter decays to, declared non-aliasing so that the lane loops vectorise.
  using BlockRef = T (*__restrict__)[kLanes];
  using RowsRef = T (*__restrict__)[kLanes];

  // Gather (or scatter) the matrices of tokens [t, t + count) into (from) lane-major form; missing lanes
  // repeat the first token so that they stay finite.
  static void gather(const T* __restrict__ src, int64_t t, int count, BlockRef out) {
    for (int l = 0; l < kLanes; ++l) {
      const T* m = src + (t + (l < count ? l : 0)) * NN;
      for (int k = 0; k < NN; ++k) out[k][l] = m[k];
    }
  }

  static void scatter(const T (*__restrict__ in)[kLanes], int64_t t, int count, T* __restrict__ dst) {
    for (int l = 0; l < count; ++l) {
      T* m = dst + (t + l) * NN;
      for (int k = 0; k < NN; ++k) m[k] = in[k][l];
    }
  }

  // The starting matrix m0 from the logits (in place); `probs` receives the softmax (deepseek-v4 only).
  static void start(const SinkhornPlan& plan, BlockRef m, BlockRef probs) {
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
  static void step(bool columns, T floor, BlockRef m, RowsRef d) {
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

  // Project a block of logits in place: m ← Sinkhorn(m).
  static void project(const SinkhornPlan& plan, BlockRef m) {
    Block probs;
    Rows d;
    start(plan, m, probs);
    for (int64_t s = 0; s < plan.steps; ++s) step(plan.normalises_columns(s), floor_of(plan), m, d);
  }

  // Scratch of one thread's backward: the iterates y and divisors d of every step, for one block.
  struct Workspace {
    std::vector<T> iterates, divisors;
    explicit Workspace(const SinkhornPlan& plan) : iterates(plan.steps * NN * kLanes), divisors(plan.steps * N * kLanes) {}
    Block& y(int64_t s) { return reinterpret_cast<Block*>(iterates.data())[s]; }
    Rows& d(int64_t s) { return reinterpret_cast<Rows*>(divisors.data())[s]; }
  };

  // Vector-Jacobian product of one block. `m0` holds the logits on entry (and the start matrix after);
  // recompute the iterates, then walk the steps backwards with ∂m = (∂y − Σ_axis(∂y ⊙ y)) / d, and finish
  // with the start's product: paper ∂L = m0 ⊙ ∂m0; deepseek-v4 ∂P[j][i] = ∂m0[i][j], ∂L = P ⊙ (∂P − Σ_row(∂P ⊙ P)).
  static void vjp(const SinkhornPlan& plan, BlockRef m0, BlockRef g, BlockRef out, Workspace& work) {
    Block probs;
    start(plan, m0, probs);
    const T* previous = &m0[0][0];
    for (int64_t s = 0; s < plan.steps; ++s) {
      std::copy(previous, previous + NN * kLanes, &work.y(s)[0][0]);
      step(plan.normalises_columns(s), floor_of(plan), work.y(s), work.d(s));
      previous = &work.y(s)[0][0];
    }
    for (int64_t s = plan.steps - 1; s >= 0; --s) {
      const bool columns = plan.normalises_columns(s);
      const Block& y = work.y(s);
      const Rows& d = work.d(s);
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
      return;
    }
    for (int a = 0; a < N; ++a) {
      T dot[kLanes] = {};
      for (int b = 0; b < N; ++b)
        for (int l = 0; l < kLanes; ++l) dot[l] += g[b * N + a][l] * probs[a * N + b][l];
      for (int b = 0; b < N; ++b)
        for (int l = 0; l < kLanes; ++l) out[a * N + b][l] = probs[a * N + b][l] * (g[b * N + a][l] - dot[l]);
    }
  }

  static void forward(const SinkhornPlan& plan, const T* logits, T* out, int64_t tokens) {
    at::parallel_for(0, tokens, kGrainTokens, [&](int64_t begin, int64_t end) {
      Block m;
      for (int64_t t = begin; t < end; t += kLanes) {
        const int count = static_cast<int>(std::min<int64_t>(kLanes, end - t));
        gather(logits, t, count, m);
        project(plan, m);
        scatter(m, t, count, out);
      }
    });
  }

  static void backward(const SinkhornPlan& plan, const T* grad_out, const T* logits, T* grad_logits,
                       int64_t tokens) {
    at::parallel_for(0, tokens, kGrainTokens, [&](int64_t begin, int64_t end) {
      Workspace work(plan);
      Block m, g, out;
      for (int64_t t = begin; t < end; t += kLanes) {
        const int count = static_cast<int>(std::min<int64_t>(kLanes, end - t));
        gather(logits, t, count, m);
        gather(grad_out, t, count, g);
        vjp(plan, m, g, out, work);
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

// out[c] = Σ_r w[r] · rows[r·width + c] over R contiguous rows of one token: a stream mix (u = Σ_j h_pre[j] x_j),
// or the mixes' gradients (∂f = Σ_i h_post[i] ∂x'_i, ∂x_j = Σ_i H[i, j] ∂x'_i).
template <typename T, int R>
void combine_rows(const T* rows, const T* w, T* out, int64_t width) {
#pragma omp simd
  for (int64_t c = 0; c < width; ++c) {
    T total = 0;
    for (int r = 0; r < R; ++r) total += w[r] * rows[r * width + c];
    out[c] = total;
  }
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
      for (int64_t t = begin; t < end; ++t) combine_rows<T, N>(x + t * N * width, h_pre + t * N, u + t * width, width);
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
        combine_rows<T, N>(gt, hp, grad_f + t * width, width);
        for (int j = 0; j < N; ++j) {
          T column[N];  // H[:, j]
          for (int i = 0; i < N; ++i) column[i] = hr[i * N + j];
          combine_rows<T, N>(gt, column, grad_x + (t * N + j) * width, width);
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

// ---------------------------------------------------------------------------------------------------------
// The fused mHC read: coefficients (x·φ and Σx² in one pass over x, α/r scale, bias, σ, 2σ), Sinkhorn and the
// pre-mix, token block by token block. Forward reads x once; backward reads it once and writes one ∂x, where
// the composition of the primitive ops reads x four times and writes three (T, n·C) gradients that autograd
// then sums. Columns of the M = 2n + n² logits: [pre (n) | post (n) | res (n²)], gated by α = (α_pre, α_post,
// α_res). ∂φ = xᵀ ∂p and the α / bias sums over tokens are left to BLAS and torch (kernels/cpu_ops.py).

template <typename T, int N>
struct Read {
  static constexpr int NN = N * N;
  static constexpr int M = 2 * N + NN;
  using SK = Sinkhorn<T, N>;

  static int group_of(int m) { return m < N ? 0 : (m < 2 * N ? 1 : 2); }
  static T sigmoid(T v) { return T(1) / (T(1) + std::exp(-v)); }

  // proj = x·φ for one token (φ row-major (K, M)): four independent accumulator rows keep the FMA chains short.
  static void project_row(const T* xt, const T* phi, int64_t K, T* proj) {
    T acc[4][M] = {};
    int64_t k = 0;
    for (; k + 4 <= K; k += 4)
      for (int r = 0; r < 4; ++r) axpy_row(acc[r], xt[k + r], phi + (k + r) * M);
    for (; k < K; ++k) axpy_row(acc[0], xt[k], phi + k * M);
    for (int m = 0; m < M; ++m) proj[m] = (acc[0][m] + acc[1][m]) + (acc[2][m] + acc[3][m]);
  }

  static void axpy_row(T* acc, T w, const T* row) {
#pragma omp simd
    for (int m = 0; m < M; ++m) acc[m] += w * row[m];
  }

  static void forward(const T* x, const T* phi, const T* alpha, const T* bias, T norm_eps, T pre_eps,
                      const SinkhornPlan& plan, T* u, T* h_pre, T* h_post, T* h_res, T* scaled, T* inv_rms,
                      int64_t tokens, int64_t width) {
    const int64_t K = N * width;
    at::parallel_for(0, tokens, kGrainTokens, [&](int64_t begin, int64_t end) {
      typename SK::Block block;
      for (int64_t t0 = begin; t0 < end; t0 += kLanes) {
        const int count = static_cast<int>(std::min<int64_t>(kLanes, end - t0));
        for (int l = 0; l < count; ++l) {
          const int64_t t = t0 + l;
          const T* xt = x + t * K;
          T proj[M];
          project_row(xt, phi, K, proj);
          const T inv = T(1) / std::sqrt(dot(xt, xt, K) / static_cast<T>(K) + norm_eps);
          inv_rms[t] = inv;
          for (int m = 0; m < M; ++m) {
            const T z = proj[m] * inv;
            scaled[t * M + m] = z;
            const T logit = alpha[group_of(m)] * z + bias[m];
            if (m < N)
              h_pre[t * N + m] = sigmoid(logit) + pre_eps;
            else if (m < 2 * N)
              h_post[t * N + m - N] = T(2) * sigmoid(logit);
            else
              block[m - 2 * N][l] = logit;
          }
          combine_rows<T, N>(xt, h_pre + t * N, u + t * width, width);
        }
        for (int l = count; l < kLanes; ++l)
          for (int k = 0; k < NN; ++k) block[k][l] = block[k][0];
        SK::project(plan, block);
        SK::scatter(block, t0, count, h_res);
      }
    });
  }

  // ∂x = h_pre ⊗ ∂u + φ ∂p − c·x for one token, with φᵀ row-major (M, K); four φᵀ rows per sweep over ∂x.
  static void grad_x_row(const T* xt, const T* gu, const T* hp, const T* phi_t, const T* gp, T coef, T* gx,
                         int64_t width) {
    const int64_t K = N * width;
    for (int j = 0; j < N; ++j) scale_sub_row(gx + j * width, hp[j], gu, coef, xt + j * width, width);
    int m = 0;
    for (; m + 4 <= M; m += 4) {
      const T *p0 = phi_t + m * K, *p1 = p0 + K, *p2 = p1 + K, *p3 = p2 + K;
      const T w0 = gp[m], w1 = gp[m + 1], w2 = gp[m + 2], w3 = gp[m + 3];
#pragma omp simd
      for (int64_t k = 0; k < K; ++k) gx[k] += (w0 * p0[k] + w1 * p1[k]) + (w2 * p2[k] + w3 * p3[k]);
    }
    for (; m < M; ++m) {
      const T* pm = phi_t + m * K;
      const T w = gp[m];
#pragma omp simd
      for (int64_t k = 0; k < K; ++k) gx[k] += w * pm[k];
    }
  }

  // out = h·gu − coef·x over one row of C.
  static void scale_sub_row(T* out, T h, const T* gu, T coef, const T* xj, int64_t width) {
#pragma omp simd
    for (int64_t c = 0; c < width; ++c) out[c] = h * gu[c] - coef * xj[c];
  }

  static void backward(const T* grad_u, const T* grad_post, const T* grad_res, const T* x, const T* phi_t,
                       const T* alpha, const T* bias, const T* scaled, const T* inv_rms, const T* h_pre,
                       const T* h_post, T pre_eps, const SinkhornPlan& plan, T* grad_x, T* grad_logits, T* grad_p,
                       int64_t tokens, int64_t width) {
    const int64_t K = N * width;
    at::parallel_for(0, tokens, kGrainTokens, [&](int64_t begin, int64_t end) {
      typename SK::Workspace work(plan);
      typename SK::Block logits, g, out;
      for (int64_t t0 = begin; t0 < end; t0 += kLanes) {
        const int count = static_cast<int>(std::min<int64_t>(kLanes, end - t0));
        for (int l = 0; l < kLanes; ++l) {
          const int64_t t = t0 + (l < count ? l : 0);
          for (int k = 0; k < NN; ++k) {
            logits[k][l] = alpha[2] * scaled[t * M + 2 * N + k] + bias[2 * N + k];
            g[k][l] = grad_res[t * NN + k];
          }
        }
        SK::vjp(plan, logits, g, out, work);
        for (int l = 0; l < count; ++l) {
          const int64_t t = t0 + l;
          const T* xt = x + t * K;
          const T* gu = grad_u + t * width;
          T gl[M];
          for (int j = 0; j < N; ++j) {
            const T s = h_pre[t * N + j] - pre_eps;
            gl[j] = dot(xt + j * width, gu, width) * s * (T(1) - s);
            const T q = h_post[t * N + j] / T(2);
            gl[N + j] = grad_post[t * N + j] * T(2) * q * (T(1) - q);
          }
          for (int k = 0; k < NN; ++k) gl[2 * N + k] = out[k][l];
          const T inv = inv_rms[t];
          T gp[M], grad_inv_times_inv = 0;  // Σ_m ∂z ⊙ p · r⁻¹ = Σ_m ∂z ⊙ z
          for (int m = 0; m < M; ++m) {
            grad_logits[t * M + m] = gl[m];
            const T gz = alpha[group_of(m)] * gl[m];
            gp[m] = gz * inv;
            grad_p[t * M + m] = gp[m];
            grad_inv_times_inv += gz * scaled[t * M + m];
          }
          // ∂x gets −(∂r⁻¹ · r⁻³ / K) x with ∂r⁻¹ = Σ ∂z ⊙ p = (Σ ∂z ⊙ z) / r⁻¹.
          const T coef = grad_inv_times_inv * inv * inv / static_cast<T>(K);
          grad_x_row(xt, gu, h_pre + t * N, phi_t, gp, coef, grad_x + t * K, width);
        }
      }
    });
  }
};

void check_read_params(const at::Tensor& x, const at::Tensor& phi, const at::Tensor& alpha, const at::Tensor& bias) {
  const auto [tokens, n, width] = check_streams_tensor(x);
  const int64_t columns = 2 * n + n * n;
  check_per_token(x, phi, "phi", {n * width, columns});
  check_per_token(x, alpha, "alpha", {3});
  check_per_token(x, bias, "bias", {columns});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> mhc_read_fwd(
    const at::Tensor& x, const at::Tensor& phi, const at::Tensor& alpha, const at::Tensor& bias, double eps,
    double pre_eps, int64_t iters, bool deepseek) {
  check_read_params(x, phi, alpha, bias);
  TORCH_CHECK(iters >= 0, "mhc_cpu: sinkhorn iterations (", iters, ") must be >= 0");
  const auto [tokens, n, width] = check_streams_tensor(x);
  const SinkhornPlan plan(iters, deepseek, eps);
  at::Tensor u = at::empty({tokens, width}, x.options());
  at::Tensor h_pre = at::empty({tokens, n}, x.options()), h_post = at::empty({tokens, n}, x.options());
  at::Tensor h_res = at::empty({tokens, n, n}, x.options());
  at::Tensor scaled = at::empty({tokens, 2 * n + n * n}, x.options()), inv_rms = at::empty({tokens}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mhc_cpu_read_fwd", [&] {
    with_streams(n, [&](auto streams) {
      Read<scalar_t, decltype(streams)::value>::forward(
          x.const_data_ptr<scalar_t>(), phi.const_data_ptr<scalar_t>(), alpha.const_data_ptr<scalar_t>(),
          bias.const_data_ptr<scalar_t>(), static_cast<scalar_t>(eps), static_cast<scalar_t>(pre_eps), plan,
          u.mutable_data_ptr<scalar_t>(), h_pre.mutable_data_ptr<scalar_t>(), h_post.mutable_data_ptr<scalar_t>(),
          h_res.mutable_data_ptr<scalar_t>(), scaled.mutable_data_ptr<scalar_t>(), inv_rms.mutable_data_ptr<scalar_t>(),
          tokens, width);
    });
  });
  return {u, h_pre, h_post, h_res, scaled, inv_rms};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> mhc_read_bwd(
    const at::Tensor& grad_u, const at::Tensor& grad_post, const at::Tensor& grad_res, const at::Tensor& x,
    const at::Tensor& phi, const at::Tensor& alpha, const at::Tensor& bias, const at::Tensor& scaled,
    const at::Tensor& inv_rms, const at::Tensor& h_pre, const at::Tensor& h_post, double eps, double pre_eps,
    int64_t iters, bool deepseek) {
  check_read_params(x, phi, alpha, bias);
  const auto [tokens, n, width] = check_streams_tensor(x);
  const int64_t columns = 2 * n + n * n;
  check_per_token(x, grad_u, "grad_u", {tokens, width});
  check_per_token(x, grad_post, "grad_post", {tokens, n});
  check_per_token(x, grad_res, "grad_res", {tokens, n, n});
  check_per_token(x, scaled, "scaled", {tokens, columns});
  check_per_token(x, inv_rms, "inv_rms", {tokens});
  check_per_token(x, h_pre, "h_pre", {tokens, n});
  check_per_token(x, h_post, "h_post", {tokens, n});
  const SinkhornPlan plan(iters, deepseek, eps);
  at::Tensor phi_t = phi.t().contiguous();
  at::Tensor grad_x = at::empty_like(x), grad_logits = at::empty_like(scaled), grad_p = at::empty_like(scaled);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mhc_cpu_read_bwd", [&] {
    with_streams(n, [&](auto streams) {
      Read<scalar_t, decltype(streams)::value>::backward(
          grad_u.const_data_ptr<scalar_t>(), grad_post.const_data_ptr<scalar_t>(), grad_res.const_data_ptr<scalar_t>(),
          x.const_data_ptr<scalar_t>(), phi_t.const_data_ptr<scalar_t>(), alpha.const_data_ptr<scalar_t>(),
          bias.const_data_ptr<scalar_t>(), scaled.const_data_ptr<scalar_t>(), inv_rms.const_data_ptr<scalar_t>(),
          h_pre.const_data_ptr<scalar_t>(), h_post.const_data_ptr<scalar_t>(), static_cast<scalar_t>(pre_eps), plan,
          grad_x.mutable_data_ptr<scalar_t>(), grad_logits.mutable_data_ptr<scalar_t>(),
          grad_p.mutable_data_ptr<scalar_t>(), tokens, width);
    });
  });
  return {grad_x, grad_logits, grad_p};
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
  m.def("mhc_read_fwd(Tensor x, Tensor phi, Tensor alpha, Tensor bias, float eps, float pre_eps, int iters, "
        "bool deepseek) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("mhc_read_bwd(Tensor grad_u, Tensor grad_post, Tensor grad_res, Tensor x, Tensor phi, Tensor alpha, "
        "Tensor bias, Tensor scaled, Tensor inv_rms, Tensor h_pre, Tensor h_post, float eps, float pre_eps, "
        "int iters, bool deepseek) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mhc_cpu, CPU, m) {
  m.impl("sinkhorn_fwd", &sinkhorn_fwd);
  m.impl("sinkhorn_bwd", &sinkhorn_bwd);
  m.impl("pre_mix_fwd", &pre_mix_fwd);
  m.impl("pre_mix_bwd", &pre_mix_bwd);
  m.impl("post_res_mix_fwd", &post_res_mix_fwd);
  m.impl("post_res_mix_bwd", &post_res_mix_bwd);
  m.impl("mhc_read_fwd", &mhc_read_fwd);
  m.impl("mhc_read_bwd", &mhc_read_bwd);
}
