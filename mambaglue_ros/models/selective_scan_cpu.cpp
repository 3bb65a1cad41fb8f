// Forward-only selective scan for the CPU: one pass over the sequence, the state kept in a (N, d) buffer.
//
// Same recurrence as selective_scan_inference (models/mambaglue.py), in its (batch, L, channels) layout:
//   delta' = softplus(delta + delta_bias)
//   h[t]   = exp(delta'[t] A) h[t-1] + delta'[t] B[t] u[t]        (h: N x d per batch entry)
//   y[t]   = C[t] h[t] + D u[t]
// The torch scan needs ~4T + L/T small ops and a (b, L, N, d) buffer of decays; here the decays are
// computed where they are used and never stored, and the loop over channels is innermost (contiguous), so
// the compiler vectorises it. The decays use a polynomial 2^x (exp2_nonpositive) rather than a call into
// glibc's vector math library: the loop has no call left in it (~1.3x faster here, float32 accuracy).
// The version-2 branch's bidirectional scan and gate are options of the same call: the reverse direction runs
// over the same inputs (no flipped copies) and reuses the forward direction's softplus, and y * silu(z) is
// applied as each output row is written (MambaBranch.forward; torch ran four cats, five flips, a mean, a SiLU and
// a product over the sequence).
// depthwise_conv_silu is the Mamba branch's 'same'-padded depthwise conv and SiLU in one pass, reading the
// x half of in_proj's output in place (no padded copy, no k separate passes over the sequence).
// scan_train_forward / scan_train_backward are the scan core for training (ssm.py's _ChunkedScan, in this (b, L, .)
// layout): forward keeps the state at the start of every segment of SEGMENT steps, backward recomputes one segment's
// states and decays into a small buffer and runs the adjoint recurrence back through it. The torch scan spends ~2T + K
// dispatched slab ops per direction and its backward ~3x that plus batched einsums; here each step is one pass over
// the (N, d) state in cache.
// Built by ssm_cpu.py (torch.utils.cpp_extension).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// softplus with torch's threshold (x > 20: x), as F.softplus
inline float softplus(float x) { return x > 20.f ? x : std::log1p(std::exp(x)); }

