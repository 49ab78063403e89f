// Frame conversion arithmetic shared by the CUDA kernels (frame_convert.cu) and the host test
// (frame_convert_host_test.cpp). runtime/frame_convert.py is the definition of correct; every function here
// reproduces it bit for bit, on the host and on the device:
//   RGB:  fp32 v = (x + 1) * 0.5, clamp to [0, 1] (NaN -> 0), v * 255, truncate toward zero.
//   I420: BT.709 limited range, 16-bit fixed point; chroma from the exact sum of each 2x2 block.
// Float operations are written so that no compiler may fuse or reorder them: __fadd_rn / __fmul_rn on the device
// (never contracted into FMA), plain operators on the host built with -ffp-contract=off.
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define HRT_HD __host__ __device__ __forceinline__
#else
#define HRT_HD inline
#endif

namespace hrt {

// ---- 16-bit inputs, carried as their bit patterns so the host needs no CUDA headers ----
struct Bf16Bits { uint16_t bits; };
struct F16Bits { uint16_t bits; };

HRT_HD float bits_to_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(bits);
#else
    union { uint32_t u; float f; } pun;
    pun.u = bits;
    return pun.f;
#endif
}

HRT_HD float to_float(float x) { return x; }

// bf16 is the top half of a float32: widening is a shift, exact.
HRT_HD float to_float(Bf16Bits x) { return bits_to_float(static_cast<uint32_t>(x.bits) << 16); }

// IEEE binary16 -> binary32, exact for every input (subnormals normalised, inf and NaN kept). The same integer
// code runs on host and device, so both sides widen identically by construction.
HRT_HD float to_float(F16Bits x) {
    const uint32_t sign = static_cast<uint32_t>(x.bits & 0x8000u) << 16;
    uint32_t exponent = (x.bits >> 10) & 0x1fu;
    uint32_t mantissa = x.bits & 0x3ffu;
    if (exponent == 0x1fu) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));
    if (exponent == 0u) {
        if (mantissa == 0u) return bits_to_float(sign);
        exponent = 113u;  // 127 - 15 + 1: one shift is always needed below
        while ((mantissa & 0x400u) == 0u) {
            mantissa <<= 1;
            --exponent;
        }
        return bits_to_float(sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13));
    }
    return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

HRT_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}

HRT_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

// One channel value in [-1, 1] -> 0..255, as the pipeline computes it. Halving by * 0.5f equals torch's / 2.0:
// scaling by a power of two is exact unless the result is subnormal, and x + 1 is either 0 or at least 2^-24.
HRT_HD uint8_t channel_to_u8(float x) {
    float v = mul_rn(add_rn(x, 1.0f), 0.5f);
    if (!(v >= 0.0f)) v = 0.0f;  // also NaN -> 0, what torch's cast gives on x86 and Arm
    if (v > 1.0f) v = 1.0f;
    v = mul_rn(v, 255.0f);
#if defined(__CUDA_ARCH__)
    return static_cast<uint8_t>(__float2uint_rz(v));
#else
    return static_cast<uint8_t>(static_cast<uint32_t>(v));  // C++ float->integer conversion truncates
#endif
}

// ---- BT.709 limited range, fixed point (see runtime/frame_convert.py: LUMA_COEFFS, CB_COEFFS, CR_COEFFS) ----
constexpr int kFixedPointBits = 16;
constexpr int32_t kLumaR = 11966, kLumaG = 40254, kLumaB = 4064;
constexpr int32_t kCbR = -6596, kCbG = -22188, kCbB = 28784;
constexpr int32_t kCrR = 28784, kCrG = -26145, kCrB = -2639;
constexpr int32_t kLumaOffset = (16 << kFixedPointBits) + (1 << (kFixedPointBits - 1));
constexpr int32_t kChromaOffset = (128 << (kFixedPointBits + 2)) + (1 << (kFixedPointBits + 1));

HRT_HD uint8_t luma(int32_t r, int32_t g, int32_t b) {
    return static_cast<uint8_t>((kLumaR * r + kLumaG * g + kLumaB * b + kLumaOffset) >> kFixedPointBits);
}

// Chroma of a 2x2 block from the sums of its 4 pixels (0..1020 each): the 2 extra bits of the shift divide by 4.
HRT_HD uint8_t chroma_cb(int32_t sum_r, int32_t sum_g, int32_t sum_b) {
    return static_cast<uint8_t>((kCbR * sum_r + kCbG * sum_g + kCbB * sum_b + kChromaOffset) >> (kFixedPointBits + 2));
}

HRT_HD uint8_t chroma_cr(int32_t sum_r, int32_t sum_g, int32_t sum_b) {
    return static_cast<uint8_t>((kCrR * sum_r + kCrG * sum_g + kCrB * sum_b + kChromaOffset) >> (kFixedPointBits + 2));
}

