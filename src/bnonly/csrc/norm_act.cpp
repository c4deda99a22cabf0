// Fused BatchNorm (batch statistics) + optional residual add + optional ReLU for CPU training.
//
// Built by bnonly/fused_norm.py with the system C++ compiler into a plain shared library (no
// torch headers, so it compiles in about a second) and called through ctypes on the tensors'
// data pointers. Activations are float32 or bfloat16 (raw uint16 bits); statistics, γ/β and
// their gradients are float32, partial sums are combined in double.
//
// Layouts: channels_last (cl=1): element (m, c) at m*C + c with M = N*S rows; NCHW contiguous
// (cl=0): element (n, c, s) at (n*C + c)*S + s. Work is cut into fixed chunks (row blocks, or
// (n, c) planes) whose partial sums are combined in a fixed order, so results do not depend on
// the thread count. In channels_last the inner loops run over tiles of whole rows (at least 256
// values, the per-channel coefficients repeated along the tile) rather than over one row's C
// channels: with C = 16 a row is two AVX2 vectors, too short a loop to vectorize well.
//
// Forward:  one read of x for the statistics (shifted sums), one read of x (+ residual) and one
//           write of y = relu(x*a + b + r), a = γ·invstd, b = β - mean·a.
// Backward: pass 1 reads dy, x (and y when there is a residual: the ReLU mask cannot be
//           recomputed from x then) for Σg and Σg(x-mean), g = dy·mask, writing g when there is
//           a residual (its gradient); pass 2 writes dx = a·g + k·(x-mean) + d. Without a
//           residual the mask is recomputed from x with the forward's very expression.
// Build with -ffp-contract=off so that expression rounds identically in both passes.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