// 2^x for x <= 0 (the decays: delta > 0, A < 0), to ~2 float32 ulp: x = i + f with i = round(x), f in
// [-1/2, 1/2]; 2^f by Cephes' exp2f polynomial, 2^i written into the exponent bits. Below 2^-126 it returns 0
// (the normal-float range ends there; the state it multiplies then starts afresh either way).
inline float exp2_nonpositive(float x) {
  x = x < -127.f ? -127.f : x;
  const float i = std::floor(x + 0.5f);
  const float f = x - i;
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.f;
  const int32_t bits = (static_cast<int32_t>(i) + 127) << 23;  // i = -127: 0 (the float 0)
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// A step's inputs over w channels: dt = softplus(delta + bias), du = dt u, acc = 0; and its output y = acc + D u.
inline void step_inputs(int64_t w, const float* __restrict delta, const float* __restrict bias,
                        const float* __restrict u, float* __restrict dt, float* __restrict du, float* __restrict acc) {
  for (int64_t k = 0; k < w; ++k) {
    const float step = softplus(delta[k] + bias[k]);
    dt[k] = step;
    du[k] = step * u[k];
    acc[k] = 0.f;
  }
}

inline void step_output(int64_t w, const float* __restrict acc, const float* __restrict D, const float* __restrict u,
                        float* __restrict y) {
  for (int64_t k = 0; k < w; ++k) y[k] = acc[k] + D[k] * u[k];
}

// One state row over w channels: h = 2^(dt A2_n) h + du B_n; acc += C_n h. Its own function with restrict
// pointers, so that the compiler sees no aliasing and vectorises the whole loop, exp2_nonpositive included.
inline void state_update(int64_t w, const float* __restrict dt, const float* __restrict du,
                         const float* __restrict A2n, float bn, float cn, float* __restrict hn,
                         float* __restrict acc) {
  for (int64_t k = 0; k < w; ++k) {
    const float state = exp2_nonpositive(dt[k] * A2n[k]) * hn[k] + du[k] * bn;
    hn[k] = state;
    acc[k] += cn * state;
  }
}

// acc += w * u and out = silu(x) over n channels (restrict: vectorised, as state_update)
inline void multiply_add(int64_t n, const float* __restrict w, const float* __restrict u, float* __restrict acc) {
  for (int64_t c = 0; c < n; ++c) acc[c] += w[c] * u[c];
}

inline void silu_into(int64_t n, const float* __restrict x, float* __restrict out) {
  for (int64_t c = 0; c < n; ++c) out[c] = x[c] / (1.f + std::exp(-x[c]));
}

// y = (y + other) / 2 and y *= silu(z) over n channels (restrict: vectorised)
inline void average_into(int64_t n, const float* __restrict other, float* __restrict y) {
  for (int64_t c = 0; c < n; ++c) y[c] = 0.5f * (y[c] + other[c]);
}

inline void gate_into(int64_t n, const float* __restrict z, float* __restrict y) {
  for (int64_t c = 0; c < n; ++c) y[c] *= z[c] / (1.f + std::exp(-z[c]));
}

struct ScanArgs {
  const float *u, *delta, *A2, *B, *C, *D, *bias;
  float* y;
  int64_t L, d, N;
};

// The scan over L of batch entry b's channels k0 .. k0 + w, from a zero state, forward (t = 0 .. L-1) or with
// `reverse` backward (t = L-1 .. 0). A step's dt and du (step_inputs) are at row t of dt_all / du_all ((L, w))
// when `keep_steps`, else at row 0 (used once); with `have_steps` (which needs `keep_steps`) they are read from
// there, not computed: the second direction of a bidirectional scan reuses the first's softplus. `combine`: y = (y + C h + D u) / 2 (the
// mean with the first direction, already in y), else y = C h + D u. `gate` (row t of batch entry b at
// gate + b * gate_b + t * gate_l, unit channel stride) or nullptr: then y *= silu(gate).
void scan_channels(const ScanArgs& a, int64_t b, int64_t k0, int64_t w, bool reverse, bool keep_steps,
                   bool have_steps, bool combine, const float* gate, int64_t gate_b, int64_t gate_l, float* h,
                   float* dt_all, float* du_all, float* acc, float* out) {
  std::fill(h, h + a.N * w, 0.f);
  for (int64_t s = 0; s < a.L; ++s) {
    const int64_t t = reverse ? a.L - 1 - s : s;
    const int64_t row = b * a.L + t;
    const float* ut = a.u + row * a.d + k0;
    const float* Bt = a.B + row * a.N;
    const float* Ct = a.C + row * a.N;
    float* dt = dt_all + (keep_steps ? t * w : 0);
    float* du = du_all + (keep_steps ? t * w : 0);
    if (have_steps) {
      std::fill(acc, acc + w, 0.f);
    } else {
      step_inputs(w, a.delta + row * a.d + k0, a.bias + k0, ut, dt, du, acc);
    }
    for (int64_t n = 0; n < a.N; ++n) {
      state_update(w, dt, du, a.A2 + n * a.d + k0, Bt[n], Ct[n], h + n * w, acc);
    }
    float* yt = a.y + row * a.d + k0;
    if (combine) {
      step_output(w, acc, a.D + k0, ut, out);
      average_into(w, out, yt);
    } else {
      step_output(w, acc, a.D + k0, ut, yt);
    }
    if (gate != nullptr) gate_into(w, gate + b * gate_b + t * gate_l + k0, yt);
  }
}


// Training backward's recomputation of a step (state_update's, into separate buffers):
// a_out = 2^(dt A2_n), h_out = a h_in + dtu B_n.
inline void train_state_step(int64_t w, const float* __restrict dt, const float* __restrict dtu,
                             const float* __restrict A2n, float bn, const float* __restrict h_in,
                             float* __restrict a_out, float* __restrict h_out) {
  for (int64_t k = 0; k < w; ++k) {
    const float a = exp2_nonpositive(dt[k] * A2n[k]);
    a_out[k] = a;
    h_out[k] = a * h_in[k] + dtu[k] * bn;
  }
}

// One state row of the adjoint step at t: g = g + C_n gy (the adjoint of h[t]); returns sum_k h[t] gy (dC_n) through
// *gc and sum_k g dtu (dB_n) through *gb; g_dtu += g B_n; gz = g a h[t-1] (the adjoint of dt A2 up to ln 2):
// g_dt += gz A2_n, g_A2n += gz dt; then g = g a, the adjoint arriving at h[t-1].
inline void train_adjoint_row(int64_t w, const float* __restrict gy, const float* __restrict dt,
                              const float* __restrict dtu, const float* __restrict A2n, float bn, float cn,
                              const float* __restrict h, const float* __restrict h_prev, const float* __restrict a,
                              float* __restrict g, float* __restrict g_dt, float* __restrict g_dtu,
                              float* __restrict g_A2n, float* gc, float* gb) {
  float sum_c = 0.f, sum_b = 0.f;
  for (int64_t k = 0; k < w; ++k) {
    const float gk = g[k] + cn * gy[k];
    sum_c += h[k] * gy[k];
    sum_b += gk * dtu[k];
    g_dtu[k] += gk * bn;
    const float gz = gk * a[k] * h_prev[k];
    g_dt[k] += gz * A2n[k];
    g_A2n[k] += gz * dt[k];
    g[k] = gk * a[k];
  }
  *gc = sum_c;
  *gb = sum_b;
}

void check_train_inputs(const char* name, const torch::Tensor& delta, const torch::Tensor& dtu,
                        const torch::Tensor& A2, const torch::Tensor& B, const torch::Tensor& C) {
  for (const auto& t : {delta, dtu, A2, B, C}) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous(), name,
                ": contiguous float32 CPU tensors");
  }
  TORCH_CHECK(delta.dim() == 3 && dtu.sizes() == delta.sizes(), name, ": delta and dtu must be (b, L, d)");
  TORCH_CHECK(A2.dim() == 2 && A2.size(1) == delta.size(2), name, ": A2 must be (N, d)");
  TORCH_CHECK(B.dim() == 3 && B.size(0) == delta.size(0) && B.size(1) == delta.size(1) && B.size(2) == A2.size(0) &&
              C.sizes() == B.sizes(), name, ": B and C must be (b, L, N)");
}

}  // namespace

