#include "algorithms/models/kernels/relu_max_pool.h"

#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace allround::models {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// One output cell: the window's maximum after ReLU, and which of the 4 window elements
// (0: top-left, 1: top-right, 2: bottom-left, 3: bottom-right) it came from, or 4 when the
// maximum is <= 0 and no gradient flows. PyTorch's rule: a later element replaces the maximum when
// it is greater or NaN, so NaN propagates.
template <typename T>
inline void PoolCell(T a, T b, T c, T d, T* out, uint8_t* which) {
  T m = a;
  uint8_t k = 0;
  if (b > m || b != b) m = b, k = 1;
  if (c > m || c != c) m = c, k = 2;
  if (d > m || d != d) m = d, k = 3;
  const bool pass = m > T(0) || m != m;
  *out = pass ? m : T(0);
  *which = pass ? k : 4;
}

#if defined(__SSE2__)
// Four output cells at once with SSE2 (the x86-64 baseline). On real activations the comparisons
// are coin flips: branches mispredict half the time and the scalar loop runs ~10x slower.
inline int64_t PoolRowSse(const float* r0, const float* r1, float* out, uint8_t* which, int64_t ow) {
  const __m128 zero = _mm_setzero_ps();
  int64_t j = 0;
  for (; j + 4 <= ow; j += 4) {
    const __m128 a0 = _mm_loadu_ps(r0 + 2 * j), a1 = _mm_loadu_ps(r0 + 2 * j + 4);
    const __m128 b0 = _mm_loadu_ps(r1 + 2 * j), b1 = _mm_loadu_ps(r1 + 2 * j + 4);
    const __m128 tl = _mm_shuffle_ps(a0, a1, _MM_SHUFFLE(2, 0, 2, 0));
    const __m128 tr = _mm_shuffle_ps(a0, a1, _MM_SHUFFLE(3, 1, 3, 1));
    const __m128 bl = _mm_shuffle_ps(b0, b1, _MM_SHUFFLE(2, 0, 2, 0));
    const __m128 br = _mm_shuffle_ps(b0, b1, _MM_SHUFFLE(3, 1, 3, 1));
    __m128 m = tl;
    __m128i k = _mm_setzero_si128();
    const __m128 cand[3] = {tr, bl, br};
    for (int t = 0; t < 3; ++t) {
      const __m128 v = cand[t];
      const __m128 take = _mm_or_ps(_mm_cmpgt_ps(v, m), _mm_cmpunord_ps(v, v));
      m = _mm_or_ps(_mm_and_ps(take, v), _mm_andnot_ps(take, m));
      const __m128i ti = _mm_castps_si128(take);
      k = _mm_or_si128(_mm_and_si128(ti, _mm_set1_epi32(t + 1)), _mm_andnot_si128(ti, k));
    }
    const __m128 pass = _mm_or_ps(_mm_cmpgt_ps(m, zero), _mm_cmpunord_ps(m, m));
    _mm_storeu_ps(out + j, _mm_and_ps(pass, m));
    const __m128i pi = _mm_castps_si128(pass);
    k = _mm_or_si128(_mm_and_si128(pi, k), _mm_andnot_si128(pi, _mm_set1_epi32(4)));
    const __m128i k8 = _mm_packus_epi16(_mm_packs_epi32(k, k), _mm_setzero_si128());
    const int32_t packed = _mm_cvtsi128_si32(k8);
    std::memcpy(which + j, &packed, 4);
  }
  return j;
}

inline int64_t UnpoolRowSse(const float* g, const uint8_t* which, float* d0, float* d1, int64_t ow) {
  int64_t j = 0;
  for (; j + 4 <= ow; j += 4) {
    int32_t packed;
    std::memcpy(&packed, which + j, 4);
    const __m128i z = _mm_setzero_si128();
    const __m128i k = _mm_unpacklo_epi16(_mm_unpacklo_epi8(_mm_cvtsi32_si128(packed), z), z);
    const __m128 v = _mm_loadu_ps(g + j);
    const __m128 tl = _mm_and_ps(v, _mm_castsi128_ps(_mm_cmpeq_epi32(k, _mm_set1_epi32(0))));
    const __m128 tr = _mm_and_ps(v, _mm_castsi128_ps(_mm_cmpeq_epi32(k, _mm_set1_epi32(1))));
    const __m128 bl = _mm_and_ps(v, _mm_castsi128_ps(_mm_cmpeq_epi32(k, _mm_set1_epi32(2))));
    const __m128 br = _mm_and_ps(v, _mm_castsi128_ps(_mm_cmpeq_epi32(k, _mm_set1_epi32(3))));
    _mm_storeu_ps(d0 + 2 * j, _mm_unpacklo_ps(tl, tr));
    _mm_storeu_ps(d0 + 2 * j + 4, _mm_unpackhi_ps(tl, tr));
    _mm_storeu_ps(d1 + 2 * j, _mm_unpacklo_ps(bl, br));
    _mm_storeu_ps(d1 + 2 * j + 4, _mm_unpackhi_ps(bl, br));
  }
  return j;
}
#endif

