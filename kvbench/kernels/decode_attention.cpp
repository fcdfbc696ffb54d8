// One query per head attending over a KV cache as it is stored: the decode step's attention, reading each
// cached byte once.
//
// A decode step's attention is a stream over the cache: every key row is read for one dot product per query
// head of its group, every value row for one weighted add. This kernel reads the rows in whatever form the
// cache keeps them and converts each 16 elements to floats in registers, never in memory:
//   - float32 rows (static, sliding; paged through its block table);
//   - int8 and float8 e4m3 codes with one fp32 scale per (token, head): the key scale multiplies the score,
//     the value scale the probability, so the codes are only converted, never dequantized;
//   - 4-bit codes as caches/int4.py packs them (KIVI: keys per channel over groups of tokens, values per
//     token over groups of channels, two codes a byte): a key group's scales fold into the query
//     (q . (c*s + z) = (q*s) . c + q . z), a value's into the probability.
// The query heads that share a K/V head (grouped-query attention) are scored together, so each row is read
// once for the whole group. The work is split over (sequence, K/V head, chunk of positions); each chunk keeps
// its own maximum, sum and weighted values and the chunks are merged at the end (flash-decoding's split), so a
// batch-1 step with three K/V heads still keeps both cores busy. Softmax is two passes over the chunk's scores
// (in L1), with a vectorized exp. torch's own OpenMP pool (at::parallel_for). GCC's vector extension compiles
// to AVX-512 or to two AVX2 halves, whichever -march=native has; fp8 uses the CPU's half-float conversion
// where it has AVX-512 and exact integer arithmetic elsewhere.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));
typedef int32_t i16 __attribute__((vector_size(64)));
typedef int8_t s8x16 __attribute__((vector_size(16), aligned(1)));
typedef uint8_t u8x16 __attribute__((vector_size(16), aligned(1)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

constexpr int MAX_CHUNKS = 16;    // D / 16: head sizes up to 256
constexpr int MAX_GROUP = 16;     // query heads per K/V head
constexpr int64_t MIN_SPLIT = 128;  // positions: a chunk shorter than this costs more to merge than it gains
constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

inline v16 load(const float* p) { return *(const v16u*)p; }
inline void store(float* p, v16 x) { *(v16u*)p = x; }

inline float hsum(v16 x) {
  v8 a = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7) + __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
  v4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

// exp(x) for x <= 0 (scores minus their maximum): 2^n times exp(f ln 2) as a degree-6 polynomial, n = x log2 e
// rounded to nearest (the 1.5 * 2^23 trick), f in [-0.5, 0.5]; relative error ~2e-7; below -87 the result is 0.
inline v16 exp_neg(v16 x) {
  const v16 zero = {0};
  i16 under = x < -87.0f;
  x = under ? zero - 87.0f : x;
  v16 t = x * 1.44269504088896341f;
  v16 n = (t + 12582912.0f) - 12582912.0f;
  v16 f = (t - n) * 0.69314718055994531f;
  v16 p = 1.0f + f * (1.0f + f * (0.5f + f * (1.0f / 6 + f * (1.0f / 24 + f * (1.0f / 120 + f * (1.0f / 720))))));
  i16 bits = (__builtin_convertvector(n, i16) + 127) << 23;
  v16 r = p * (v16)bits;
  return under ? zero : r;
}

// What one chunk leaves for the merge: per query head of the group, the scores' maximum, the sum of exp
// (score - max) and the weighted values (D floats).
struct Partial {
  float* data;  // (G, D + 2)
  int64_t D;
  float& max(int g) { return data[g * (D + 2)]; }
  float& sum(int g) { return data[g * (D + 2) + 1]; }
  float* out(int g) { return data + g * (D + 2) + 2; }
};

// Softmax numerators of a chunk's scores (G rows of n), in place; each row's maximum and sum into `part`.
void softmax_rows(float* s, int64_t n, int G, Partial part) {
  for (int g = 0; g < G; ++g) {
    float* row = s + g * n;
    float m = NEG_INF;
    for (int64_t t = 0; t < n; ++t) m = row[t] > m ? row[t] : m;
    float l = 0;
    if (m != NEG_INF) {
      int64_t t = 0;
      v16 acc = {0};
      for (; t + 16 <= n; t += 16) {
        v16 e = exp_neg(load(row + t) - m);
        store(row + t, e);
        acc += e;
      }
      l = hsum(acc);
      for (; t < n; ++t) l += row[t] = std::exp(row[t] - m);
    } else {
      for (int64_t t = 0; t < n; ++t) row[t] = 0;
    }
    part.max(g) = m, part.sum(g) = l;
  }
}

// 16 bytes widened to 16 int32 lanes (GCC's __builtin_convertvector does this one byte at a time).
inline i16 widen_s8(const void* p) {
#if defined(__AVX512F__)
  return (i16)_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p));
#else
  i16 r;
  for (int i = 0; i < 16; ++i) r[i] = ((const int8_t*)p)[i];
  return r;
#endif
}
inline i16 widen_u8(const void* p) {
#if defined(__AVX512F__)
  return (i16)_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)p));
