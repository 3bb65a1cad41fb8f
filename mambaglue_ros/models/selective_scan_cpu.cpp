// Forward-only selective scan for the CPU: one pass over the sequence, the state kept in a (N, d) buffer.
//
// Same recurrence as selective_scan_inference (models/mambaglue.py), in its (batch, L, channels) layout:
//   delta' = softplus(delta + delta_bias)
//   h[t]   = exp(delta'[t] A) h[t-1] + delta'[t] B[t] u[t]        (h: N x d per batch entry)
//   y[t]   = C[t] h[t] + D u[t]
// The torch scan needs ~4T + L/T small ops and a (b, L, N, d) buffer of decays; here the decays are
// computed where they are used and never stored, and the loop over channels is innermost (contiguous), so
// the compiler vectorises it, exp2 included (glibc's vector math library, with -ffast-math).
// Built by ssm_cpu.py (torch.utils.cpp_extension); inference only, no backward.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// softplus with torch's threshold (x > 20: x), as F.softplus
inline float softplus(float x) { return x > 20.f ? x : std::log1p(std::exp(x)); }

}  // namespace

// u, delta: (b, L, d) float32; A2: (N, d) float32 = A^T * log2(e); B, C: (b, L, N) float32;
// D, delta_bias: (d,) float32. Returns y: (b, L, d) float32.
torch::Tensor selective_scan_cpu(torch::Tensor u, torch::Tensor delta, torch::Tensor A2, torch::Tensor B,
                                 torch::Tensor C, torch::Tensor D, torch::Tensor delta_bias) {
  for (const auto& t : {u, delta, A2, B, C, D, delta_bias}) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32, "selective_scan_cpu: float32 CPU tensors");
  }
  TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes(), "selective_scan_cpu: u and delta must be (b, L, d)");
  const int64_t nb = u.size(0), L = u.size(1), d = u.size(2), N = A2.size(0);
  TORCH_CHECK(A2.dim() == 2 && A2.size(1) == d, "selective_scan_cpu: A2 must be (N, d)");
  TORCH_CHECK(B.dim() == 3 && B.size(0) == nb && B.size(1) == L && B.size(2) == N && C.sizes() == B.sizes(),
              "selective_scan_cpu: B and C must be (b, L, N)");
  TORCH_CHECK(D.numel() == d && delta_bias.numel() == d, "selective_scan_cpu: D and delta_bias must be (d,)");
  u = u.contiguous(); delta = delta.contiguous(); A2 = A2.contiguous(); B = B.contiguous(); C = C.contiguous();
  D = D.contiguous(); delta_bias = delta_bias.contiguous();
  auto y = torch::empty_like(u);
  const float* pu = u.data_ptr<float>();
  const float* pdelta = delta.data_ptr<float>();
  const float* pA = A2.data_ptr<float>();
  const float* pB = B.data_ptr<float>();
  const float* pC = C.data_ptr<float>();
  const float* pD = D.data_ptr<float>();
  const float* pbias = delta_bias.data_ptr<float>();
  float* py = y.data_ptr<float>();
  // Channels are independent: work items are (batch entry, block of channels). With one thread a block is all
  // d channels (the longest vector loops); with more, blocks of >= 16 channels spread over the threads.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t per_block = threads == 1 ? d : std::max<int64_t>(16, (d * nb + threads - 1) / threads);
  const int64_t blocks = (d + per_block - 1) / per_block;
  // The loop touches no Python object: other threads (the node's other pipeline stage) keep running.
  pybind11::gil_scoped_release no_gil;
  at::parallel_for(0, nb * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> h(N * per_block), dt(per_block), du(per_block), acc(per_block);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / blocks, k0 = (item % blocks) * per_block;
      const int64_t w = std::min(per_block, d - k0);  // channels k0 .. k0 + w
      std::fill(h.begin(), h.end(), 0.f);
      for (int64_t t = 0; t < L; ++t) {
        const int64_t row = b * L + t;
        const float* ut = pu + row * d + k0;
        const float* deltat = pdelta + row * d + k0;
        const float* Bt = pB + row * N;
        const float* Ct = pC + row * N;
        for (int64_t k = 0; k < w; ++k) {
          const float step = softplus(deltat[k] + pbias[k0 + k]);
          dt[k] = step;
          du[k] = step * ut[k];
          acc[k] = 0.f;
        }
        for (int64_t n = 0; n < N; ++n) {
          const float bn = Bt[n], cn = Ct[n];
          const float* An = pA + n * d + k0;
          float* hn = h.data() + n * per_block;
          for (int64_t k = 0; k < w; ++k) {
            const float state = std::exp2(dt[k] * An[k]) * hn[k] + du[k] * bn;
            hn[k] = state;
            acc[k] += cn * state;
          }
        }
        float* yt = py + row * d + k0;
        for (int64_t k = 0; k < w; ++k) yt[k] = acc[k] + pD[k0 + k] * ut[k];
      }
    }
  });
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("selective_scan_cpu", &selective_scan_cpu, "forward-only selective scan on the CPU (float32)");
}