// u, delta: (b, L, d) float32; A2: (N, d) float32 = A^T * log2(e); B, C: (b, L, N) float32;
// D, delta_bias: (d,) float32. Returns y: (b, L, d) float32. `bidirectional`: y is the mean of the scan and of
// the scan over the reversed sequence, both from a zero state (= scanning the flipped sequence and flipping its
// output back; the two share each step's softplus). `gate` ((b, L, d), unit channel stride: the z half of
// in_proj's output is read in place) or None: y * silu(gate), Mamba's gated output.
torch::Tensor selective_scan_cpu(torch::Tensor u, torch::Tensor delta, torch::Tensor A2, torch::Tensor B,
                                 torch::Tensor C, torch::Tensor D, torch::Tensor delta_bias, bool bidirectional,
                                 c10::optional<torch::Tensor> gate) {
  for (const auto& t : {u, delta, A2, B, C, D, delta_bias}) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32, "selective_scan_cpu: float32 CPU tensors");
  }
  TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes(), "selective_scan_cpu: u and delta must be (b, L, d)");
  const int64_t nb = u.size(0), L = u.size(1), d = u.size(2), N = A2.size(0);
  TORCH_CHECK(A2.dim() == 2 && A2.size(1) == d, "selective_scan_cpu: A2 must be (N, d)");
  TORCH_CHECK(B.dim() == 3 && B.size(0) == nb && B.size(1) == L && B.size(2) == N && C.sizes() == B.sizes(),
              "selective_scan_cpu: B and C must be (b, L, N)");
  TORCH_CHECK(D.numel() == d && delta_bias.numel() == d, "selective_scan_cpu: D and delta_bias must be (d,)");
  torch::Tensor z;
  if (gate.has_value()) {
    z = *gate;
    TORCH_CHECK(z.device().is_cpu() && z.scalar_type() == torch::kFloat32 && z.sizes() == u.sizes(),
                "selective_scan_cpu: gate must be a float32 CPU tensor shaped as u");
    if (z.stride(2) != 1) z = z.contiguous();
  }
  u = u.contiguous(); delta = delta.contiguous(); A2 = A2.contiguous(); B = B.contiguous(); C = C.contiguous();
  D = D.contiguous(); delta_bias = delta_bias.contiguous();
  auto y = torch::empty_like(u);
  if (y.numel() == 0) return y;  // no channels, steps or batch entries: nothing to scan (and no blocks to size)
  const ScanArgs args{u.data_ptr<float>(), delta.data_ptr<float>(), A2.data_ptr<float>(), B.data_ptr<float>(),
                      C.data_ptr<float>(), D.data_ptr<float>(), delta_bias.data_ptr<float>(), y.data_ptr<float>(),
                      L, d, N};
  const float* pz = z.defined() ? z.data_ptr<float>() : nullptr;
  const int64_t zb = z.defined() ? z.stride(0) : 0, zl = z.defined() ? z.stride(1) : 0;
  // Channels are independent: work items are (batch entry, block of channels). With one thread a block is all
  // d channels (the longest vector loops); with more, blocks of a multiple of 16 channels (one 512-bit vector)
  // spread over the threads. Blocks start at multiples of 16 either way, so every channel is computed by the
  // same vector code (full vector or the tail's) whatever the thread count: the result does not depend on it.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t share = (d * nb + threads - 1) / threads;
  const int64_t per_block = threads == 1 ? d : std::min<int64_t>(d, std::max<int64_t>(16, (share + 15) / 16 * 16));
  const int64_t blocks = (d + per_block - 1) / per_block;
  // The loop touches no Python object: other threads (the node's other pipeline stage) keep running.
  pybind11::gil_scoped_release no_gil;
  at::parallel_for(0, nb * blocks, 1, [&](int64_t begin, int64_t end) {
    // A bidirectional scan keeps every step's dt and du for the reverse direction (L x w floats each)
    const int64_t rows = bidirectional ? std::max<int64_t>(L, 1) : 1;
    std::vector<float> h(N * per_block), dt(rows * per_block), du(rows * per_block), acc(per_block), out(per_block);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / blocks, k0 = (item % blocks) * per_block;
      const int64_t w = std::min(per_block, d - k0);  // channels k0 .. k0 + w
      // forward; with a second direction it keeps its steps and leaves the gate to the second
      scan_channels(args, b, k0, w, /*reverse=*/false, /*keep_steps=*/bidirectional, /*have_steps=*/false,
                    /*combine=*/false, bidirectional ? nullptr : pz, zb, zl, h.data(), dt.data(), du.data(),
                    acc.data(), out.data());
      if (bidirectional) {
        scan_channels(args, b, k0, w, /*reverse=*/true, /*keep_steps=*/true, /*have_steps=*/true,
                      /*combine=*/true, pz, zb, zl, h.data(), dt.data(), du.data(), acc.data(), out.data());
      }
    }
  });
  return y;
}