#else
  i16 r;
  for (int i = 0; i < 16; ++i) r[i] = ((const uint8_t*)p)[i];
  return r;
#endif
}
inline v16 to_float(i16 x) { return __builtin_convertvector(x, v16); }

// 8-bit code decoders: 16 codes from p as floats, times `unit` (folded into the scale by the caller).
struct I8 {
  static constexpr float unit = 1.0f;
  static v16 at(const uint8_t* p) { return to_float(widen_s8(p)); }
};
// float8 e4m3: sign, 4 exponent bits (bias 7), 3 mantissa bits. Moved into a half float's bit positions (sign to
// bit 15, the rest shifted left by 7) it is the same number divided by 2^8 (bias 15 against 7), subnormals
// included; `unit` undoes the 2^8.
struct F8 {
  static constexpr float unit = 256.0f;
  static v16 at(const uint8_t* p) {
#if defined(__AVX512F__)
    __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)p));
    __m256i h = _mm256_or_si256(_mm256_and_si256(_mm256_slli_epi16(b, 8), _mm256_set1_epi16((short)0x8000)),
                                _mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x7F)), 7));
    return (v16)_mm512_cvtph_ps(h);
#else
    // Exact in integers: the magnitude is (8 + m) * 2^(e - 10) for e >= 1 and m * 2^-9 for e = 0 (over 2^8 here).
    i16 b = widen_u8(p);
    i16 e = (b >> 3) & 15, m = b & 7;
    i16 normal = e > 0;  // -1 where true
    i16 mant = m | (normal & 8);
    i16 pow2 = (e + 1 + normal + 109) << 23;  // 2^(max(e, 1) - 10 - 8)
    v16 mag = to_float(mant) * (v16)pow2;
    return (v16)((i16)mag | ((b & 0x80) << 24));
#endif
  }
};

