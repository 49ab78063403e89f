// Host build of the kernels' arithmetic: runs frame_convert.cuh's per-pixel and per-block functions over every
// output position, in the same order of operations the CUDA kernels use, on raw files. tests/test_frame_convert.py
// compares its output byte for byte with runtime/frame_convert.py, which checks the CUDA arithmetic on a CPU.
//
// Usage:
//   frame_convert_host_test rgb8|i420 f32|bf16|f16 FRAMES HEIGHT WIDTH STRIDE_C STRIDE_T STRIDE_H STRIDE_W
//                           CROP_LEFT IN OUT
//       IN: raw (3, T, H, W) elements (float32, or bf16 / fp16 bit patterns, little endian) at the given element
//       strides; WIDTH is the output width. OUT: uint8 RGB (T, H, WIDTH, 3), or packed I420 (T, H * 3 / 2, WIDTH).
//   frame_convert_host_test rgb8_i420 FRAMES HEIGHT WIDTH IN OUT
//       IN: uint8 RGB (T, H, W, 3). OUT: packed I420 (T, H * 3 / 2, W).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "frame_convert.cuh"

namespace {

[[noreturn]] void fail(const std::string& message) {
    std::fprintf(stderr, "frame_convert_host_test: %s\n", message.c_str());
    std::exit(2);
}

std::vector<char> read_file(const char* path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(std::string("cannot open ") + path);
    return std::vector<char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_file(const char* path, const std::vector<uint8_t>& data) {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
    if (!out) fail(std::string("cannot write ") + path);
}

int64_t parse_int(const char* text) {
    char* end = nullptr;
    const long long value = std::strtoll(text, &end, 10);
    if (end == text || *end != '\0') fail(std::string("not an integer: ") + text);
    return value;
}

// Packed I420 planes of a (T, H, W) frame set: one buffer, each frame's Y, U, V back to back.
hrt::I420Layout packed_layout(std::vector<uint8_t>& buffer, int32_t height, int32_t width) {
    const int64_t frame_bytes = static_cast<int64_t>(height) * width * 3 / 2;
    const int64_t luma_bytes = static_cast<int64_t>(height) * width;
    uint8_t* base = buffer.data();
    return hrt::I420Layout{base, base + luma_bytes, base + luma_bytes + luma_bytes / 4, frame_bytes, frame_bytes,
                           width};
}

template <typename In>
std::vector<uint8_t> convert_frames(const std::string& mode, const std::vector<char>& raw, int32_t frames,
                                    int32_t height, int32_t width, const hrt::FrameLayout& layout) {
    // The last element any pixel reads must lie inside the file.
    const int64_t last = 2 * layout.channel + (frames - 1) * layout.frame + (height - 1) * layout.row +
                         (layout.crop_left + width - 1) * layout.col;
    if (static_cast<int64_t>(raw.size() / sizeof(In)) <= last) fail("input file too small for the given strides");
    std::vector<In> src(raw.size() / sizeof(In));
    std::memcpy(src.data(), raw.data(), src.size() * sizeof(In));
    if (mode == "rgb8") {
        std::vector<uint8_t> out(static_cast<size_t>(frames) * height * width * 3);
        for (int32_t t = 0; t < frames; ++t)
            for (int32_t row = 0; row < height; ++row)
                for (int32_t col = 0; col < width; ++col)
                    hrt::rgb8_pixel(src.data(), layout, t, row, col,
                                    &out[((static_cast<size_t>(t) * height + row) * width + col) * 3]);
        return out;
    }
    if (height % 2 || width % 2) fail("i420 needs an even height and width");
    std::vector<uint8_t> out(static_cast<size_t>(frames) * height * width * 3 / 2);
    const hrt::I420Layout planes = packed_layout(out, height, width);
    for (int32_t t = 0; t < frames; ++t)
        for (int32_t block_row = 0; block_row < height / 2; ++block_row)
            for (int32_t block_col = 0; block_col < width / 2; ++block_col)
                hrt::frames_i420_block(src.data(), layout, planes, t, block_row, block_col);
    return out;
}

int run_rgb8_i420(char** argv) {
    const int32_t frames = static_cast<int32_t>(parse_int(argv[2]));
    const int32_t height = static_cast<int32_t>(parse_int(argv[3]));
    const int32_t width = static_cast<int32_t>(parse_int(argv[4]));
    if (height % 2 || width % 2) fail("i420 needs an even height and width");
    const std::vector<char> raw = read_file(argv[5]);
    if (raw.size() != static_cast<size_t>(frames) * height * width * 3) fail("input size is not T * H * W * 3");
    std::vector<uint8_t> out(static_cast<size_t>(frames) * height * width * 3 / 2);
    const hrt::I420Layout planes = packed_layout(out, height, width);
    const uint8_t* src = reinterpret_cast<const uint8_t*>(raw.data());
    for (int32_t t = 0; t < frames; ++t)
        for (int32_t block_row = 0; block_row < height / 2; ++block_row)
            for (int32_t block_col = 0; block_col < width / 2; ++block_col)
                hrt::rgb8_i420_block(src, planes, height, t, block_row, block_col);
    write_file(argv[6], out);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "rgb8_i420" && argc == 7) return run_rgb8_i420(argv);
    if ((mode != "rgb8" && mode != "i420") || argc != 13) {
        fail("usage: rgb8|i420 f32|bf16|f16 FRAMES HEIGHT WIDTH STRIDE_C STRIDE_T STRIDE_H STRIDE_W CROP_LEFT IN OUT"
             "\n   or: rgb8_i420 FRAMES HEIGHT WIDTH IN OUT");
    }
    const std::string dtype = argv[2];
    const int32_t frames = static_cast<int32_t>(parse_int(argv[3]));
    const int32_t height = static_cast<int32_t>(parse_int(argv[4]));
    const int32_t width = static_cast<int32_t>(parse_int(argv[5]));
    const hrt::FrameLayout layout{parse_int(argv[6]), parse_int(argv[7]), parse_int(argv[8]), parse_int(argv[9]),
                                  static_cast<int32_t>(parse_int(argv[10]))};
    const std::vector<char> raw = read_file(argv[11]);
    std::vector<uint8_t> out;
    if (dtype == "f32") {
        out = convert_frames<float>(mode, raw, frames, height, width, layout);
    } else if (dtype == "bf16") {
        out = convert_frames<hrt::Bf16Bits>(mode, raw, frames, height, width, layout);
    } else if (dtype == "f16") {
        out = convert_frames<hrt::F16Bits>(mode, raw, frames, height, width, layout);
    } else {
        fail("dtype must be f32, bf16 or f16, got " + dtype);
    }
    write_file(argv[12], out);
    return 0;
}