template <typename T>
int64_t PoolRowFast(const T*, const T*, T*, uint8_t*, int64_t) {
  return 0;
}
template <typename T>
int64_t UnpoolRowFast(const T*, const uint8_t*, T*, T*, int64_t) {
  return 0;
}
#if defined(__SSE2__)
template <>
int64_t PoolRowFast<float>(const float* r0, const float* r1, float* out, uint8_t* which, int64_t ow) {
  return PoolRowSse(r0, r1, out, which, ow);
}
template <>
int64_t UnpoolRowFast<float>(const float* g, const uint8_t* which, float* d0, float* d1, int64_t ow) {
  return UnpoolRowSse(g, which, d0, d1, ow);
}
#endif

template <typename T>
void Forward(const T* in, T* out, uint8_t* which, int64_t planes, int64_t h, int64_t w) {
  const int64_t oh = h / 2, ow = w / 2;
  at::parallel_for(0, planes * oh, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t p = row / oh, i = row % oh;
      const T* r0 = in + p * h * w + (2 * i) * w;
      const T* r1 = r0 + w;
      T* dst = out + row * ow;
      uint8_t* idx = which + row * ow;
      for (int64_t j = PoolRowFast<T>(r0, r1, dst, idx, ow); j < ow; ++j) {
        PoolCell(r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1], dst + j, idx + j);
      }
    }
  });
}

// Writes every element of every 2x2 window (the gradient where it came from, 0 elsewhere), so the
// output needs no zero fill except for a leftover odd row or column.
template <typename T>
void Backward(const T* grad_out, const uint8_t* which, T* grad_in, int64_t planes, int64_t h, int64_t w) {
  const int64_t oh = h / 2, ow = w / 2;
  at::parallel_for(0, planes * oh, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t p = row / oh, i = row % oh;
      const T* g = grad_out + row * ow;
      const uint8_t* idx = which + row * ow;
      T* d0 = grad_in + p * h * w + (2 * i) * w;
      T* d1 = d0 + w;
      for (int64_t j = UnpoolRowFast<T>(g, idx, d0, d1, ow); j < ow; ++j) {
        const uint8_t k = idx[j];
        d0[2 * j] = k == 0 ? g[j] : T(0);
        d0[2 * j + 1] = k == 1 ? g[j] : T(0);
        d1[2 * j] = k == 2 ? g[j] : T(0);
        d1[2 * j + 1] = k == 3 ? g[j] : T(0);
      }
    }
  });
}

class ReluMaxPoolFunction : public torch::autograd::Function<ReluMaxPoolFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x) {
    const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
    at::Tensor out = at::empty({n, c, h / 2, w / 2}, x.options());
    at::Tensor which = at::empty({n, c, h / 2, w / 2}, x.options().dtype(at::kByte));
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "ReluMaxPool2x2", [&] {
      Forward<scalar_t>(x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), which.data_ptr<uint8_t>(), n * c, h, w);
    });
    ctx->save_for_backward({which});
    ctx->saved_data["h"] = h;
    ctx->saved_data["w"] = w;
    ctx->mark_non_differentiable({which});
    return out;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const at::Tensor which = ctx->get_saved_variables()[0];
    const int64_t h = ctx->saved_data["h"].toInt(), w = ctx->saved_data["w"].toInt();
    const at::Tensor g = grads[0].contiguous();
    const bool odd = (h % 2) != 0 || (w % 2) != 0;
    at::Tensor grad_in = odd ? at::zeros({g.size(0), g.size(1), h, w}, g.options())
                             : at::empty({g.size(0), g.size(1), h, w}, g.options());
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "ReluMaxPool2x2Backward", [&] {
      Backward<scalar_t>(g.data_ptr<scalar_t>(), which.data_ptr<uint8_t>(), grad_in.data_ptr<scalar_t>(),
                         g.size(0) * g.size(1), h, w);
    });
    return {grad_in};
  }
};

}  // namespace

at::Tensor ReluMaxPool2x2(const at::Tensor& x) {
  const bool fused = x.device().is_cpu() && x.dim() == 4 && x.is_contiguous() && x.size(2) >= 2 &&
                     x.size(3) >= 2 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble);
  if (!fused) return torch::max_pool2d(torch::relu(x), 2);
  return ReluMaxPoolFunction::apply(x);
}

}  // namespace allround::models
