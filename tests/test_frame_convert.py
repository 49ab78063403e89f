"""Frame conversion: the CPU path against the offline pipeline and BT.709, the CUDA arithmetic (host build of
native/frame_convert.cuh) against the CPU path bit for bit, the fatbin's architectures, and the loader's errors."""

from __future__ import annotations

import ctypes
import math
import re
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from av.video.reformatter import ColorRange, Colorspace, Interpolation

from hallo_rt.engine.pipeline import to_uint8
from hallo_rt.runtime import frame_convert, native_frames
from hallo_rt.runtime.frame_convert import I420, rgb8_to_i420, to_i420, to_rgb8
from hallo_rt.runtime.native_frames import NativeFrameConverter, NativeUnavailable

REPO = Path(__file__).resolve().parent.parent
KR, KB = 0.2126, 0.0722  # BT.709
KERNELS = ["hrt_frames_f32_to_rgb8", "hrt_frames_f32_to_i420", "hrt_frames_bf16_to_rgb8", "hrt_frames_bf16_to_i420",
           "hrt_frames_f16_to_rgb8", "hrt_frames_f16_to_i420", "hrt_rgb8_to_i420"]


def pipeline_rgb8(frames: torch.Tensor, crop=None) -> torch.Tensor:
    """What the offline pipeline (`hallo-rt generate`) does to decoded frames."""
    return to_uint8(frames, crop)


def edge_values() -> torch.Tensor:
    """float32 values on and next to every rounding edge: x with (x + 1) / 2 * 255 = k, the ends, and specials."""
    k = torch.arange(256, dtype=torch.float64)
    on_edge = (2.0 * k / 255.0 - 1.0).float()
    up, down = torch.nextafter(on_edge, torch.tensor(2.0)), torch.nextafter(on_edge, torch.tensor(-2.0))
    specials = torch.tensor([-1.0, 1.0, 0.0, -0.0, 1e-30, -1e-30, 1e38, -1e38, math.inf, -math.inf, math.nan,
                             -1.0000001, 1.0000001, 0.99999994, -0.99999994])
    return torch.cat([on_edge, up, down, specials])