inline float ld(const float* p, int64_t i) { return p[i]; }
inline float ld(const uint16_t* p, int64_t i) {
  uint32_t u = uint32_t(p[i]) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline void st(float* p, int64_t i, float v) { p[i] = v; }
// Round to nearest even. No select for NaN: a NaN made by arithmetic is quiet, and its bits
// below the top 16 are zero (the CPU's default NaN, or one carried from a bf16 input), so it
// rounds to a NaN; only a hand-made float32 NaN with a full upper mantissa and a set low half
// would carry into the sign. A NaN select here cost the vectorized loops a third of their time
// (mask-register operations on the 16-bit values, benchmarks/norm_act_bandwidth.py).
inline void st(uint16_t* p, int64_t i, float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  p[i] = uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// ReLU that keeps a NaN a NaN, as torch.relu does (a -0 stays -0, where torch gives +0: the same value).
inline float relu(float v) { return v < 0.0f ? 0.0f : v; }

constexpr int64_t TILE_VALUES = 256;  // channels_last: values per tile (whole rows, at least one)
constexpr int64_t TILES_PER_CHUNK = 16;
constexpr int64_t FOLD_LANES = 16;   // channels folded at once (two AVX-512 vectors of doubles)

struct Shape {
  int64_t N, C, S;
  int cl;
  int64_t M() const { return N * S; }
  int64_t tile_rows() const { return std::max<int64_t>(1, TILE_VALUES / C); }
  int64_t tile() const { return tile_rows() * C; }            // values per full tile
  int64_t chunk_rows() const { return tile_rows() * TILES_PER_CHUNK; }
  int64_t chunks() const { return cl ? (M() + chunk_rows() - 1) / chunk_rows() : N * C; }
  int64_t partial() const { return cl ? tile() : 1; }         // partial sums per chunk
};

// A per-channel vector repeated along a tile (channels_last), or as is (NCHW).
std::vector<float> tiled(const Shape& sh, const std::vector<float>& v) {
  if (!sh.cl) return v;
  std::vector<float> t(sh.tile());
  for (int64_t j = 0; j < sh.tile(); ++j) t[j] = v[j % sh.C];
  return t;
}

// Calls f(offset, length) for each tile of channels_last chunk k: `length` values from `offset`,
// starting at channel 0.
template <typename F>
inline void for_tiles(const Shape& sh, int64_t k, F f) {
  const int64_t r0 = k * sh.chunk_rows(), r1 = std::min(sh.M(), r0 + sh.chunk_rows());
  for (int64_t r = r0; r < r1; r += sh.tile_rows()) f(r * sh.C, std::min(sh.tile_rows(), r1 - r) * sh.C);
}

typedef double double8 __attribute__((vector_size(64)));  // GCC/Clang vectors: any ISA
typedef float float8 __attribute__((vector_size(32)));

inline double8 widen(const float* p) {
  float8 f;
  std::memcpy(&f, p, sizeof f);
  return __builtin_convertvector(f, double8);
}

// Scratch kept by the calling thread between calls. Allocated per call, the chunks' sums can be
// large enough for glibc to map and unmap them each time: in a plain C++ driver at two threads
// the page faults and TLB shootdowns cost more than the statistics pass itself (a long-running
// Python process, whose heap has grown, mostly escapes it).
std::vector<double>& scratch(int which) {
  thread_local std::vector<double> s[2];
  return s[which];
}

// Per-channel sums of two quantities over all values, in double, in an order fixed by the shape
// alone (not by the thread count). chunk(k, t1, t2) adds chunk k's values into two zeroed
// partial() arrays (channels_last: tile-long, value j is channel j % C; NCHW: one value for the
// plane k, channel k % C); each chunk's arrays are folded to its channels' doubles inside the
// parallel region, and the chunks' doubles are then summed in chunk order.
template <typename F>
void chunk_sums(const Shape& sh, int threads, F chunk, std::vector<double>& s1, std::vector<double>& s2) {
  const int64_t C = sh.C, K = sh.chunks(), P = sh.partial(), Q = sh.cl ? C : 1;  // Q: channels per chunk
  std::vector<double>& q1 = scratch(0);
  std::vector<double>& q2 = scratch(1);
  q1.resize(K * Q);
  q2.resize(K * Q);
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    std::vector<float> t1(P + FOLD_LANES, 0.0f), t2(P + FOLD_LANES, 0.0f);  // padded: the fold reads whole lanes
#pragma omp for schedule(static)
    for (int64_t k = 0; k < K; ++k) {
      std::fill(t1.begin(), t1.begin() + P, 0.0f);
      std::fill(t2.begin(), t2.begin() + P, 0.0f);
      chunk(k, t1.data(), t2.data());
      // Rows of Q summed in order, FOLD_LANES channels at a time in vector accumulators (in
      // registers: accumulated in memory, each row waited for the previous row's store).
      for (int64_t c0 = 0; c0 < Q; c0 += FOLD_LANES) {
        double8 a1[2] = {}, a2[2] = {};
        for (int64_t j = c0; j < P; j += Q)  // lanes past channel Q-1 read the next row: dropped
          for (int h = 0; h < 2; ++h) {
            a1[h] += widen(&t1[j + 8 * h]);
            a2[h] += widen(&t2[j + 8 * h]);
          }
        for (int64_t l = 0; l < FOLD_LANES && c0 + l < Q; ++l) {
          q1[k * Q + c0 + l] = a1[l / 8][l % 8];
          q2[k * Q + c0 + l] = a2[l / 8][l % 8];
        }
      }
    }
  }
  s1.assign(C, 0.0);
  s2.assign(C, 0.0);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < Q; ++c) {
      const int64_t ch = sh.cl ? c : k % C;
      s1[ch] += q1[k * Q + c];
      s2[ch] += q2[k * Q + c];
    }
}

// Per-channel coefficients of the forward transform y = x*a + b (+ r).
void coefficients(const Shape& sh, const float* gamma, const float* beta, const float* mean, const float* invstd,
                  std::vector<float>& a, std::vector<float>& b) {
  a.resize(sh.C);
  b.resize(sh.C);
  for (int64_t c = 0; c < sh.C; ++c) {
    a[c] = (gamma ? gamma[c] : 1.0f) * invstd[c];
    b[c] = (beta ? beta[c] : 0.0f) - mean[c] * a[c];
  }
}

