"""The colour maths of engines/colour.py as CUDA kernels, for engines that run on an NVIDIA GPU.

Two kernels do the per-pixel work around the network, so only 8-bit planes cross
the PCIe bus (uint8 L up, uint8 BGR down):

* `l8_to_network`: resize a full-resolution 8-bit L plane to the network size the
  way cv2.resize(INTER_AREA) does (area averaging when shrinking, OpenCV's
  area-weighted linear taps when enlarging), round to 8 bits like the CPU path,
  then normalise to (L*-50)/50 straight into the engine's batch input.
* `merge_l8_ab_bgr`: quantise the network's low-resolution ab to OpenCV's 8-bit Lab
  (ab + 128, clipped, truncated as the CPU path does), upsample it bilinearly
  (cv2 INTER_LINEAR pixel centres), merge it with the untouched full-resolution L
  and convert Lab -> sRGB (D65, OpenCV's matrix and thresholds) to interleaved BGR.

Expected deviation from the CPU path (engines.colour with OpenCV). The kernels
reproduce OpenCV's arithmetic: INTER_AREA's weights and rounding (including its
whole-number fast path), and 8-bit INTER_LINEAR's 11-bit fixed-point weights and
vectorised rounding. Measured by tests/test_tensorrt.py on this source compiled
for the CPU: the network input matches exactly; BGR differs by at most 2 levels
(mean 0.05) because OpenCV converts 8-bit Lab with integer tables where these
kernels use float maths (over the whole 8-bit Lab cube: at most 3 levels, mean
0.03). On a GPU, CUDA's powf may add one level at rounding boundaries; the
tests allow 1 level for the network input and 3 for BGR. Compiled without fused
multiply-add so the float rounding follows the CPU path.

The kernels use no shared memory or warp intrinsics: every thread computes one
output pixel on its own, which also lets the tests run the same source on a CPU.
"""
from __future__ import annotations

