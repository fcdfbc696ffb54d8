// The static-shape step's store into caches/int4.py's 4-bit cache: one token at a position held in a tensor.
//
// Its value is quantized per group of vg channels into (vq, v_scale, v_zero); its key goes into the residual's
// row pos % Gk; when that row completes a key group that fits (pos + 1 a multiple of Gk, at most `full` groups),
// the residual is quantized per channel over its Gk tokens into the group's slot. Nothing else is touched: a
// compiled step in torch ops quantizes the open group every step (it cannot branch on the position), which cost
// more than the step's attention over the codes. The arithmetic is caches/int4.py's `quantize`, operation for
// operation in float32: lo and hi of the group, the zero point lo rounded to fp16, the scale (hi - zero) / 15
// clamped to 1e-6 and rounded to fp16, codes round((x - zero) / scale) (half to even) clamped to 0..15, two per
// byte, low nibble first; so the codes equal the eager store's bit for bit (tests/test_kv_cache_int4.py).

#include <ATen/core/Tensor.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

namespace {

constexpr float LEVELS = 15.0f;

struct Params {  // a group's fp16 zero point and scale, and the float values the codes are computed from
  at::Half zero, scale;
  float z, s;
};

Params params(float lo, float hi) {
  Params p;
  p.zero = at::Half(lo);
  p.z = static_cast<float>(p.zero);
  p.scale = at::Half(std::max((hi - p.z) / LEVELS, 1e-6f));
  p.s = static_cast<float>(p.scale);
  return p;
}

inline uint8_t code(float x, const Params& p) {
  return static_cast<uint8_t>(std::min(std::max(std::nearbyint((x - p.z) / p.s), 0.0f), LEVELS));
}

void check(const at::Tensor& t, at::ScalarType type, int64_t dims, const char* what) {
  TORCH_CHECK(t.scalar_type() == type && t.dim() == dims && t.is_contiguous() && t.device().is_cpu(), "int4_store: ",
              what, " must be a contiguous CPU tensor of ", dims, " dims and type ", type);
}

// kq (L, B, H, full*Gk, D/2) u8; k_scale, k_zero (L, B, H, full, 1, D) fp16; k_res (L, B, H, R, D) f32;
// vq (L, B, H, T, D/2) u8; v_scale, v_zero (L, B, H, T, D/vg, 1) fp16; k, v (B, H, 1, D) f32; pos (1,) long.
void int4_store_at(at::Tensor kq, at::Tensor k_scale, at::Tensor k_zero, at::Tensor k_res, at::Tensor vq,
                   at::Tensor v_scale, at::Tensor v_zero, const at::Tensor& k_in, const at::Tensor& v_in,
                   const at::Tensor& pos, int64_t layer, int64_t group) {
  check(kq, at::kByte, 5, "kq");
  check(vq, at::kByte, 5, "vq");
  check(k_res, at::kFloat, 5, "k_res");
  for (const at::Tensor* t : {&k_scale, &k_zero, &v_scale, &v_zero}) check(*t, at::kHalf, 6, "scales, zero points");
  const at::Tensor k = k_in.contiguous(), v = v_in.contiguous(), p_t = pos.contiguous();
  TORCH_CHECK(k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat, "int4_store: k, v float32");
  const int64_t B = vq.size(1), H = vq.size(2), T = vq.size(3), D = k.size(3), R = k_res.size(3);
  const int64_t full = k_scale.size(3), vg = D / v_scale.size(4), Gk = group;
  TORCH_CHECK(k.numel() == B * H * D && v.numel() == B * H * D, "int4_store: one token's K, V per sequence and head");
  TORCH_CHECK(p_t.scalar_type() == at::kLong && p_t.numel() >= 1, "int4_store: pos a long tensor");
  const int64_t p = p_t.data_ptr<int64_t>()[p_t.numel() - 1];
  TORCH_CHECK(p >= 0 && p < T && layer >= 0 && layer < vq.size(0), "int4_store: position ", p, " outside ", T);
  const float *kp = k.data_ptr<float>(), *vp = v.data_ptr<float>();
  const int64_t row = p % Gk, slot = (p + 1) / Gk - 1;
  TORCH_CHECK(row < R, "int4_store: residual row ", row, " outside ", R);
  const bool completes = full > 0 && (p + 1) % Gk == 0 && slot < full;
  for (int64_t bh = 0; bh < B * H; ++bh) {
    const int64_t lbh = layer * B * H + bh;
    const float* x = vp + bh * D;  // the value: per group of vg channels
    uint8_t* vcodes = vq.data_ptr<uint8_t>() + (lbh * T + p) * (D / 2);
    for (int64_t g = 0; g < D / vg; ++g) {
      const float* xs = x + g * vg;
      const Params pr = params(*std::min_element(xs, xs + vg), *std::max_element(xs, xs + vg));
      v_zero.data_ptr<at::Half>()[(lbh * T + p) * (D / vg) + g] = pr.zero;
      v_scale.data_ptr<at::Half>()[(lbh * T + p) * (D / vg) + g] = pr.scale;
      for (int64_t j = 0; j < vg; j += 2) vcodes[(g * vg + j) / 2] = code(xs[j], pr) | (code(xs[j + 1], pr) << 4);
    }
    float* res = k_res.data_ptr<float>() + lbh * R * D;  // the key: into its residual row
    std::copy(kp + bh * D, kp + (bh + 1) * D, res + row * D);
    if (!completes) continue;
    uint8_t* kcodes = kq.data_ptr<uint8_t>() + (lbh * full * Gk + slot * Gk) * (D / 2);
    at::Half *kz = k_zero.data_ptr<at::Half>() + (lbh * full + slot) * D, *ks = k_scale.data_ptr<at::Half>() + (lbh * full + slot) * D;
    for (int64_t c = 0; c < D; c += 2) {  // per channel over the group's Gk tokens, two channels per byte
      Params pc[2];
      for (int64_t e = 0; e < 2; ++e) {
        float lo = res[c + e], hi = res[c + e];
        for (int64_t t = 1; t < Gk; ++t) lo = std::min(lo, res[t * D + c + e]), hi = std::max(hi, res[t * D + c + e]);
        pc[e] = params(lo, hi);
        kz[c + e] = pc[e].zero;
        ks[c + e] = pc[e].scale;
      }
      for (int64_t t = 0; t < Gk; ++t)
        kcodes[t * (D / 2) + c / 2] = code(res[t * D + c], pc[0]) | (code(res[t * D + c + 1], pc[1]) << 4);
    }
  }
}

}  // namespace

TORCH_LIBRARY(kvbench_cache, m) {
  m.def("int4_store_at(Tensor(a!) kq, Tensor(b!) k_scale, Tensor(c!) k_zero, Tensor(d!) k_res, Tensor(e!) vq, "
        "Tensor(f!) v_scale, Tensor(g!) v_zero, Tensor k, Tensor v, Tensor pos, int layer, int group) -> ()");
}

TORCH_LIBRARY_IMPL(kvbench_cache, CPU, m) { m.impl("int4_store_at", &int4_store_at); }
