// y = x W^T + b for a few rows of x, streaming W from memory once: the decode step's linear layers.
//
// W (N, K) is stored as one flat array (`pack` in small_batch_linear.py): floor(N/16) blocks of 16 output
// columns, each K x 16 contiguous, then the last N % 16 rows of W as they are (row-major). A block is one
// sequential stream, and one 16-float vector of it feeds an FMA for every row of x, so nothing is reduced
// across lanes and each weight byte is read once per call. Up to 8 rows of x are kept in registers per
// pass (8 + 8 accumulators); more rows (a prefill) go 8 at a time over two blocks at once (16 accumulators,
// fewer loads per FMA), each pair then read again from the core's cache, not from memory.
// Two threads split the blocks (at::parallel_for: torch's own OpenMP pool, no second runtime).
// GCC's vector extension compiles to AVX-512 or to two AVX2 halves, whichever -march=native has.
// Software prefetch into L2 (hint 2) PREFETCH rows ahead: measured on the 2-core Xeon (gpt2's matrices,
// batch 1-8) it lifted batch 4 and 8 from 0.8 to ~1.0 of the read probe; hint 0 (non-temporal) halved it.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace {

constexpr int64_t LANES = 16;
constexpr int64_t PREFETCH = 128;  // rows of a block (128 x 64 bytes = 8 KiB) ahead
constexpr int MAX_ROWS = 8;

typedef float v16 __attribute__((vector_size(64), aligned(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));

// Every block is 16 whole columns (the last N % 16 go to tail_rows): y and the bias are read and written whole.
inline void store(float* y, v16 r) { *(v16u*)y = r; }

inline v16 bias_at(const float* bias, int64_t n0) { return bias ? *(const v16u*)(bias + n0) : (v16){0}; }

// Rows [0, R) of x (R <= 8) times one block: acc over even k, acc2 over odd k (two FMA chains each).
template <int R>
void rows_by_block(const float* x, int64_t K, const float* w, const float* bias, float* y, int64_t N, int64_t n0) {
  v16 acc[R], acc2[R];
  for (int r = 0; r < R; ++r) acc[r] = acc2[r] = (v16){0};
  int64_t k = 0;
  for (; k + 3 < K; k += 4) {
    for (int j = 0; j < 4; ++j) __builtin_prefetch(w + (k + PREFETCH + j) * LANES, 0, 2);
    v16 w0 = *(const v16*)(w + k * LANES), w1 = *(const v16*)(w + (k + 1) * LANES);
    v16 w2 = *(const v16*)(w + (k + 2) * LANES), w3 = *(const v16*)(w + (k + 3) * LANES);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float* xr = x + r * K + k;
      acc[r] += xr[0] * w0;
      acc2[r] += xr[1] * w1;
      acc[r] += xr[2] * w2;
      acc2[r] += xr[3] * w3;
    }
  }
  for (; k < K; ++k) {
    v16 w0 = *(const v16*)(w + k * LANES);
    for (int r = 0; r < R; ++r) acc[r] += x[r * K + k] * w0;
  }
  v16 b = bias_at(bias, n0);
  for (int r = 0; r < R; ++r) store(y + r * N + n0, acc[r] + acc2[r] + b);
}

// One or two rows of x times two neighbouring blocks: two streams per thread, four FMA chains per row
// (batch 1-2, where one block's single stream left bandwidth unused: gpt2's matrices at batch 1 went
// from 0.90 to 0.96 of the read probe, smollm2-135m's from 0.84 to 0.92; at batch 4 it was slower).
template <int R>
void rows_by_two_blocks(const float* x, int64_t K, const float* w, const float* bias, float* y, int64_t N, int64_t n0) {
  const float* u = w + K * LANES;
  v16 a[R], a2[R], c[R], c2[R];
  for (int r = 0; r < R; ++r) a[r] = a2[r] = c[r] = c2[r] = (v16){0};
  int64_t k = 0;
  for (; k + 1 < K; k += 2) {
    __builtin_prefetch(w + (k + PREFETCH) * LANES, 0, 2);
    __builtin_prefetch(w + (k + PREFETCH + 1) * LANES, 0, 2);
    __builtin_prefetch(u + (k + PREFETCH) * LANES, 0, 2);
    __builtin_prefetch(u + (k + PREFETCH + 1) * LANES, 0, 2);
    v16 w0 = *(const v16*)(w + k * LANES), w1 = *(const v16*)(w + (k + 1) * LANES);
    v16 u0 = *(const v16*)(u + k * LANES), u1 = *(const v16*)(u + (k + 1) * LANES);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      float x0 = x[r * K + k], x1 = x[r * K + k + 1];
      a[r] += x0 * w0;
      c[r] += x0 * u0;
      a2[r] += x1 * w1;
      c2[r] += x1 * u1;
    }
  }
  for (; k < K; ++k) {
    v16 w0 = *(const v16*)(w + k * LANES), u0 = *(const v16*)(u + k * LANES);
    for (int r = 0; r < R; ++r) {
      a[r] += x[r * K + k] * w0;
      c[r] += x[r * K + k] * u0;
    }
  }
  v16 b0 = bias_at(bias, n0), b1 = bias_at(bias, n0 + LANES);
  for (int r = 0; r < R; ++r) {
    store(y + r * N + n0, a[r] + a2[r] + b0);
    store(y + r * N + n0 + LANES, c[r] + c2[r] + b1);
  }
}