KERNEL_SOURCE = r"""
#define AREA_EPS 1e-3

__device__ __forceinline__ float clampf(float v, float lo, float hi)
{
    return fminf(fmaxf(v, lo), hi);
}

/* OpenCV's area weights along one axis for output index d: source pixels
   [first, last], with partial weights at both ends, all divided by the cell size. */
__device__ __forceinline__ void area_span(int d, double scale, int src_len, int *first, int *last,
                                          float *w_first, float *w_last, float *w_inner)
{
    double fs1 = d * scale, fs2 = fs1 + scale;
    double cell = fmin(scale, src_len - fs1);
    int s1 = (int)ceil(fs1), s2 = (int)floor(fs2);
    s2 = min(s2, src_len - 1);
    s1 = min(s1, s2);
    *first = s1;
    *w_first = 0.f;
    if (s1 - fs1 > AREA_EPS) {
        *first = s1 - 1;
        *w_first = (float)((s1 - fs1) / cell);
    }
    *last = s2 - 1;
    *w_last = 0.f;
    if (fs2 - s2 > AREA_EPS) {
        *last = s2;
        *w_last = (float)(fmin(fmin(fs2 - s2, 1.0), cell) / cell);
    }
    *w_inner = (float)(1.0 / cell);
}

__device__ __forceinline__ float area_weight(int s, int first, int last, int s1_partial, int s2_partial,
                                             float w_first, float w_last, float w_inner)
{
    if (s == first && s1_partial) return w_first;
    if (s == last && s2_partial) return w_last;
    return w_inner;
}

/* cv2.resize's 8-bit bilinear arithmetic: 11-bit fixed-point weights, integer
   horizontal sums and the rounding of its vectorised vertical pass. */
__device__ __forceinline__ int cv_linear_u8(int p00, int p01, int p10, int p11, float fx, float fy)
{
    int ax0 = (int)rintf((1.f - fx) * 2048.f), ax1 = (int)rintf(fx * 2048.f);
    int by0 = (int)rintf((1.f - fy) * 2048.f), by1 = (int)rintf(fy * 2048.f);
    int s0 = p00 * ax0 + p01 * ax1, s1 = p10 * ax0 + p11 * ax1;
    int v = (((s0 >> 4) * by0) >> 16) + (((s1 >> 4) * by1) >> 16);
    return min(max((v + 2) >> 2, 0), 255);
}

/* Horizontal taps are clamped at the edges (offset 0); vertical ones keep their
   offset and read clamped rows, as cv2.resize does. */
__device__ __forceinline__ void clamp_x_tap(int src_len, int *s0, int *s1, float *f)
{
    if (*s0 < 0) { *s0 = 0; *f = 0.f; }
    if (*s0 >= src_len - 1) { *s0 = src_len - 1; *f = 0.f; }
    *s1 = min(*s0 + 1, src_len - 1);
}

__device__ __forceinline__ void clamp_y_rows(int src_len, int sy, int *s0, int *s1)
{
    *s0 = min(max(sy, 0), src_len - 1);
    *s1 = min(max(sy + 1, 0), src_len - 1);
}

/* INTER_AREA when enlarging: linear taps at area-shaped offsets. */
__device__ __forceinline__ void area_up_tap(int d, int src_len, int dst_len, int *s, float *f)
{
    double scale = (double)src_len / dst_len, inv = (double)dst_len / src_len;
    int sx = (int)floor(d * scale);
    float fx = (float)((d + 1) - (sx + 1) * inv);
    *f = fx <= 0.f ? 0.f : fx - floorf(fx);
    *s = sx;
}

/* INTER_LINEAR: pixel centres aligned. */
__device__ __forceinline__ void linear_tap(int d, int src_len, int dst_len, int *s, float *f)
{
    double scale = (double)src_len / dst_len;
    float fx = (float)((d + 0.5) * scale - 0.5);
    int sx = (int)floorf(fx);
    *f = fx - sx;
    *s = sx;
}

/* One output pixel of cv2.resize(l8, (dst_w, dst_h), INTER_AREA), kept at 8 bits like the
   CPU path, then (L* - 50) / 50 = l8 / 127.5 - 1 into dst (one batch slot, dst_h x dst_w). */
__global__ void l8_to_network(const unsigned char *__restrict__ src, int src_w, int src_h,
                              float *__restrict__ dst, int dst_w, int dst_h)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= dst_w || y >= dst_h) return;
    float v;
    if (src_w == dst_w && src_h == dst_h) {
        v = (float)src[y * src_w + x];
    } else if (src_w % dst_w == 0 && src_h % dst_h == 0) {
        /* whole-number shrink: OpenCV's fast path, an integer box sum */
        int kx = src_w / dst_w, ky = src_h / dst_h, sum = 0;
        for (int sy = y * ky; sy < (y + 1) * ky; ++sy)
            for (int sx = x * kx; sx < (x + 1) * kx; ++sx)
                sum += src[(long)sy * src_w + sx];
        /* its vectorised 2x2 case rounds halves up, the general case to even */
        v = kx == 2 && ky == 2 ? (float)((sum + 2) >> 2) : rintf((float)sum * (1.f / (kx * ky)));
    } else if (src_w >= dst_w && src_h >= dst_h) {
        double sx_scale = (double)src_w / dst_w, sy_scale = (double)src_h / dst_h;
        int x0, x1, y0, y1;
        float wx0, wx1, wxi, wy0, wy1, wyi;
        area_span(x, sx_scale, src_w, &x0, &x1, &wx0, &wx1, &wxi);
        area_span(y, sy_scale, src_h, &y0, &y1, &wy0, &wy1, &wyi);
        int xp0 = wx0 > 0.f, xp1 = wx1 > 0.f, yp0 = wy0 > 0.f, yp1 = wy1 > 0.f;
        float sum = 0.f;
        for (int sy = y0; sy <= y1; ++sy) {
            float row = 0.f;
            const unsigned char *line = src + (long)sy * src_w;
            for (int sx = x0; sx <= x1; ++sx)
                row += line[sx] * area_weight(sx, x0, x1, xp0, xp1, wx0, wx1, wxi);
            sum += row * area_weight(sy, y0, y1, yp0, yp1, wy0, wy1, wyi);
        }
        v = rintf(sum);
    } else {
        int x0, x1, y0, y1, sy;
        float fx, fy;
        area_up_tap(x, src_w, dst_w, &x0, &fx);
        clamp_x_tap(src_w, &x0, &x1, &fx);
        area_up_tap(y, src_h, dst_h, &sy, &fy);
        clamp_y_rows(src_h, sy, &y0, &y1);
        const unsigned char *r0 = src + (long)y0 * src_w, *r1 = src + (long)y1 * src_w;
        v = (float)cv_linear_u8(r0[x0], r0[x1], r1[x0], r1[x1], fx, fy);
    }
    dst[y * dst_w + x] = clampf(v, 0.f, 255.f) * (1.f / 127.5f) - 1.f;
}

/* 8-bit a or b of the low-resolution prediction, as the CPU path stores it:
   clip(v + 128, 0, 255) truncated to an integer. */
__device__ __forceinline__ int ab8(const float *plane, int aw, int ax, int ay)
{
    return (int)clampf(plane[ay * aw + ax] + 128.f, 0.f, 255.f);
}

__device__ __forceinline__ float lab_f_inverse(float f)
{
    const float f_thresh = 7.787f * 0.008856f + 16.0f / 116.0f;
    return f <= f_thresh ? (f - 16.0f / 116.0f) / 7.787f : f * f * f;
}

__device__ __forceinline__ unsigned char srgb8(float linear)
{
    float v = clampf(linear, 0.f, 1.f);
    v = v <= 0.0031308f ? 12.92f * v : 1.055f * powf(v, 1.f / 2.4f) - 0.055f;
    return (unsigned char)clampf(rintf(v * 255.f), 0.f, 255.f);
}

/* Full-resolution BGR from the frame's own 8-bit L (h x w) and the network's ab
   (2 x ah x aw float, Lab units), written interleaved into bgr (h x w x 3). */
__global__ void merge_l8_ab_bgr(const unsigned char *__restrict__ l8, int w, int h,
                                const float *__restrict__ ab, int aw, int ah,
                                unsigned char *__restrict__ bgr)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= w || y >= h) return;

    int ax0, ax1, ay0, ay1, sy;
    float fx, fy;
    linear_tap(x, aw, w, &ax0, &fx);
    clamp_x_tap(aw, &ax0, &ax1, &fx);
    linear_tap(y, ah, h, &sy, &fy);
    clamp_y_rows(ah, sy, &ay0, &ay1);
    float lab_ab[2];
    for (int c = 0; c < 2; ++c) {
        const float *plane = ab + (long)c * aw * ah;
        lab_ab[c] = cv_linear_u8(ab8(plane, aw, ax0, ay0), ab8(plane, aw, ax1, ay0),
                                 ab8(plane, aw, ax0, ay1), ab8(plane, aw, ax1, ay1), fx, fy) - 128.f;
    }

    /* OpenCV's 8-bit Lab: L* = l8 * 100 / 255, a* = a8 - 128, b* = b8 - 128 (D65) */
    float L = l8[y * w + x] * (100.f / 255.f);
    float Y, fY;
    if (L <= 0.008856f * 903.3f) {
        Y = L / 903.3f;
        fY = 7.787f * Y + 16.0f / 116.0f;
    } else {
        fY = (L + 16.0f) / 116.0f;
        Y = fY * fY * fY;
    }
    float X = lab_f_inverse(fY + lab_ab[0] / 500.0f) * 0.950456f;
    float Z = lab_f_inverse(fY - lab_ab[1] / 200.0f) * 1.088754f;
    float r = 3.240479f * X - 1.53715f * Y - 0.498535f * Z;
    float g = -0.969256f * X + 1.875991f * Y + 0.041556f * Z;
    float b = 0.055648f * X - 0.204043f * Y + 1.057311f * Z;
    long o = ((long)y * w + x) * 3;
    bgr[o] = srgb8(b);
    bgr[o + 1] = srgb8(g);
    bgr[o + 2] = srgb8(r);
}
"""

