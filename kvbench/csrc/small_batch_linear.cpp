// y = x @ w.T + b for a decode step's few rows of x, streaming w once at memory speed.
//
// A decode step multiplies M = batch rows (M <= 8) by every weight matrix. Library GEMMs are
// built for large M: they pack w into blocks first, which at small M costs a second pass over
// weights that are read exactly once per step, so on a 2-core AVX2 CPU they fall to a third of the
// memory bandwidth at M = 8. This kernel reads w (N, K), row-major as nn.Linear stores it, once:
// R rows of w are streamed together (several streams keep more cache-line fetches in flight than
// one), and each R-row block is applied to the rows of x in groups of G, the block staying in L1/L2
// between groups. R x G accumulators must fit AVX2's 16 vector registers with room for the loads.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>
#include <immintrin.h>

namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// G rows of x (from x0) times R rows of w (from n) over all of K, into y.
template <int G, int R>
void tile(const float* x0, const float* w, float* y, const float* b, int64_t K, int64_t N, int64_t n) {
  __m256 acc[G][R];
  for (int g = 0; g < G; ++g)
    for (int r = 0; r < R; ++r) acc[g][r] = _mm256_setzero_ps();
  const int64_t K8 = K - K % 8;
  for (int64_t k = 0; k < K8; k += 8) {
    __m256 wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm256_loadu_ps(w + (n + r) * K + k);
    for (int g = 0; g < G; ++g) {
      const __m256 xv = _mm256_loadu_ps(x0 + g * K + k);
      for (int r = 0; r < R; ++r) acc[g][r] = _mm256_fmadd_ps(xv, wv[r], acc[g][r]);
    }
  }
  for (int g = 0; g < G; ++g) {
    for (int r = 0; r < R; ++r) {
      float s = hsum(acc[g][r]);
      for (int64_t k = K8; k < K; ++k) s += x0[g * K + k] * w[(n + r) * K + k];
      y[g * N + n + r] = s + (b ? b[n + r] : 0.f);
    }
  }
}

// All M rows of x times w's rows [n0, n1) in blocks of R rows, x taken G rows at a time.
template <int R, int G>
void rows(const float* x, const float* w, float* y, const float* b, int64_t M, int64_t K, int64_t N, int64_t n0,
          int64_t n1) {
  int64_t n = n0;
  for (; n + R <= n1; n += R) {
    int64_t m = 0;
    for (; m + G <= M; m += G) tile<G, R>(x + m * K, w, y + m * N, b, K, N, n);
    for (; m < M; ++m) tile<1, R>(x + m * K, w, y + m * N, b, K, N, n);
  }
  for (; n < n1; ++n)
    for (int64_t m = 0; m < M; ++m) tile<1, 1>(x + m * K, w, y + m * N, b, K, N, n);
}

template <int R, int G>
void run(const float* x, const float* w, float* y, const float* b, int64_t M, int64_t K, int64_t N) {
  // Threads take contiguous runs of whole R-row blocks, so each streams its own part of w.
  at::parallel_for(0, N / R, 64, [&](int64_t i0, int64_t i1) {
    rows<R, G>(x, w, y, b, M, K, N, i0 * R, i1 * R);
  });
  if (N % R) rows<1, 1>(x, w, y, b, M, K, N, N - N % R, N);
}

}  // namespace

// x (M, K) and w (N, K) contiguous float32 on the CPU, M <= 8; bias (N,) or None. tile_rows,
// tile_cols: the (R, G) shape of the register tile, chosen by the caller per M.
at::Tensor small_batch_linear(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias,
                              int64_t tile_rows, int64_t tile_cols) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "small_batch_linear: x (M, K), w (N, K)");
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat, "small_batch_linear: float32 only");
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous(), "small_batch_linear: contiguous x and w");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(M >= 1 && M <= 8, "small_batch_linear: 1 to 8 rows");
  const float* b = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->is_contiguous() && bias->numel() == N && bias->scalar_type() == at::kFloat, "bias (N,)");
    b = bias->data_ptr<float>();
  }
  at::Tensor y = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t tile = tile_rows * 10 + tile_cols;
  switch (tile) {
    case 41: run<4, 1>(xp, wp, yp, b, M, K, N); break;
    case 42: run<4, 2>(xp, wp, yp, b, M, K, N); break;
    case 43: run<4, 3>(xp, wp, yp, b, M, K, N); break;
    case 34: run<3, 4>(xp, wp, yp, b, M, K, N); break;
    case 24: run<2, 4>(xp, wp, yp, b, M, K, N); break;
    case 61: run<6, 1>(xp, wp, yp, b, M, K, N); break;
    case 62: run<6, 2>(xp, wp, yp, b, M, K, N); break;
    case 81: run<8, 1>(xp, wp, yp, b, M, K, N); break;
    default: TORCH_CHECK(false, "small_batch_linear: no tile ", tile_rows, "x", tile_cols);
  }
  return y;
}

TORCH_LIBRARY(kvbench, m) {
  m.def("small_batch_linear(Tensor x, Tensor w, Tensor? bias, int tile_rows, int tile_cols) -> Tensor");
}

TORCH_LIBRARY_IMPL(kvbench, CPU, m) { m.impl("small_batch_linear", &small_batch_linear); }

// Inference only: no gradient, and none is asked for.
TORCH_LIBRARY_IMPL(kvbench, Autograd, m) { m.impl("small_batch_linear", torch::CppFunction::makeFallthrough()); }