// u: (b, L, d) float32 with unit channel stride (a slice of a wider tensor is read in place); weight: (d, k),
// bias: (d,). Returns silu(conv(u)) (b, L, d), conv = the depthwise convolution along L with zero padding `pad`
// before the sequence (and k - 1 - pad after it): out[t] = bias + sum_j weight[:, j] u[t + j - pad].
torch::Tensor depthwise_conv_silu(torch::Tensor u, torch::Tensor weight, torch::Tensor bias, int64_t pad) {
  for (const auto& t : {u, weight, bias}) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32, "depthwise_conv_silu: float32 CPU tensors");
  }
  TORCH_CHECK(u.dim() == 3, "depthwise_conv_silu: u must be (b, L, d)");
  const int64_t nb = u.size(0), L = u.size(1), d = u.size(2);
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) == d && bias.numel() == d,
              "depthwise_conv_silu: weight must be (d, k) and bias (d,)");
  const int64_t k = weight.size(1);
  TORCH_CHECK(pad >= 0 && pad < k, "depthwise_conv_silu: padding must be in [0, k)");
  if (u.stride(2) != 1) u = u.contiguous();
  const auto wt = weight.t().contiguous();  // (k, d): one contiguous row of channel weights per tap
  const auto b_ = bias.contiguous();
  auto out = torch::empty({nb, L, d}, u.options().memory_format(at::MemoryFormat::Contiguous));
  const float* pu = u.data_ptr<float>();
  const float* pw = wt.data_ptr<float>();
  const float* pb = b_.data_ptr<float>();
  float* po = out.data_ptr<float>();
  const int64_t sb = u.stride(0), sl = u.stride(1);
  pybind11::gil_scoped_release no_gil;
  at::parallel_for(0, nb * L, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(d);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / L, t = row % L;
      std::copy(pb, pb + d, acc.begin());
      const int64_t j0 = std::max<int64_t>(0, pad - t), j1 = std::min<int64_t>(k, L - t + pad);
      for (int64_t j = j0; j < j1; ++j) multiply_add(d, pw + j * d, pu + b * sb + (t + j - pad) * sl, acc.data());
      silu_into(d, acc.data(), po + row * d);
    }
  });
  return out;
}