def random_frames(frames: int, height: int, width: int, seed: int) -> torch.Tensor:
    """(3, T, H, W) float32, mostly in [-1, 1] but with tails outside and edge values mixed in."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, frames, height, width, generator=g) * 0.7
    edges = edge_values()
    flat = x.view(-1)
    where = torch.randperm(flat.numel(), generator=g)[:edges.numel()]
    flat[where] = edges[:where.numel()]
    return x


# ---- CPU path: RGB ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("crop", [None, (3, 10)])
def test_to_rgb8_is_the_pipeline_bit_for_bit(crop):
    frames = random_frames(3, 8, 16, seed=0)
    assert torch.equal(to_rgb8(frames, crop), pipeline_rgb8(frames, crop))
    dense = torch.linspace(-1.02, 1.02, 2_000_001)[None, None, None].expand(3, 1, 1, -1)  # every edge many times
    assert torch.equal(to_rgb8(dense), pipeline_rgb8(dense))


def test_to_rgb8_edges_and_specials():
    edges = edge_values()
    rgb = to_rgb8(edges[None, None, None].expand(3, 1, 1, -1))[0, 0, :, 0]
    assert torch.equal(rgb, pipeline_rgb8(edges[None, None, None].expand(3, 1, 1, -1))[0, 0, :, 0])
    # x = 2k/255 - 1 in fp32 lands on k or just below it (then truncates to k - 1); never anywhere else
    assert ((torch.arange(256) - rgb[:256].long()).abs() <= 1).all() and rgb[255] == 255 and rgb[0] == 0
    assert rgb[-15:].tolist() == [0, 255, 127, 127, 127, 127, 255, 0, 255, 0, 0, 0, 255, 255, 0]  # NaN -> 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_to_rgb8_half_precision_every_bit_pattern(dtype):
    every = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)  # all 65536 values
    frames = every.reshape(1, 1, 256, 256).expand(3, 2, -1, -1)
    assert torch.equal(to_rgb8(frames), pipeline_rgb8(frames))
    assert torch.equal(to_rgb8(frames), to_rgb8(frames.float()))  # widening first is exact


def test_to_rgb8_strided_input_and_layout():
    base = random_frames(4, 6, 20, seed=1)  # (3, T, H, W)
    frames = base.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)[..., 2:18]  # non-contiguous view
    out = to_rgb8(frames)
    assert out.shape == (4, 6, 16, 3) and out.dtype == torch.uint8 and out.is_contiguous()
    assert torch.equal(out, pipeline_rgb8(frames.contiguous()))
    assert torch.equal(frames.view(torch.int32), base[..., 2:18].view(torch.int32))  # input untouched (NaN too)


def test_to_rgb8_errors():
    with pytest.raises(ValueError, match=r"\(3, T, H, W\) with 3 channels first, got shape \(2, 3, 4, 4\)"):
        to_rgb8(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="float32, bfloat16 or float16, got torch.uint8"):
        to_rgb8(torch.zeros(3, 1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"crop \(left=2, width=4\) must lie inside the frame width 5"):
        to_rgb8(torch.zeros(3, 1, 4, 5), crop=(2, 4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        to_rgb8(np.zeros((3, 1, 4, 4), np.float32))


# ---- CPU path: I420 --------------------------------------------------------------------------------------------

def float_bt709(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Independent float formulas (BT.709, limited range): Y per pixel, Cb/Cr of each 2x2 block's mean RGB."""
    r, g, b = (rgb[..., c].astype(np.float64) for c in range(3))
    y = 16.0 + 219.0 / 255.0 * (KR * r + (1 - KR - KB) * g + KB * b)
    t, h, w = r.shape
    mean = [c.reshape(t, h // 2, 2, w // 2, 2).mean(axis=(2, 4)) for c in (r, g, b)]
    luma = KR * mean[0] + (1 - KR - KB) * mean[1] + KB * mean[2]
    cb = 128.0 + 224.0 / 255.0 * (mean[2] - luma) / (2 * (1 - KB))
    cr = 128.0 + 224.0 / 255.0 * (mean[0] - luma) / (2 * (1 - KR))
    return y, cb, cr


def test_i420_against_float_bt709():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (4, 32, 48, 3), dtype=np.uint8)
    rgb[0, :2, :2] = 255  # saturated blocks reach the chroma extremes
    rgb[1, :2, :2] = [0, 0, 255]
    planes = rgb8_to_i420(rgb)
    for fixed, exact in zip(planes, float_bt709(rgb)):
        # one rounding of the exact value (0.5) plus the 16-bit coefficients' error (< 0.007): never off by one
        assert np.abs(fixed.astype(np.float64) - exact).max() <= 0.507
    # luma over every RGB triple
    every = np.arange(1 << 24, dtype=np.uint32)
    cube = np.stack([(every >> 16) & 255, (every >> 8) & 255, every & 255], -1).astype(np.uint8).reshape(1, 4096,
                                                                                                         4096, 3)
    y, _, _ = float_bt709(cube[:, :2])  # (float formula on a slice: the full cube in float64 is 400 MB)
    luma = rgb8_to_i420(cube).y.astype(np.float64)
    assert np.abs(luma[:, :2] - y).max() <= 0.502
    assert luma.min() == 16 and luma.max() == 235


def test_i420_reference_colours():
    # BT.709 limited range: black, white, gray, and the primaries' well-known codes (Y, Cb, Cr)
    colours = {(0, 0, 0): (16, 128, 128), (255, 255, 255): (235, 128, 128), (128, 128, 128): (126, 128, 128),
               (255, 0, 0): (63, 102, 240), (0, 255, 0): (173, 42, 26), (0, 0, 255): (32, 240, 118)}
    for rgb, yuv in colours.items():
        planes = rgb8_to_i420(np.full((2, 2, 3), rgb, np.uint8))
        assert (planes.y[0, 0, 0], planes.u[0, 0, 0], planes.v[0, 0, 0]) == yuv, rgb
    grays = np.repeat(np.arange(256, dtype=np.uint8), 4).reshape(1, 32, 32, 1).repeat(3, -1)
    planes = rgb8_to_i420(grays)
    assert (planes.u == 128).all() and (planes.v == 128).all()  # chroma rows sum to exactly zero


def test_i420_against_swscale():
    """PyAV/swscale rgb24 -> yuv420p (BT.709, MPEG range) with AREA (box) chroma and accurate rounding agrees within
    one code everywhere; measured on 20 random 128x160 frames: Y 99.2 %, U 99.6 %, V 99.8 % identical."""
    rng = np.random.default_rng(1)
    height, width = 128, 160
    same, total = np.zeros(3), 0
    for _ in range(4):
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
            format="yuv420p", dst_colorspace=Colorspace.ITU709, dst_color_range=ColorRange.MPEG,
            interpolation=Interpolation.AREA | Interpolation.ACCURATE_RND)
        theirs = frame.to_ndarray()  # (H * 3 / 2, W)
        ours = rgb8_to_i420(rgb).packed()[0]
        diff = np.abs(theirs.astype(np.int16) - ours)
        assert diff.max() <= 1
        bounds = [0, height * width, height * width * 5 // 4, height * width * 3 // 2]
        flat = diff.reshape(-1)
        same += [(flat[a:b] == 0).sum() / (b - a) for a, b in zip(bounds, bounds[1:])]
        total += 1
    assert (same / total >= 0.98).all(), same / total


def test_i420_shapes_kinds_and_packing():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (3, 6, 8, 3), dtype=np.uint8)
    planes = rgb8_to_i420(rgb)
    assert isinstance(planes, I420) and isinstance(planes.y, np.ndarray)
    assert planes.y.shape == (3, 6, 8) and planes.u.shape == planes.v.shape == (3, 3, 4)
    as_torch = rgb8_to_i420(torch.from_numpy(rgb))
    assert all(isinstance(p, torch.Tensor) and np.array_equal(p.numpy(), q) for p, q in zip(as_torch, planes))
    single = rgb8_to_i420(rgb[1])
    assert all(np.array_equal(s[0], p[1]) for s, p in zip(single, planes))
    packed = planes.packed()
    assert packed.shape == (3, 9, 8)
    assert np.array_equal(packed[:, :6], planes.y)
    assert np.array_equal(packed[:, 6:].reshape(3, -1), np.concatenate([planes.u.reshape(3, -1),
                                                                         planes.v.reshape(3, -1)], 1))
    assert torch.equal(as_torch.packed(), torch.from_numpy(packed))
    with pytest.raises(ValueError, match="even height and width, got 6x7"):
        rgb8_to_i420(rgb[:, :, :7])
    with pytest.raises(ValueError, match="must be uint8"):
        rgb8_to_i420(rgb.astype(np.int32))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\) or \(H, W, 3\)"):
        rgb8_to_i420(rgb[..., :2])


