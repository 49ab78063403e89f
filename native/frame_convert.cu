// Frame-path kernels: VAE decoder frames (3, T, H, W) in [-1, 1] -> uint8 RGB (T, H, W', 3) or I420, and
// uint8 RGB -> I420. The arithmetic lives in frame_convert.cuh (shared with the host test); these kernels only map
// threads to pixels. Launched by runtime/native_frames.py through the driver API, so every entry point is
// extern "C" (unmangled names) and takes plain scalars (no structs whose layout Python would have to mirror).
//
// Grid: x over output columns (or 2x2 block columns), y over rows (or block rows), z over frames (T <= 65535).
// Strides are in elements of the input type; crop_left is the first input column kept; width is the output width.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "frame_convert.cuh"

namespace {

template <typename In>
__device__ __forceinline__ void to_rgb8(const In* src, uint8_t* dst, int32_t frames, int32_t height, int32_t width,
                                        const hrt::FrameLayout& layout) {
    const int32_t col = blockIdx.x * blockDim.x + threadIdx.x;
    const int32_t row = blockIdx.y * blockDim.y + threadIdx.y;
    const int32_t t = blockIdx.z;
    if (col >= width || row >= height || t >= frames) return;
    uint8_t rgb[3];
    hrt::rgb8_pixel(src, layout, t, row, col, rgb);
    uint8_t* out = dst + ((static_cast<int64_t>(t) * height + row) * width + col) * 3;
    out[0] = rgb[0];
    out[1] = rgb[1];
    out[2] = rgb[2];
}

template <typename In>
__device__ __forceinline__ void to_i420(const In* src, const hrt::I420Layout& out, int32_t frames, int32_t height,
                                        const hrt::FrameLayout& layout) {
    const int32_t block_col = blockIdx.x * blockDim.x + threadIdx.x;
    const int32_t block_row = blockIdx.y * blockDim.y + threadIdx.y;
    const int32_t t = blockIdx.z;
    if (block_col >= out.width / 2 || block_row >= height / 2 || t >= frames) return;
    hrt::frames_i420_block(src, layout, out, t, block_row, block_col);
}

}  // namespace

#define HRT_FRAME_KERNELS(SUFFIX, IN_TYPE)                                                                        \
    extern "C" __global__ void hrt_frames_##SUFFIX##_to_rgb8(                                                     \
        const IN_TYPE* src, uint8_t* dst, int32_t frames, int32_t height, int32_t width, int64_t stride_c,        \
        int64_t stride_t, int64_t stride_h, int64_t stride_w, int32_t crop_left) {                               \
        const hrt::FrameLayout layout{stride_c, stride_t, stride_h, stride_w, crop_left};                        \
        to_rgb8(src, dst, frames, height, width, layout);                                                         \
    }                                                                                                             \
    extern "C" __global__ void hrt_frames_##SUFFIX##_to_i420(                                                     \
        const IN_TYPE* src, uint8_t* y, uint8_t* u, uint8_t* v, int32_t frames, int32_t height, int32_t width,   \
        int64_t stride_c, int64_t stride_t, int64_t stride_h, int64_t stride_w, int32_t crop_left,               \
        int64_t y_frame_stride, int64_t chroma_frame_stride) {                                                    \
        const hrt::FrameLayout layout{stride_c, stride_t, stride_h, stride_w, crop_left};                        \
        const hrt::I420Layout out{y, u, v, y_frame_stride, chroma_frame_stride, width};                          \
        to_i420(src, out, frames, height, layout);                                                                \
    }

// bf16 and fp16 arrive as their bit patterns (hrt::Bf16Bits / hrt::F16Bits, 2 bytes each, same layout as
// __nv_bfloat16 / __half) so host and device widen them with the same integer code.
HRT_FRAME_KERNELS(f32, float)
HRT_FRAME_KERNELS(bf16, hrt::Bf16Bits)
HRT_FRAME_KERNELS(f16, hrt::F16Bits)

static_assert(sizeof(hrt::Bf16Bits) == sizeof(__nv_bfloat16), "bf16 bit carrier must be 2 bytes");
static_assert(sizeof(hrt::F16Bits) == sizeof(__half), "fp16 bit carrier must be 2 bytes");

extern "C" __global__ void hrt_rgb8_to_i420(const uint8_t* src, uint8_t* y, uint8_t* u, uint8_t* v, int32_t frames,
                                            int32_t height, int32_t width, int64_t y_frame_stride,
                                            int64_t chroma_frame_stride) {
    const int32_t block_col = blockIdx.x * blockDim.x + threadIdx.x;
    const int32_t block_row = blockIdx.y * blockDim.y + threadIdx.y;
    const int32_t t = blockIdx.z;
    if (block_col >= width / 2 || block_row >= height / 2 || t >= frames) return;
    const hrt::I420Layout out{y, u, v, y_frame_stride, chroma_frame_stride, width};
    hrt::rgb8_i420_block(src, out, height, t, block_row, block_col);
}