// Eight rows of x times two neighbouring blocks (32 columns): the prefill's tile, 16 FMAs per 10 loads.
void eight_rows_by_two_blocks(const float* x, int64_t K, const float* w, const float* bias, float* y, int64_t N,
                              int64_t n0) {
  const float* u = w + K * LANES;
  v16 a[MAX_ROWS], c[MAX_ROWS];
  for (int r = 0; r < MAX_ROWS; ++r) a[r] = c[r] = (v16){0};
  for (int64_t k = 0; k < K; ++k) {
    v16 w0 = *(const v16*)(w + k * LANES), u0 = *(const v16*)(u + k * LANES);
#pragma GCC unroll 8
    for (int r = 0; r < MAX_ROWS; ++r) {
      float xr = x[r * K + k];
      a[r] += xr * w0;
      c[r] += xr * u0;
    }
  }
  v16 b0 = bias_at(bias, n0), b1 = bias_at(bias, n0 + LANES);
  for (int r = 0; r < MAX_ROWS; ++r) {
    store(y + r * N + n0, a[r] + b0);
    store(y + r * N + n0 + LANES, c[r] + b1);
  }
}

// The last N % 16 rows of W, row-major after the blocks: plain dot products (a vocabulary's odd rows).
void tail_rows(const float* x, int64_t M, int64_t K, const float* tail, const float* bias, float* y, int64_t N,
               int64_t n0) {
  for (int64_t j = n0; j < N; ++j) {
    const float* wj = tail + (j - n0) * K;
    for (int64_t m = 0; m < M; ++m) {
      float sum = bias ? bias[j] : 0.0f;
      for (int64_t k = 0; k < K; ++k) sum += x[m * K + k] * wj[k];
      y[m * N + j] = sum;
    }
  }
}

void chunk_by_block(int64_t rows, const float* x, int64_t K, const float* w, const float* bias, float* y, int64_t N,
                    int64_t n0) {
  switch (rows) {
    case 1: return rows_by_block<1>(x, K, w, bias, y, N, n0);
    case 2: return rows_by_block<2>(x, K, w, bias, y, N, n0);
    case 3: return rows_by_block<3>(x, K, w, bias, y, N, n0);
    case 4: return rows_by_block<4>(x, K, w, bias, y, N, n0);
    case 5: return rows_by_block<5>(x, K, w, bias, y, N, n0);
    case 6: return rows_by_block<6>(x, K, w, bias, y, N, n0);
    case 7: return rows_by_block<7>(x, K, w, bias, y, N, n0);
    default: return rows_by_block<8>(x, K, w, bias, y, N, n0);
  }
}

at::Tensor small_batch_linear(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                              int64_t N) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_cpu(), "small_batch_linear: x (M, K) float32 on the CPU");
  TORCH_CHECK(packed.dim() == 1 && packed.is_contiguous() && packed.scalar_type() == at::kFloat,
              "small_batch_linear: packed weight flat (N * K,) contiguous float32");
  const int64_t M = x.size(0), K = x.size(1), blocks = N / LANES;
  TORCH_CHECK(packed.numel() == N * K, "small_batch_linear: shapes do not match");
  const float* b = nullptr;
  at::Tensor bias_c;
  if (bias.has_value() && bias->defined()) {
    bias_c = bias->contiguous();
    TORCH_CHECK(bias_c.numel() == N && bias_c.scalar_type() == at::kFloat, "small_batch_linear: bias (N,) float32");
    b = bias_c.data_ptr<float>();
  }
  at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty({M, N}, x.options());
  const float* xp = xc.data_ptr<float>();
  const float* wp = packed.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  if (M <= 2) {  // a decode step at batch 1-2: one pass over W, two blocks at a time
    at::parallel_for(0, (blocks + 1) / 2, 1, [&](int64_t first, int64_t last) {
      for (int64_t pair = first; pair < last; ++pair) {
        int64_t blk = 2 * pair;
        const float* wb = wp + blk * K * LANES;
        if (blk + 1 == blocks) {
          chunk_by_block(M, xp, K, wb, b, yp, N, blk * LANES);
          continue;
        }
        switch (M) {
          case 1: rows_by_two_blocks<1>(xp, K, wb, b, yp, N, blk * LANES); break;
          default: rows_by_two_blocks<2>(xp, K, wb, b, yp, N, blk * LANES); break;
        }
      }
    });
  } else if (M <= MAX_ROWS) {  // batch 3-8: one pass over W, a block at a time (up to 16 accumulators)
    at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
      for (int64_t blk = first; blk < last; ++blk) chunk_by_block(M, xp, K, wp + blk * K * LANES, b, yp, N, blk * LANES);
    });
  } else {  // a prefill: pairs of blocks, 8 rows at a time, the pair kept in L2 across the rows
    at::parallel_for(0, (blocks + 1) / 2, 1, [&](int64_t first, int64_t last) {
      for (int64_t pair = first; pair < last; ++pair) {
        int64_t blk = 2 * pair;
        for (int64_t m = 0; m < M; m += MAX_ROWS) {
          int64_t rows = M - m < MAX_ROWS ? M - m : MAX_ROWS;
          const float* xm = xp + m * K;
          float* ym = yp + m * N;
          if (rows == MAX_ROWS && blk + 1 < blocks) {
            eight_rows_by_two_blocks(xm, K, wp + blk * K * LANES, b, ym, N, blk * LANES);
          } else {
            for (int64_t j = blk; j < blk + 2 && j < blocks; ++j) chunk_by_block(rows, xm, K, wp + j * K * LANES, b, ym, N, j * LANES);
          }
        }
      }
    });
  }
  if (N % LANES) tail_rows(xp, M, K, wp + blocks * K * LANES, b, yp, N, blocks * LANES);
  return y;
}

}  // namespace

TORCH_LIBRARY(kvbench, m) {
  m.def("small_batch_linear(Tensor x, Tensor packed, Tensor? bias, int n) -> Tensor");
}

TORCH_LIBRARY_IMPL(kvbench, CPU, m) { m.impl("small_batch_linear", &small_batch_linear); }