def test_to_i420_is_rgb8_then_i420():
    frames = random_frames(2, 8, 14, seed=3).to(torch.bfloat16)
    fused = to_i420(frames, crop=(2, 10))
    two_step = rgb8_to_i420(to_rgb8(frames, crop=(2, 10)))
    assert all(torch.equal(a, b) for a, b in zip(fused, two_step))


# ---- the CUDA arithmetic, compiled for the host --------------------------------------------------------------

def find_cuobjdump() -> str | None:
    """cuobjdump on PATH, beside nvcc, or the copy Triton ships."""
    nvcc = shutil.which("nvcc")
    candidates = [shutil.which("cuobjdump"), nvcc and str(Path(nvcc).resolve().parent / "cuobjdump")]
    try:
        import triton
        candidates.append(str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in candidates if c and Path(c).is_file()), None)


@pytest.fixture(scope="module")
def native_build(tmp_path_factory) -> Path:
    """`cmake -S . -B <tmp> && cmake --build <tmp>`: the host test always, the fatbin where nvcc exists."""
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        pytest.skip("cmake and a C++ compiler are needed to build native/frame_convert_host_test")
    build = tmp_path_factory.mktemp("native")
    for command in (["cmake", "-S", str(REPO), "-B", str(build)], ["cmake", "--build", str(build), "-j", "2"]):
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    return build