template <typename T>
inline void sums(const T* __restrict x, const float* __restrict shift, float* __restrict s1, float* __restrict s2,
                 int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    float v = ld(x, j) - shift[j];
    s1[j] += v;
    s2[j] += v * v;
  }
}

template <typename T>
void stats(const T* x, const Shape& sh, double eps, float* mean, float* var, float* invstd, int threads) {
  const int64_t C = sh.C;
  std::vector<float> shift(C);
  for (int64_t c = 0; c < C; ++c) shift[c] = ld(x, sh.cl ? c : c * sh.S);  // first value: sums stay small
  const std::vector<float> shift_t = tiled(sh, shift);
  std::vector<double> s1, s2;
  chunk_sums(sh, threads, [&](int64_t k, float* t1, float* t2) {
    if (sh.cl) {
      for_tiles(sh, k, [&](int64_t o, int64_t n) { sums(x + o, shift_t.data(), t1, t2, n); });
    } else {
      const T* __restrict plane = x + k * sh.S;
      const float s0 = shift[k % C];
      float a1 = 0.0f, a2 = 0.0f;
#pragma omp simd reduction(+ : a1, a2)
      for (int64_t s = 0; s < sh.S; ++s) {
        float v = ld(plane, s) - s0;
        a1 += v;
        a2 += v * v;
      }
      t1[0] = a1;
      t2[0] = a2;
    }
  }, s1, s2);
  const double M = double(sh.M());
  for (int64_t c = 0; c < C; ++c) {
    double m = s1[c] / M;
    double v = s2[c] / M - m * m;
    v = v < 0.0 ? 0.0 : v;  // not std::max, which would turn a NaN into 0
    mean[c] = float(m + shift[c]);
    var[c] = float(v);
    invstd[c] = float(1.0 / std::sqrt(v + eps));
  }
}

// y = relu(x*a + b + r) over n values; a, b indexed like the values (tiled, or broadcast by the caller).
template <bool RELU, bool RES, typename T>
inline void transform(const T* __restrict x, const T* __restrict r, const float* __restrict a,
                      const float* __restrict b, T* __restrict y, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    float v = ld(x, j) * a[j] + b[j];
    if (RES) v += ld(r, j);
    st(y, j, RELU ? relu(v) : v);
  }
}

template <bool RELU, bool RES, typename T>
void apply(const T* x, const T* r, const std::vector<float>& a, const std::vector<float>& b, T* y, const Shape& sh,
           int threads) {
  const std::vector<float> at = tiled(sh, a), bt = tiled(sh, b);
  const int64_t K = sh.chunks();
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t k = 0; k < K; ++k) {
    if (sh.cl) {
      for_tiles(sh, k, [&](int64_t o, int64_t n) {
        transform<RELU, RES>(x + o, RES ? r + o : nullptr, at.data(), bt.data(), y + o, n);
      });
    } else {
      const int64_t o = k * sh.S;
      const float ac = a[k % sh.C], bc = b[k % sh.C];
      const T* __restrict xp = x + o;
      const T* __restrict rp = RES ? r + o : nullptr;
      T* __restrict yp = y + o;
      for (int64_t s = 0; s < sh.S; ++s) {
        float v = ld(xp, s) * ac + bc;
        if (RES) v += ld(rp, s);
        st(yp, s, RELU ? relu(v) : v);
      }
    }
  }
}

// g = dy · mask, where mask = y > 0 (FROM_Y: there was a residual) or x*a + b > 0, recomputed with
// the forward's expression.
template <bool RELU, bool FROM_Y, typename T>
inline float masked(const T* dy, const T* y, const T* x, float a, float b, int64_t i) {
  float d = ld(dy, i);
  if (!RELU) return d;
  bool on = FROM_Y ? ld(y, i) > 0.0f : (ld(x, i) * a + b) > 0.0f;
  return on ? d : 0.0f;
}

template <bool RELU, bool FROM_Y, bool WRITE_G, typename T>
inline void grad_sums(const T* __restrict dy, const T* __restrict y, const T* __restrict x, const float* __restrict a,
                      const float* __restrict b, const float* __restrict mean, T* __restrict g_out,
                      float* __restrict s1, float* __restrict s2, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    float g = masked<RELU, FROM_Y>(dy, y, x, a[j], b[j], j);
    if (WRITE_G) st(g_out, j, g);
    s1[j] += g;
    s2[j] += g * (ld(x, j) - mean[j]);
  }
}