// Training forward. delta (after delta_bias and softplus) and dtu = delta * u: (b, L, d); A2 = A^T log2(e): (N, d);
// B, C: (b, L, N); all contiguous float32. Returns y = C h (b, L, d) (no D u: autograd adds it) and the state entering
// every segment of `segment` steps, (b, ceil(L / segment), N, d), which is all that backward keeps of the states.
std::vector<torch::Tensor> scan_train_forward(torch::Tensor delta, torch::Tensor dtu, torch::Tensor A2,
                                              torch::Tensor B, torch::Tensor C, int64_t segment) {
  check_train_inputs("scan_train_forward", delta, dtu, A2, B, C);
  TORCH_CHECK(segment > 0, "scan_train_forward: segment must be > 0");
  const int64_t nb = delta.size(0), L = delta.size(1), d = delta.size(2), N = A2.size(0);
  const int64_t segments = (L + segment - 1) / segment;
  auto y = torch::zeros_like(delta);
  auto starts = torch::empty({nb, segments, N, d}, delta.options());
  const float *pd = delta.data_ptr<float>(), *pu = dtu.data_ptr<float>(), *pa = A2.data_ptr<float>();
  const float *pB = B.data_ptr<float>(), *pC = C.data_ptr<float>();
  float *py = y.data_ptr<float>(), *ps = starts.data_ptr<float>();
  pybind11::gil_scoped_release no_gil;
  // Batch entries are independent (and, per entry, computed the same way whatever the thread count). Only they are
  // spread over threads: training batches give b >= 8 here (4 pairs, and the two directions of a version-2 scan).
  at::parallel_for(0, nb, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> h(N * d);
    for (int64_t b = begin; b < end; ++b) {
      std::fill(h.begin(), h.end(), 0.f);
      for (int64_t t = 0; t < L; ++t) {
        if (t % segment == 0) std::copy(h.begin(), h.end(), ps + (b * segments + t / segment) * N * d);
        const int64_t row = b * L + t;
        for (int64_t n = 0; n < N; ++n) {
          state_update(d, pd + row * d, pu + row * d, pa + n * d, pB[row * N + n], pC[row * N + n], h.data() + n * d,
                       py + row * d);  // y = C h (y starts at 0)
        }
      }
    }
  });
  return {y, starts};
}