def run_host(build: Path, tmp_path: Path, mode: str, frames: torch.Tensor, base: torch.Tensor, width: int,
             left: int) -> np.ndarray:
    """Convert `frames` (a strided view of `base`'s storage) with the host executable; raw output bytes."""
    dtype = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}[frames.dtype]
    assert frames.untyped_storage().data_ptr() == base.untyped_storage().data_ptr() and base.is_contiguous()
    raw = base.view(torch.int16) if base.dtype != torch.float32 else base
    raw.numpy().tofile(tmp_path / "in.raw")
    _, count, height, _ = frames.shape
    assert frames.storage_offset() == 0
    args = [mode, dtype, count, height, width, *frames.stride(), left]
    result = subprocess.run([str(build / "frame_convert_host_test"), *map(str, args), str(tmp_path / "in.raw"),
                             str(tmp_path / "out.raw")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return np.fromfile(tmp_path / "out.raw", dtype=np.uint8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_host_build_equals_cpu_path(native_build, tmp_path, dtype):
    # (T, 3, H, W + 4) storage seen as (3, T, H, W): every stride differs from the contiguous layout
    base = random_frames(3, 10, 22, seed=4).permute(1, 0, 2, 3).contiguous().to(dtype)
    frames = base.permute(1, 0, 2, 3)
    left, width = 3, 16
    expected_rgb = to_rgb8(frames, crop=(left, width))
    rgb = run_host(native_build, tmp_path, "rgb8", frames, base, width, left)
    assert np.array_equal(rgb.reshape(expected_rgb.shape), expected_rgb.numpy())
    expected_i420 = to_i420(frames, crop=(left, width)).packed()
    i420 = run_host(native_build, tmp_path, "i420", frames, base, width, left)
    assert np.array_equal(i420.reshape(expected_i420.shape), expected_i420.numpy())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_host_build_every_half_bit_pattern(native_build, tmp_path, dtype):
    every = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    base = every.reshape(1, 1, 256, 256).repeat(3, 1, 1, 1)  # subnormals, infinities and NaN payloads included
    rgb = run_host(native_build, tmp_path, "rgb8", base, base, 256, 0)
    assert np.array_equal(rgb.reshape(1, 256, 256, 3), to_rgb8(base).numpy())


def test_host_build_rgb8_to_i420(native_build, tmp_path):
    # 2 x 256 x 320 frames: 40,960 chroma blocks, enough that a coefficient off by one changes some rounding
    rgb = np.random.default_rng(5).integers(0, 256, (2, 256, 320, 3), dtype=np.uint8)
    rgb.tofile(tmp_path / "in.rgb")
    result = subprocess.run([str(native_build / "frame_convert_host_test"), "rgb8_i420", "2", "256", "320",
                             str(tmp_path / "in.rgb"), str(tmp_path / "out.yuv")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.fromfile(tmp_path / "out.yuv", np.uint8).reshape(2, 384, 320),
                          rgb8_to_i420(rgb).packed())


def test_host_build_rejects_bad_input(native_build, tmp_path):
    (tmp_path / "small.raw").write_bytes(b"\0" * 16)
    result = subprocess.run([str(native_build / "frame_convert_host_test"), "rgb8", "f32", "1", "2", "2", "4", "4",
                             "2", "1", "0", str(tmp_path / "small.raw"), str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "input file too small" in result.stderr


# ---- the fatbin ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fatbin(native_build) -> Path:
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not found: the CUDA part of CMakeLists.txt is skipped (host test only)")
    path = native_build / native_frames.FATBIN_NAME
    assert path.is_file(), "nvcc exists but cmake built no fatbin"
    return path


@pytest.fixture(scope="module")
def cuobjdump() -> str:
    tool = find_cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (CUDA toolkit or Triton's copy) to inspect the fatbin")
    return tool


def test_fatbin_holds_sm80_sm90_and_ptx(fatbin, cuobjdump):
    elves = subprocess.run([cuobjdump, "--list-elf", str(fatbin)], capture_output=True, text=True, check=True).stdout
    assert re.findall(r"\.(sm_\d+)\.cubin", elves) == ["sm_80", "sm_90"]
    ptx = subprocess.run([cuobjdump, "--list-ptx", str(fatbin)], capture_output=True, text=True, check=True).stdout
    assert re.findall(r"\.(sm_\d+)\.ptx", ptx) == ["sm_90"]
    sass = subprocess.run([cuobjdump, "-sass", str(fatbin)], capture_output=True, text=True, check=True).stdout
    assert sorted(re.findall(r"Function : (\w+)", sass)) == sorted(KERNELS * 2)
    # no fused multiply-add anywhere: the float steps round exactly as on the host
    assert "FFMA" not in sass and "F2I.U32.TRUNC" in sass


def ptx_params(fatbin: Path, cuobjdump: str) -> dict[str, list[int]]:
    """Kernel name -> byte size of each parameter, read from the fatbin's PTX."""
    ptx = subprocess.run([cuobjdump, "-ptx", str(fatbin)], capture_output=True, text=True, check=True).stdout
    params = {}
    for name, body in re.findall(r"\.entry (\w+)\(([^)]*)\)", ptx):
        params[name] = [int(bits) // 8 for bits in re.findall(r"\.param \.[usb](\d+)", body)]
    return params


class FakeDriver:
    """Stands in for cuda.bindings.driver: decodes each launch's kernelParams with the PTX parameter sizes, exactly
    as the GPU driver would copy them."""

    class CUresult:
        CUDA_SUCCESS = 0

    CUstream = int

    def __init__(self, params: dict[str, list[int]]) -> None:
        self.params, self.launches = params, []

    def cuCtxPushCurrent(self, context):
        return (0,)

    def cuCtxPopCurrent(self):
        return (0, None)

    def cuModuleGetFunction(self, module, name: bytes):
        return (0, name.decode())

    def cuLaunchKernel(self, function, gx, gy, gz, bx, by, bz, shared, stream, kernel_params, extra):
        sizes = self.params[function]
        addresses = (ctypes.c_uint64 * len(sizes)).from_address(kernel_params)
        kinds = {4: ctypes.c_int32, 8: ctypes.c_int64}
        values = [kinds[size].from_address(address).value for size, address in zip(sizes, addresses)]
        self.launches.append((function, (gx, gy, gz), (bx, by, bz), values))
        return (0,)


def test_launch_arguments_match_the_kernel_signatures(fatbin, cuobjdump, monkeypatch):
    params = ptx_params(fatbin, cuobjdump)
    assert sorted(params) == sorted(KERNELS)
    packed_sizes = []
    real_params = native_frames._kernel_params

    def spy(args):
        packed_sizes.append([np.dtype(dtype).itemsize for dtype, _ in args])
        return real_params(args)

    monkeypatch.setattr(native_frames, "_kernel_params", spy)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: type("S", (), {"cuda_stream": 7})())
    driver = FakeDriver(params)
    # a CPU "device" lets the argument checks pass; nothing is launched for real
    converter = NativeFrameConverter(driver, torch.device("cpu"), 0, None, object(), fatbin)
    frames = torch.zeros(5, 3, 10, 40, dtype=torch.bfloat16).permute(1, 0, 2, 3)  # (3, T, H, W), strided
    rgb = converter.to_rgb8(frames, crop=(4, 34))
    contiguous = frames.float().contiguous()
    planes = converter.to_i420(contiguous, crop=(4, 34))
    from_rgb = converter.rgb8_to_i420(rgb)
    strides = [10 * 40, 3 * 10 * 40, 40, 1]
    frame_bytes = 10 * 34 * 3 // 2
    assert driver.launches == [
        ("hrt_frames_bf16_to_rgb8", (2, 2, 5), (32, 8, 1),
         [frames.data_ptr(), rgb.data_ptr(), 5, 10, 34, *strides, 4]),
        ("hrt_frames_f32_to_i420", (1, 1, 5), (32, 8, 1),
         [contiguous.data_ptr(), *(p.data_ptr() for p in planes), 5, 10, 34, *contiguous.stride(), 4, frame_bytes,
          frame_bytes]),
        ("hrt_rgb8_to_i420", (1, 1, 5), (32, 8, 1),
         [rgb.data_ptr(), *(p.data_ptr() for p in from_rgb), 5, 10, 34, frame_bytes, frame_bytes]),
    ]
    assert packed_sizes == [params[name] for name, *_ in driver.launches]  # count and width of every argument
    y, u, v = (p.data_ptr() for p in planes)
    assert u - y == 10 * 34 and v - u == 10 * 34 // 4  # planes of one packed buffer


# ---- the loader ------------------------------------------------------------------------------------------------

def test_load_without_cuda_says_what_is_missing(tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setenv(native_frames.NATIVE_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(native_frames, "_REPO_BUILD_DIR", tmp_path / "no_build")  # a local build must not count
    with pytest.raises(NativeUnavailable) as error:
        NativeFrameConverter.load()
    message = str(error.value)
    assert "no CUDA device is visible to torch" in message
    assert str(tmp_path / native_frames.FATBIN_NAME) in message and "cmake -S . -B build/native" in message
    assert "hallo_rt.runtime.frame_convert.to_rgb8" in message
    assert isinstance(error.value, RuntimeError)
    # with the fatbin present, only the device (and cuda-python, where absent) are reported missing
    (tmp_path / native_frames.FATBIN_NAME).write_bytes(b"x")
    with pytest.raises(NativeUnavailable) as error:
        NativeFrameConverter.load()
    assert "no CUDA device" in str(error.value) and "not found" not in str(error.value)


def test_find_fatbin(tmp_path, monkeypatch):
    (tmp_path / native_frames.FATBIN_NAME).write_bytes(b"x")
    monkeypatch.setenv(native_frames.NATIVE_DIR_ENV, str(tmp_path))
    assert native_frames.find_fatbin() == tmp_path / native_frames.FATBIN_NAME
    assert native_frames.find_fatbin(tmp_path) == tmp_path / native_frames.FATBIN_NAME
    with pytest.raises(NativeUnavailable, match="looked in: .*nowhere.fatbin"):
        native_frames.find_fatbin(tmp_path / "nowhere.fatbin")


def test_cpu_module_constants_are_the_header_literals():
    header = (REPO / "native" / "frame_convert.cuh").read_text()
    literals = {name: int(value) for name, value in re.findall(r"k(\w+) = (-?\d+)", header)}
    assert (literals["LumaR"], literals["LumaG"], literals["LumaB"]) == frame_convert.LUMA_COEFFS
    assert (literals["CbR"], literals["CbG"], literals["CbB"]) == frame_convert.CB_COEFFS
    assert (literals["CrR"], literals["CrG"], literals["CrB"]) == frame_convert.CR_COEFFS


@pytest.mark.gpu
def test_native_kernels_equal_the_cpu_path_on_gpu():
    """On a CUDA machine with cuda-python and a built fatbin: the kernels' bytes are the CPU path's."""
    try:
        converter = NativeFrameConverter.load()
    except NativeUnavailable as error:
        pytest.skip(str(error))
    try:
        base = random_frames(5, 34, 70, seed=6).permute(1, 0, 2, 3).contiguous()  # (T, 3, H, W) storage
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            frames = base.to(dtype).permute(1, 0, 2, 3)  # (3, T, H, W), strided
            gpu = frames.cuda()
            assert torch.equal(converter.to_rgb8(gpu, crop=(3, 64)).cpu(), to_rgb8(frames, crop=(3, 64)))
            planes = converter.to_i420(gpu, crop=(3, 64))
            assert all(torch.equal(a.cpu(), b) for a, b in zip(planes, to_i420(frames, crop=(3, 64))))
        rgb = torch.randint(0, 256, (3, 64, 96, 3), dtype=torch.uint8)
        assert all(torch.equal(a.cpu(), b) for a, b in zip(converter.rgb8_to_i420(rgb.cuda()), rgb8_to_i420(rgb)))
    finally:
        converter.close()