template <bool RELU, bool FROM_Y, bool READ_G, typename T>
inline void grad_input(const T* __restrict dy, const T* __restrict y, const T* __restrict x, const T* __restrict g_in,
                       const float* __restrict a, const float* __restrict b, const float* __restrict mean,
                       const float* __restrict kx, const float* __restrict d, T* __restrict dx, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    float g = READ_G ? ld(g_in, j) : masked<RELU, FROM_Y>(dy, y, x, a[j], b[j], j);
    st(dx, j, a[j] * g + kx[j] * (ld(x, j) - mean[j]) + d[j]);
  }
}

template <bool RELU, bool FROM_Y, bool WRITE_G, typename T>
void backward_impl(const T* dy, const T* y, const T* x, const float* gamma, const float* beta, const float* mean,
                   const float* invstd, T* g_out, T* dx, float* dgamma, float* dbeta, const Shape& sh, int threads) {
  const int64_t C = sh.C, K = sh.chunks(), S = sh.S;
  std::vector<float> a, b;
  coefficients(sh, gamma, beta, mean, invstd, a, b);
  const std::vector<float> mean_v(mean, mean + C);
  const std::vector<float> at = tiled(sh, a), bt = tiled(sh, b), mt = tiled(sh, mean_v);
  // Pass 1: Σg and Σg(x - mean) per channel; g written out when there is a residual.
  std::vector<double> s1, s2;
  chunk_sums(sh, threads, [&](int64_t k, float* t1, float* t2) {
    if (sh.cl) {
      for_tiles(sh, k, [&](int64_t o, int64_t n) {
        grad_sums<RELU, FROM_Y, WRITE_G>(dy + o, FROM_Y ? y + o : nullptr, x + o, at.data(), bt.data(), mt.data(),
                                         WRITE_G ? g_out + o : nullptr, t1, t2, n);
      });
    } else {
      const int64_t c = k % C, o = k * S;
      const float ac = a[c], bc = b[c], mc = mean[c];
      const T* __restrict dyp = dy + o;
      const T* __restrict yp = FROM_Y ? y + o : nullptr;
      const T* __restrict xp = x + o;
      T* __restrict gp = WRITE_G ? g_out + o : nullptr;
      float a1 = 0.0f, a2 = 0.0f;
#pragma omp simd reduction(+ : a1, a2)
      for (int64_t s = 0; s < S; ++s) {
        float g = masked<RELU, FROM_Y>(dyp, yp, xp, ac, bc, s);
        if (WRITE_G) st(gp, s, g);
        a1 += g;
        a2 += g * (ld(xp, s) - mc);
      }
      t1[0] = a1;
      t2[0] = a2;
    }
  }, s1, s2);
  const double M = double(sh.M());
  std::vector<float> kx(C), d(C);
  for (int64_t c = 0; c < C; ++c) {
    if (dgamma) dgamma[c] = float(s2[c] * invstd[c]);
    if (dbeta) dbeta[c] = float(s1[c]);
    const double ac = double(gamma ? gamma[c] : 1.0f) * invstd[c];
    kx[c] = float(-ac * double(invstd[c]) * double(invstd[c]) * s2[c] / M);
    d[c] = float(-ac * s1[c] / M);
  }
  if (!dx) return;
  // Pass 2: dx = a·g + k·(x - mean) + d, g read back (residual) or recomputed.
  const std::vector<float> kt = tiled(sh, kx), dt = tiled(sh, d);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (int64_t k = 0; k < K; ++k) {
    if (sh.cl) {
      for_tiles(sh, k, [&](int64_t o, int64_t n) {
        grad_input<RELU, FROM_Y, WRITE_G>(dy + o, FROM_Y ? y + o : nullptr, x + o, WRITE_G ? g_out + o : nullptr,
                                          at.data(), bt.data(), mt.data(), kt.data(), dt.data(), dx + o, n);
      });
    } else {
      const int64_t c = k % C, o = k * S;
      const float ac = a[c], bc = b[c], mc = mean[c], kc = kx[c], dc = d[c];
      const T* __restrict dyp = dy + o;
      const T* __restrict yp = FROM_Y ? y + o : nullptr;
      const T* __restrict xp = x + o;
      const T* __restrict gp = WRITE_G ? g_out + o : nullptr;
      T* __restrict dxp = dx + o;
      for (int64_t s = 0; s < S; ++s) {
        float g = WRITE_G ? ld(gp, s) : masked<RELU, FROM_Y>(dyp, yp, xp, ac, bc, s);
        st(dxp, s, ac * g + kc * (ld(xp, s) - mc) + dc);
      }
    }
  }
}