BLOCK = (32, 8, 1)


def grid_for(width: int, height: int) -> tuple[int, int]:
    """Blocks covering a width x height image with one thread per pixel."""
    return (width + BLOCK[0] - 1) // BLOCK[0], (height + BLOCK[1] - 1) // BLOCK[1]


class ColourKernels:
    """The kernels compiled for the CUDA context current in the calling thread.

    Pointers are device addresses as ints (int(DeviceAllocation) + byte offset);
    every launch is asynchronous on the given pycuda Stream."""

    def __init__(self) -> None:
        from pycuda.compiler import SourceModule  # needs nvcc; the caller falls back to the CPU without it

        # no fused multiply-add contraction: keeps the float rounding of the CPU path
        module = SourceModule(KERNEL_SOURCE, options=["--fmad=false"])
        self._module = module  # keeps the functions' module loaded
        # prepared calls skip pycuda's per-call argument type guessing
        self._to_network = module.get_function("l8_to_network").prepare("PiiPii")
        self._merge = module.get_function("merge_l8_ab_bgr").prepare("PiiPiiP")

    def l8_to_network(self, src: int, src_w: int, src_h: int, dst: int, dst_w: int, dst_h: int,
                      stream) -> None:
        """uint8 L plane (src_h x src_w) -> normalised float32 network input (dst_h x dst_w)."""
        self._to_network.prepared_async_call(grid_for(dst_w, dst_h), BLOCK, stream,
                                             src, src_w, src_h, dst, dst_w, dst_h)

    def merge_l8_ab(self, l8: int, w: int, h: int, ab: int, ab_w: int, ab_h: int, bgr: int, stream) -> None:
        """uint8 L (h x w) + float32 ab (2 x ab_h x ab_w) -> uint8 BGR (h x w x 3)."""
        self._merge.prepared_async_call(grid_for(w, h), BLOCK, stream, l8, w, h, ab, ab_w, ab_h, bgr)