// ---- per-pixel and per-block bodies: the kernels map threads to (t, row, col) and call these ----

// Element strides of a (3, T, H, W) input, in elements (not bytes), plus the first kept column.
struct FrameLayout {
    int64_t channel, frame, row, col;
    int32_t crop_left;
};

// Output pixel (t, row, col) -> rgb[0..2]; col counts from the crop's left edge.
template <typename In>
HRT_HD void rgb8_pixel(const In* src, const FrameLayout& layout, int32_t t, int32_t row, int32_t col, uint8_t* rgb) {
    const In* p = src + t * layout.frame + row * layout.row + (col + layout.crop_left) * layout.col;
    rgb[0] = channel_to_u8(to_float(p[0]));
    rgb[1] = channel_to_u8(to_float(p[layout.channel]));
    rgb[2] = channel_to_u8(to_float(p[2 * layout.channel]));
}

// Y, U, V of one 2x2 block from its 4 RGB pixels (top-left, top-right, bottom-left, bottom-right).
// y_top and y_bottom point at the block's first luma sample in its two rows.
HRT_HD void i420_block(const uint8_t rgb[4][3], uint8_t* y_top, uint8_t* y_bottom, uint8_t* u, uint8_t* v) {
    y_top[0] = luma(rgb[0][0], rgb[0][1], rgb[0][2]);
    y_top[1] = luma(rgb[1][0], rgb[1][1], rgb[1][2]);
    y_bottom[0] = luma(rgb[2][0], rgb[2][1], rgb[2][2]);
    y_bottom[1] = luma(rgb[3][0], rgb[3][1], rgb[3][2]);
    const int32_t sum_r = rgb[0][0] + rgb[1][0] + rgb[2][0] + rgb[3][0];
    const int32_t sum_g = rgb[0][1] + rgb[1][1] + rgb[2][1] + rgb[3][1];
    const int32_t sum_b = rgb[0][2] + rgb[1][2] + rgb[2][2] + rgb[3][2];
    *u = chroma_cb(sum_r, sum_g, sum_b);
    *v = chroma_cr(sum_r, sum_g, sum_b);
}

// Where I420 output goes: plane pointers with a per-frame stride each (rows are out_width and out_width / 2 wide),
// so the same kernel fills separate planes or one packed (T, H * 3 / 2, W) buffer.
struct I420Layout {
    uint8_t* y;
    uint8_t* u;
    uint8_t* v;
    int64_t y_frame_stride, chroma_frame_stride;
    int32_t width;  // luma width (even)
};

// Block (t, block_row, block_col) of decoder frames -> I420, fused: the RGB bytes never leave registers.
template <typename In>
HRT_HD void frames_i420_block(const In* src, const FrameLayout& layout, const I420Layout& out, int32_t t,
                              int32_t block_row, int32_t block_col) {
    uint8_t rgb[4][3];
    const int32_t row = 2 * block_row, col = 2 * block_col;
    rgb8_pixel(src, layout, t, row, col, rgb[0]);
    rgb8_pixel(src, layout, t, row, col + 1, rgb[1]);
    rgb8_pixel(src, layout, t, row + 1, col, rgb[2]);
    rgb8_pixel(src, layout, t, row + 1, col + 1, rgb[3]);
    uint8_t* y_top = out.y + t * out.y_frame_stride + static_cast<int64_t>(row) * out.width + col;
    const int64_t chroma = t * out.chroma_frame_stride + static_cast<int64_t>(block_row) * (out.width / 2) + block_col;
    i420_block(rgb, y_top, y_top + out.width, out.u + chroma, out.v + chroma);
}

// Block (t, block_row, block_col) of contiguous uint8 RGB (T, H, W, 3) -> I420.
HRT_HD void rgb8_i420_block(const uint8_t* src, const I420Layout& out, int32_t height, int32_t t,
                            int32_t block_row, int32_t block_col) {
    uint8_t rgb[4][3];
    const int32_t row = 2 * block_row, col = 2 * block_col;
    const uint8_t* top = src + ((static_cast<int64_t>(t) * height + row) * out.width + col) * 3;
    const uint8_t* bottom = top + static_cast<int64_t>(out.width) * 3;
    for (int c = 0; c < 3; ++c) {
        rgb[0][c] = top[c];
        rgb[1][c] = top[3 + c];
        rgb[2][c] = bottom[c];
        rgb[3][c] = bottom[3 + c];
    }
    uint8_t* y_top = out.y + t * out.y_frame_stride + static_cast<int64_t>(row) * out.width + col;
    const int64_t chroma = t * out.chroma_frame_stride + static_cast<int64_t>(block_row) * (out.width / 2) + block_col;
    i420_block(rgb, y_top, y_top + out.width, out.u + chroma, out.v + chroma);
}

}  // namespace hrt