template <typename T>
void backward(const T* dy, const T* y, const T* x, const float* gamma, const float* beta, const float* mean,
              const float* invstd, T* g_out, T* dx, float* dgamma, float* dbeta, const Shape& sh, int relu,
              int threads) {
#define BNONLY_BWD(R, Y, G) \
  backward_impl<R, Y, G>(dy, y, x, gamma, beta, mean, invstd, g_out, dx, dgamma, dbeta, sh, threads)
  if (!relu) {
    if (g_out) BNONLY_BWD(false, false, true); else BNONLY_BWD(false, false, false);
  } else if (y) {
    if (g_out) BNONLY_BWD(true, true, true); else BNONLY_BWD(true, true, false);
  } else {
    if (g_out) BNONLY_BWD(true, false, true); else BNONLY_BWD(true, false, false);
  }
#undef BNONLY_BWD
}

template <typename T>
void forward(const T* x, const T* r, const float* gamma, const float* beta, double eps, T* y, float* mean,
             float* var, float* invstd, const Shape& sh, int relu, int threads) {
  stats(x, sh, eps, mean, var, invstd, threads);
  std::vector<float> a, b;
  coefficients(sh, gamma, beta, mean, invstd, a, b);
  if (relu) {
    if (r) apply<true, true>(x, r, a, b, y, sh, threads); else apply<true, false>(x, r, a, b, y, sh, threads);
  } else {
    if (r) apply<false, true>(x, r, a, b, y, sh, threads); else apply<false, false>(x, r, a, b, y, sh, threads);
  }
}

}  // namespace

extern "C" {

int bnonly_norm_act_abi() { return 1; }

// dtype: 0 float32, 1 bfloat16. Pointers may be null where optional (r, gamma, beta; in the
// backward y, g_out, dx, dgamma, dbeta).
void bnonly_norm_act_forward(int dtype, const void* x, const void* r, const float* gamma, const float* beta,
                             double eps, void* y, float* mean, float* var, float* invstd, int64_t N, int64_t C,
                             int64_t S, int cl, int relu, int threads) {
  Shape sh{N, C, S, cl};
  if (dtype == 0)
    forward((const float*)x, (const float*)r, gamma, beta, eps, (float*)y, mean, var, invstd, sh, relu, threads);
  else
    forward((const uint16_t*)x, (const uint16_t*)r, gamma, beta, eps, (uint16_t*)y, mean, var, invstd, sh, relu,
            threads);
}

void bnonly_norm_act_backward(int dtype, const void* dy, const void* y, const void* x, const float* gamma,
                              const float* beta, const float* mean, const float* invstd, void* g_out, void* dx,
                              float* dgamma, float* dbeta, int64_t N, int64_t C, int64_t S, int cl, int relu,
                              int threads) {
  Shape sh{N, C, S, cl};
  if (dtype == 0)
    backward((const float*)dy, (const float*)y, (const float*)x, gamma, beta, mean, invstd, (float*)g_out,
             (float*)dx, dgamma, dbeta, sh, relu, threads);
  else
    backward((const uint16_t*)dy, (const uint16_t*)y, (const uint16_t*)x, gamma, beta, mean, invstd,
             (uint16_t*)g_out, (uint16_t*)dx, dgamma, dbeta, sh, relu, threads);
}

}  // extern "C"