// Sixteen vectors to one: lane j is the sum of vector j's lanes (a transpose and add in four rounds of
// shuffles, ~3 operations a vector instead of a reduction each).
inline v16 sum16(const v16* a) {
  v16 p[8], q[4], r[2];
  for (int i = 0; i < 8; ++i)
    p[i] = __builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30) +
           __builtin_shufflevector(a[2 * i], a[2 * i + 1], 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
  for (int i = 0; i < 4; ++i)
    q[i] = __builtin_shufflevector(p[2 * i], p[2 * i + 1], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) +
           __builtin_shufflevector(p[2 * i], p[2 * i + 1], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
  for (int i = 0; i < 2; ++i)
    r[i] = __builtin_shufflevector(q[2 * i], q[2 * i + 1], 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27) +
           __builtin_shufflevector(q[2 * i], q[2 * i + 1], 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
  return __builtin_shufflevector(r[0], r[1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
         __builtin_shufflevector(r[0], r[1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
}

// Sources: where the float rows of positions [t, t + n) (n <= 16) of one (sequence, K/V head) are. Float32 rows
// are pointed at where they lie; coded rows are decoded into `scratch` (16 rows, in L1) and pointed at there.
struct Strided {  // float32 (B, Hkv, T, D) rows, or one layer's pool read through a block table
  const char* base;  // this (sequence, head)'s row 0, or the head's slot 0 for a pool
  int64_t sT;
  const int64_t* table = nullptr;  // this sequence's block ids
  int64_t block_tokens = 1;
  void rows(int64_t t, int n, const float** r, float*) const {
    for (int j = 0; j < n; ++j) {
      int64_t at = table ? table[(t + j) / block_tokens] * block_tokens + (t + j) % block_tokens : t + j;
      r[j] = (const float*)(base + at * sT);
    }
  }
};

template <class Dec>
struct Coded {  // 8-bit codes with one fp32 scale per position
  const uint8_t* base;
  int64_t sT;
  const float* scale;
  int64_t sS, D;
  void rows(int64_t t, int n, const float** r, float* scratch) const {
    for (int j = 0; j < n; ++j) {
      const uint8_t* code = base + (t + j) * sT;
      float* out = scratch + j * D;
      float sc = scale[(t + j) * sS] * Dec::unit;
      for (int64_t c = 0; c < D; c += 16) store(out + c, Dec::at(code + c) * sc);
      r[j] = out;
    }
  }
};

// The float rows of [t0, t1) scored against the G query rows q (G x D) into s (G rows of `stride`, from `off`).
template <int CT>
void score_block(const float* q, int G, int64_t D, const float** rows, int n, float* s, int64_t stride, int64_t off) {
  const int C = CT ? CT : D / 16;
  for (int g = 0; g < G; ++g) {
    const float* qg = q + g * D;
    v16 acc[16];
    for (int j = 0; j < 16; ++j) acc[j] = (v16){0};
    for (int j = 0; j < n; ++j) {
      v16 a = load(qg) * load(rows[j]);
      for (int c = 1; c < C; ++c) a += load(qg + c * 16) * load(rows[j] + c * 16);
      acc[j] = a;
    }
    v16 sums = sum16(acc);
    for (int j = 0; j < n; ++j) s[g * stride + off + j] = sums[j];
  }
}

// acc (G x D) += p (G rows of `stride`, from `off`) times the float rows.
template <int CT>
void value_block(const float* p, int64_t stride, int64_t off, int G, int64_t D, const float** rows, int n, v16* acc) {
  const int C = CT ? CT : D / 16;
  for (int g = 0; g < G; ++g) {
    v16 a[CT ? CT : MAX_CHUNKS];
    for (int c = 0; c < C; ++c) a[c] = acc[g * C + c];
    for (int j = 0; j < n; ++j) {
      float w = p[g * stride + off + j];
      if (w == 0.0f) continue;  // masked (or underflowed): nothing to add
      for (int c = 0; c < C; ++c) a[c] += w * load(rows[j] + c * 16);
    }
    for (int c = 0; c < C; ++c) acc[g * C + c] = a[c];
  }
}

// One chunk [t0, t1) of one (sequence, K/V head) for its G query heads q (G x D, scaled by 1/sqrt(D)): scores,
// softmax numerators, weighted values, into `part`. `mask` (null: none) is over absolute positions.
template <int CT, class KS, class VS>
void attend_chunk(const float* q, int G, int64_t D, const KS& keys, const VS& values, const bool* mask, int64_t t0,
                  int64_t t1, float* s, Partial part) {
  alignas(64) float scratch[16 * MAX_CHUNKS * 16];
  const float* rows[16];
  const int64_t n = t1 - t0;
  for (int64_t t = t0; t < t1; t += 16) {
    int m = (int)std::min<int64_t>(16, t1 - t);
    keys.rows(t, m, rows, scratch);
    score_block<CT>(q, G, D, rows, m, s, n, t - t0);
  }
  if (mask)
    for (int64_t t = t0; t < t1; ++t)
      if (!mask[t])
        for (int g = 0; g < G; ++g) s[g * n + t - t0] = NEG_INF;
  softmax_rows(s, n, G, part);
  const int C = D / 16;
  v16 acc[MAX_GROUP * MAX_CHUNKS];
  for (int i = 0; i < G * C; ++i) acc[i] = (v16){0};
  for (int64_t t = t0; t < t1; t += 16) {
    int m = (int)std::min<int64_t>(16, t1 - t);
    values.rows(t, m, rows, scratch);
    value_block<CT>(s, n, t - t0, G, D, rows, m, acc);
  }
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < C; ++c) store(part.out(g) + c * 16, acc[g * C + c]);
}

// attend_chunk with the head size a compile-time constant where it is a common one.
template <class KS, class VS>
void attend(const float* q, int G, int64_t D, const KS& k, const VS& v, const bool* mask, int64_t t0, int64_t t1,
            float* s, Partial part) {
  switch (D) {
    case 64: return attend_chunk<4>(q, G, D, k, v, mask, t0, t1, s, part);
    case 128: return attend_chunk<8>(q, G, D, k, v, mask, t0, t1, s, part);
    default: return attend_chunk<0>(q, G, D, k, v, mask, t0, t1, s, part);
  }
}

// The chunks of one (sequence, K/V head) merged into out (G x D): each weighted by exp(its max - the max).
void merge(float* parts, int64_t chunks, int G, int64_t D, float* out, int64_t out_stride_g) {
  for (int g = 0; g < G; ++g) {
    float m = NEG_INF;
    for (int64_t c = 0; c < chunks; ++c) m = std::max(m, Partial{parts + c * G * (D + 2), D}.max(g));
    float l = 0;
    float* o = out + g * out_stride_g;
    for (int64_t d = 0; d < D; ++d) o[d] = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      Partial p{parts + c * G * (D + 2), D};
      if (p.max(g) == NEG_INF) continue;
      float w = std::exp(p.max(g) - m);
      l += w * p.sum(g);
      for (int64_t d = 0; d < D; ++d) o[d] += w * p.out(g)[d];
    }
    float inv = l > 0 ? 1.0f / l : 0.0f;
    for (int64_t d = 0; d < D; ++d) o[d] *= inv;
  }
}

// How many chunks each (sequence, K/V head)'s `T` positions are split into: enough tasks for every thread.
int64_t chunks_for(int64_t T, int64_t heads) {
  int64_t want = (8 * at::get_num_threads() + heads - 1) / heads;
  int64_t most = (T + MIN_SPLIT - 1) / MIN_SPLIT;
  return std::max<int64_t>(1, std::min(want, most));
}

// Runs `body(b, h, t0, t1, scores, partial)` over every (sequence, K/V head, chunk), then merges: q (B, H, 1, D).
template <class Body>
at::Tensor over_chunks(const at::Tensor& q, int64_t Hkv, int64_t T, Body body) {
  const int64_t B = q.size(0), H = q.size(1), D = q.size(3);
  const int G = H / Hkv;
  const int64_t chunks = chunks_for(T, B * Hkv), span = (T + chunks - 1) / chunks;
  std::vector<float> parts(B * Hkv * chunks * G * (D + 2));
  at::parallel_for(0, B * Hkv * chunks, 1, [&](int64_t first, int64_t last) {
    std::vector<float> scores(G * span);
    for (int64_t i = first; i < last; ++i) {
      int64_t bh = i / chunks, c = i % chunks;
      int64_t t0 = c * span, t1 = std::min(T, t0 + span);
      Partial part{parts.data() + i * G * (D + 2), D};
      if (t1 <= t0) {
        for (int g = 0; g < G; ++g) part.max(g) = NEG_INF, part.sum(g) = 0;
        continue;
      }
      body(bh / Hkv, bh % Hkv, t0, t1, scores.data(), part);
    }
  });
  at::Tensor out = at::empty({B, H, 1, D}, q.options());
  float* o = out.data_ptr<float>();
  at::parallel_for(0, B * Hkv, 1, [&](int64_t first, int64_t last) {
    for (int64_t bh = first; bh < last; ++bh)
      merge(parts.data() + bh * chunks * G * (D + 2), chunks, G, D, o + bh * G * D, D);
  });
  return out;
}

// q (B, H, 1, D) as contiguous floats scaled by 1/sqrt(D), checked against the K/V heads.
at::Tensor scaled_query(const at::Tensor& q, int64_t Hkv) {
  TORCH_CHECK(q.dim() == 4 && q.size(2) == 1 && q.scalar_type() == at::kFloat, "q must be (B, H, 1, D) float32");
  int64_t H = q.size(1), D = q.size(3);
  TORCH_CHECK(H % Hkv == 0 && H / Hkv <= MAX_GROUP, "query heads must be a multiple (at most 16x) of K/V heads");
  TORCH_CHECK(D % 16 == 0 && D / 16 <= MAX_CHUNKS, "head size must be a multiple of 16, at most 256");
  return q.mul(1.0 / std::sqrt((double)D)).contiguous();
}

void check_rows(const at::Tensor& x, int64_t D) {
  TORCH_CHECK(x.size(-1) == D && x.stride(-1) == 1, "cache rows must be contiguous, of the query's head size");
}

// Static, sliding, int8, fp8: k, v (B, Hkv, T, D) float32, int8 or float8_e4m3fn; scales (B, Hkv, T, 1) float32
// with the 8-bit codes; mask (T) or (1, T) bool, True = may attend (None: all).
at::Tensor decode_attention(const at::Tensor& q_in, const at::Tensor& k, const at::Tensor& v,
                            const c10::optional<at::Tensor>& k_scale, const c10::optional<at::Tensor>& v_scale,
                            const c10::optional<at::Tensor>& mask) {
  TORCH_CHECK(k.dim() == 4 && v.sizes() == k.sizes() && k.scalar_type() == v.scalar_type(), "k, v: (B, Hkv, T, D)");
  const int64_t Hkv = k.size(1);
  at::Tensor q = scaled_query(q_in, Hkv);
  const int64_t B = q.size(0), H = q.size(1), D = q.size(3);
  const int G = H / Hkv;
  check_rows(k, D), check_rows(v, D);
  TORCH_CHECK(k.size(0) == B, "k: batch differs from q's");
  at::Tensor m = mask ? mask->reshape({-1}).contiguous() : at::Tensor();
  TORCH_CHECK(!mask || (m.numel() == k.size(2) && m.scalar_type() == at::kBool), "mask: T booleans");
  const bool* mp = mask ? m.data_ptr<bool>() : nullptr;
  int64_t T = k.size(2);
  while (mp && T > 0 && !mp[T - 1]) --T;  // the static step's unwritten positions: never read
  const float* qp = q.data_ptr<float>();
  const auto type = k.scalar_type();
  if (type == at::kFloat) {
    const char *kb = (const char*)k.data_ptr(), *vb = (const char*)v.data_ptr();
    return over_chunks(q, Hkv, T, [&](int64_t b, int64_t h, int64_t t0, int64_t t1, float* s, Partial part) {
      Strided ks{kb + (b * k.stride(0) + h * k.stride(1)) * 4, k.stride(2) * 4};
      Strided vs{vb + (b * v.stride(0) + h * v.stride(1)) * 4, v.stride(2) * 4};
      attend(qp + (b * H + h * G) * D, G, D, ks, vs, mp, t0, t1, s, part);
    });
  }
  TORCH_CHECK(type == at::kChar || type == at::kFloat8_e4m3fn, "k, v: float32, int8 or float8_e4m3fn");
  TORCH_CHECK(k_scale && v_scale && k_scale->scalar_type() == at::kFloat && v_scale->scalar_type() == at::kFloat &&
                  k_scale->dim() == 4 && v_scale->dim() == 4,
              "8-bit codes need their scales, (B, Hkv, T, 1) float32");
  const uint8_t *kb = (const uint8_t*)k.data_ptr(), *vb = (const uint8_t*)v.data_ptr();
  const float *ksp = k_scale->data_ptr<float>(), *vsp = v_scale->data_ptr<float>();
  auto run = [&](auto dec) {
    using Dec = decltype(dec);
    return over_chunks(q, Hkv, T, [&](int64_t b, int64_t h, int64_t t0, int64_t t1, float* s, Partial part) {
      Coded<Dec> ks{kb + b * k.stride(0) + h * k.stride(1), k.stride(2),
                    ksp + b * k_scale->stride(0) + h * k_scale->stride(1), k_scale->stride(2), D};
      Coded<Dec> vs{vb + b * v.stride(0) + h * v.stride(1), v.stride(2),
                    vsp + b * v_scale->stride(0) + h * v_scale->stride(1), v_scale->stride(2), D};
      attend(qp + (b * H + h * G) * D, G, D, ks, vs, mp, t0, t1, s, part);
    });
  };
  return type == at::kChar ? run(I8{}) : run(F8{});
}

// Paged: one layer's pools (Hkv, slots, D) float32, block_table (B, blocks) int64, lengths (B) int64: sequence b
// attends to its first lengths[b] positions, position t at slot table[b, t / block_tokens] * block_tokens + t %
// block_tokens.
at::Tensor paged_decode_attention(const at::Tensor& q_in, const at::Tensor& pool_k, const at::Tensor& pool_v,
                                  const at::Tensor& table_in, const at::Tensor& lengths_in, int64_t block_tokens) {
  TORCH_CHECK(pool_k.dim() == 3 && pool_v.sizes() == pool_k.sizes() && pool_k.scalar_type() == at::kFloat &&
                  pool_v.scalar_type() == at::kFloat,
              "pools: (Hkv, slots, D) float32");
  const int64_t Hkv = pool_k.size(0);
  at::Tensor q = scaled_query(q_in, Hkv);
  const int64_t B = q.size(0), H = q.size(1), D = q.size(3);
  const int G = H / Hkv;
  check_rows(pool_k, D), check_rows(pool_v, D);
  at::Tensor table = table_in.to(at::kLong).contiguous(), lengths = lengths_in.to(at::kLong).contiguous();
  TORCH_CHECK(table.dim() == 2 && table.size(0) == B && lengths.numel() == B, "block_table (B, blocks), lengths (B)");
  const int64_t *len = lengths.data_ptr<int64_t>(), *tp = table.data_ptr<int64_t>(), blocks = table.size(1);
  int64_t T = 0;
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(len[b] >= 0 && len[b] <= blocks * block_tokens, "lengths: past the block table");
    T = std::max(T, len[b]);
  }
  for (int64_t i = 0; i < table.numel(); ++i)
    TORCH_CHECK(tp[i] >= 0 && (tp[i] + 1) * block_tokens <= pool_k.size(1), "block_table: a block outside the pool");
  const float* qp = q.data_ptr<float>();
  const char *kb = (const char*)pool_k.data_ptr(), *vb = (const char*)pool_v.data_ptr();
  return over_chunks(q, Hkv, T, [&](int64_t b, int64_t h, int64_t t0, int64_t t1, float* s, Partial part) {
    int64_t end = std::min(t1, len[b]);
    if (end <= t0) {
      for (int g = 0; g < G; ++g) part.max(g) = NEG_INF, part.sum(g) = 0;
      return;
    }
    Strided ks{kb + h * pool_k.stride(0) * 4, pool_k.stride(1) * 4, tp + b * blocks, block_tokens};
    Strided vs{vb + h * pool_v.stride(0) * 4, pool_v.stride(1) * 4, tp + b * blocks, block_tokens};
    attend(qp + (b * H + h * G) * D, G, D, ks, vs, nullptr, t0, end, s, part);
  });
}

// An fp16 parameter tensor indexed by (sequence, K/V head, position or group, channel or channel group).
struct HalfParams {
  const at::Half* p;
  int64_t sB, sH, sT, sC;
  HalfParams(const at::Tensor& x, int t_dim, int c_dim)
      : p(x.data_ptr<at::Half>()), sB(x.stride(0)), sH(x.stride(1)), sT(x.stride(t_dim)), sC(x.stride(c_dim)) {}
  float at(int64_t b, int64_t h, int64_t t, int64_t c) const { return (float)p[b * sB + h * sH + t * sT + c * sC]; }
};

// A packed row's 16-byte piece (32 channels, channel 2j in byte j's low nibble) as codes in channel order.
inline void unpack32(const uint8_t* p, v16& first, v16& second) {
  i16 x = widen_u8(p);
  v16 lo = to_float(x & 15), hi = to_float(x >> 4);
  first = __builtin_shufflevector(lo, hi, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  second = __builtin_shufflevector(lo, hi, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
}

// int4 keys of one (sequence, K/V head): complete groups of Gk positions packed with a scale and zero point per
// channel (converted to floats once per group), then the full-precision residual's rows.
struct Int4Keys {
  const uint8_t* codes;
  int64_t sT;
  const HalfParams *scale, *zero;
  int64_t b, h, Gk, packed;  // positions in complete groups
  const char* res;
  int64_t res_sT, D;
  mutable int64_t group = -1;
  mutable float gs[MAX_CHUNKS * 16], gz[MAX_CHUNKS * 16];
  void rows(int64_t t, int n, const float** r, float* scratch) const {
    for (int j = 0; j < n; ++j) {
      int64_t pos = t + j;
      if (pos >= packed) {
        r[j] = (const float*)(res + (pos - packed) * res_sT);
        continue;
      }
      if (pos / Gk != group) {
        group = pos / Gk;
        for (int64_t d = 0; d < D; ++d) gs[d] = scale->at(b, h, group, d), gz[d] = zero->at(b, h, group, d);
      }
      const uint8_t* row = codes + pos * sT;
      float* out = scratch + j * D;
      for (int64_t c = 0; c < D; c += 32) {
        v16 x0, x1;
        unpack32(row + c / 2, x0, x1);
        store(out + c, x0 * load(gs + c) + load(gz + c));
        store(out + c + 16, x1 * load(gs + c + 16) + load(gz + c + 16));
      }
      r[j] = out;
    }
  }
};

// int4 values: per position, a scale and zero point per group of vg channels (vg a multiple of 32).
struct Int4Values {
  const uint8_t* codes;
  int64_t sT;
  const HalfParams *scale, *zero;
  int64_t b, h, vg, D;
  void rows(int64_t t, int n, const float** r, float* scratch) const {
    for (int j = 0; j < n; ++j) {
      const uint8_t* row = codes + (t + j) * sT;
      float* out = scratch + j * D;
      for (int64_t c = 0; c < D; c += 32) {
        float sc = scale->at(b, h, t + j, c / vg), z = zero->at(b, h, t + j, c / vg);
        v16 x0, x1;
        unpack32(row + c / 2, x0, x1);
        store(out + c, x0 * sc + z);
        store(out + c + 16, x1 * sc + z);
      }
      r[j] = out;
    }
  }
};

// int4 (caches/int4.py). Keys: kq (B, Hkv, n*Gk, D/2) bytes, channel 2j in byte j's low nibble and 2j+1 in its
// high one; k_scale, k_zero (B, Hkv, n, 1, D) fp16 per group of Gk tokens and channel; then `held` rows of the
// full-precision residual k_res (B, Hkv, Gk, D). Values: vq (B, Hkv, T, D/2), v_scale, v_zero (B, Hkv, T, D/vg, 1)
// fp16 per token and group of vg channels; T = n*Gk + held.
at::Tensor int4_decode_attention(const at::Tensor& q_in, const at::Tensor& kq, const at::Tensor& k_scale,
                                 const at::Tensor& k_zero, const at::Tensor& k_res, int64_t held, const at::Tensor& vq,
                                 const at::Tensor& v_scale, const at::Tensor& v_zero) {
  const int64_t Hkv = kq.size(1);
  at::Tensor q = scaled_query(q_in, Hkv);
  const int64_t B = q.size(0), H = q.size(1), D = q.size(3), n = k_scale.size(2), T = vq.size(2);
  const int G = H / Hkv;
  TORCH_CHECK(kq.scalar_type() == at::kByte && vq.scalar_type() == at::kByte && k_res.scalar_type() == at::kFloat,
              "int4: codes uint8, residual float32");
  for (const at::Tensor* x : {&k_scale, &k_zero, &v_scale, &v_zero})
    TORCH_CHECK(x->scalar_type() == at::kHalf && x->dim() == 5, "int4: scales and zero points (..., 5 dims) fp16");
  const int64_t Gk = n ? kq.size(2) / n : k_res.size(2), vg = D / v_scale.size(3);
  TORCH_CHECK(D % 32 == 0 && vg % 32 == 0, "int4: head size and value group must be multiples of 32");
  TORCH_CHECK(T == n * Gk + held && held <= k_res.size(2), "int4: positions = groups * group size + held");
  TORCH_CHECK(kq.stride(-1) == 1 && vq.stride(-1) == 1 && k_res.stride(-1) == 1, "int4: rows contiguous");
  HalfParams ksp{k_scale, 2, 4}, kzp{k_zero, 2, 4}, vsp{v_scale, 2, 3}, vzp{v_zero, 2, 3};
  const float* qp = q.data_ptr<float>();
  const uint8_t *kb = kq.data_ptr<uint8_t>(), *vb = vq.data_ptr<uint8_t>();
  const char* rb = (const char*)k_res.data_ptr();
  return over_chunks(q, Hkv, T, [&](int64_t b, int64_t h, int64_t t0, int64_t t1, float* s, Partial part) {
    Int4Keys keys{kb + b * kq.stride(0) + h * kq.stride(1), kq.stride(2), &ksp, &kzp, b, h, Gk, n * Gk,
                  rb + (b * k_res.stride(0) + h * k_res.stride(1)) * 4, k_res.stride(2) * 4, D};
    Int4Values values{vb + b * vq.stride(0) + h * vq.stride(1), vq.stride(2), &vsp, &vzp, b, h, vg, D};
    attend(qp + (b * H + h * G) * D, G, D, keys, values, nullptr, t0, t1, s, part);
  });
}

// The static-shape step's int4 attention (caches/int4.py's attend_at): the whole buffers, the position as data, so
// a compiled step calls it with the same shapes every step. Positions 0..pos[-1] are held: the complete groups
// among them quantized, the open group's rows (or those past the last group that fits) in the residual.
at::Tensor int4_decode_attention_at(const at::Tensor& q, const at::Tensor& kq, const at::Tensor& k_scale,
                                    const at::Tensor& k_zero, const at::Tensor& k_res, const at::Tensor& vq,
                                    const at::Tensor& v_scale, const at::Tensor& v_zero, const at::Tensor& pos) {
  TORCH_CHECK(pos.scalar_type() == at::kLong && pos.numel() >= 1 && pos.device().is_cpu(), "int4: pos a CPU long");
  const at::Tensor p = pos.contiguous();
  const int64_t end = p.data_ptr<int64_t>()[p.numel() - 1] + 1, full = k_scale.size(2);
  const int64_t Gk = full ? kq.size(2) / full : k_res.size(2);
  TORCH_CHECK(end >= 1 && end <= vq.size(2), "int4: position ", end - 1, " outside the cache's ", vq.size(2));
  const int64_t done = std::min(end / Gk, full);
  return int4_decode_attention(q, kq.narrow(2, 0, done * Gk), k_scale.narrow(2, 0, done), k_zero.narrow(2, 0, done),
                               k_res, end - done * Gk, vq.narrow(2, 0, end), v_scale.narrow(2, 0, end),
                               v_zero.narrow(2, 0, end));
}

}  // namespace

TORCH_LIBRARY(kvbench_attention, m) {
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor? k_scale, Tensor? v_scale, Tensor? mask) -> Tensor");
  m.def("paged_decode_attention(Tensor q, Tensor pool_k, Tensor pool_v, Tensor block_table, Tensor lengths, "
        "int block_tokens) -> Tensor");
  m.def("int4_decode_attention(Tensor q, Tensor kq, Tensor k_scale, Tensor k_zero, Tensor k_res, int held, "
        "Tensor vq, Tensor v_scale, Tensor v_zero) -> Tensor");
  m.def("int4_decode_attention_at(Tensor q, Tensor kq, Tensor k_scale, Tensor k_zero, Tensor k_res, Tensor vq, "
        "Tensor v_scale, Tensor v_zero, Tensor pos) -> Tensor");
}

TORCH_LIBRARY_IMPL(kvbench_attention, CPU, m) {
  m.impl("decode_attention", &decode_attention);
  m.impl("paged_decode_attention", &paged_decode_attention);
  m.impl("int4_decode_attention", &int4_decode_attention);
  m.impl("int4_decode_attention_at", &int4_decode_attention_at);
}