// Training backward: the gradients of scan_train_forward's delta, dtu, A2, B, C for the output gradient gy (b, L, d),
// from its saved segment starts. Per batch entry, last segment first: the segment's states and decays are computed
// again from its start (2 * segment + 1 rows of (N, d)), then the adjoint g of the state runs back through it. A2's
// gradient comes back per batch entry, (b, N, d): the caller sums it (no shared accumulator between threads).
std::vector<torch::Tensor> scan_train_backward(torch::Tensor delta, torch::Tensor dtu, torch::Tensor A2,
                                               torch::Tensor B, torch::Tensor C, torch::Tensor starts,
                                               torch::Tensor gy, int64_t segment) {
  check_train_inputs("scan_train_backward", delta, dtu, A2, B, C);
  TORCH_CHECK(segment > 0, "scan_train_backward: segment must be > 0");
  for (const auto& t : {gy, starts}) {
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat32 && t.is_contiguous(),
                "scan_train_backward: gy and starts must be contiguous float32 CPU tensors");
  }
  TORCH_CHECK(gy.sizes() == delta.sizes(), "scan_train_backward: gy must be shaped as delta");
  const int64_t nb = delta.size(0), L = delta.size(1), d = delta.size(2), N = A2.size(0);
  const int64_t segments = (L + segment - 1) / segment;
  TORCH_CHECK(starts.dim() == 4 && starts.size(0) == nb && starts.size(1) == segments && starts.size(2) == N &&
              starts.size(3) == d,
              "scan_train_backward: starts must be scan_train_forward's (b, ceil(L / segment), N, d)");
  auto g_delta = torch::zeros_like(delta), g_dtu = torch::zeros_like(delta);
  auto g_A2 = torch::zeros({nb, N, d}, delta.options());
  auto g_B = torch::empty_like(B), g_C = torch::empty_like(C);
  const float *pd = delta.data_ptr<float>(), *pu = dtu.data_ptr<float>(), *pa = A2.data_ptr<float>();
  const float *pB = B.data_ptr<float>(), *pC = C.data_ptr<float>(), *ps = starts.data_ptr<float>();
  const float* pg = gy.data_ptr<float>();
  float *gd = g_delta.data_ptr<float>(), *gu = g_dtu.data_ptr<float>(), *ga = g_A2.data_ptr<float>();
  float *gB = g_B.data_ptr<float>(), *gC = g_C.data_ptr<float>();
  const float ln2 = 0.69314718055994531f;
  pybind11::gil_scoped_release no_gil;
  at::parallel_for(0, nb, 1, [&](int64_t begin, int64_t end) {
    const int64_t S = std::min(segment, std::max<int64_t>(L, 1));
    std::vector<float> hs((S + 1) * N * d), decay(S * N * d), g(N * d);
    for (int64_t b = begin; b < end; ++b) {
      std::fill(g.begin(), g.end(), 0.f);
      float* gA2 = ga + b * N * d;
      for (int64_t s = segments - 1; s >= 0; --s) {
        const int64_t t0 = s * segment, t1 = std::min(L, t0 + segment);
        // the segment's states hs[i + 1] = h[t0 + i] (hs[0] = its start) and decays decay[i] at step t0 + i
        std::copy(ps + (b * segments + s) * N * d, ps + (b * segments + s + 1) * N * d, hs.begin());
        for (int64_t t = t0; t < t1; ++t) {
          const int64_t row = b * L + t, i = t - t0;
          for (int64_t n = 0; n < N; ++n) {
            train_state_step(d, pd + row * d, pu + row * d, pa + n * d, pB[row * N + n],
                             hs.data() + (i * N + n) * d, decay.data() + (i * N + n) * d,
                             hs.data() + ((i + 1) * N + n) * d);
          }
        }
        for (int64_t t = t1 - 1; t >= t0; --t) {
          const int64_t row = b * L + t, i = t - t0;
          for (int64_t n = 0; n < N; ++n) {
            train_adjoint_row(d, pg + row * d, pd + row * d, pu + row * d, pa + n * d, pB[row * N + n],
                              pC[row * N + n], hs.data() + ((i + 1) * N + n) * d, hs.data() + (i * N + n) * d,
                              decay.data() + (i * N + n) * d, g.data() + n * d, gd + row * d, gu + row * d,
                              gA2 + n * d, gC + row * N + n, gB + row * N + n);
          }
        }
      }
      // d(2^z)/dz = ln 2 * 2^z: the ln 2 of every decay's derivative, applied once
      for (int64_t k = 0; k < L * d; ++k) gd[b * L * d + k] *= ln2;
      for (int64_t k = 0; k < N * d; ++k) gA2[k] *= ln2;
    }
  });
  return {g_delta, g_dtu, g_A2, g_B, g_C};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("selective_scan_cpu", &selective_scan_cpu, "forward-only selective scan on the CPU (float32)",
        pybind11::arg("u"), pybind11::arg("delta"), pybind11::arg("A2"), pybind11::arg("B"), pybind11::arg("C"),
        pybind11::arg("D"), pybind11::arg("delta_bias"), pybind11::arg("bidirectional") = false,
        pybind11::arg("gate") = pybind11::none());
  m.def("depthwise_conv_silu", &depthwise_conv_silu, "silu(depthwise conv1d along L), (b, L, d) layout (float32)");
  m.def("scan_train_forward", &scan_train_forward, "training selective scan, forward: y = C h and segment starts");
  m.def("scan_train_backward", &scan_train_backward, "training selective scan, backward from the segment starts");
}
