"""A synthetic but natural-looking video clip for the scripted SVGA guest (generated here, never downloaded).

A photo-like landscape (smooth colour fields at several scales, soft edges, fine texture) pans slowly; a few
shaded balls move across it; every frame gets fresh film grain. Frames are 32 bpp BGRX rows, made with numpy
from precomputed layers so that making one costs a few milliseconds (a copy, the sprites, one add of grain),
not the pipeline's time. `frame(i)` is deterministic: the benchmark compares what the service shows with it.
"""

from __future__ import annotations

import numpy as np

_PAN = 192  # pixels the view can travel each way
_GRAIN_FRAMES = 8
_GRAIN = 4  # +- grain amplitude


def _smooth(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Value noise: random values on a `cell`-spaced grid, bilinearly interpolated to h x w (float 0..1)."""
    gh, gw = h // cell + 2, w // cell + 2
    grid = rng.random((gh, gw), dtype=np.float32)
    ys = np.arange(h, dtype=np.float32) / cell
    xs = np.arange(w, dtype=np.float32) / cell
    y0, x0 = ys.astype(np.int32), xs.astype(np.int32)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)  # smoothstep: no grid lines
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


class Clip:
    def __init__(self, width: int, height: int, seed: int = 17) -> None:
        self.width, self.height = width, height
        rng = np.random.default_rng(seed)
        th, tw = height + 2 * _PAN, width + 2 * _PAN
        octaves = [(max(8, min(th, tw) // d), 1 / i) for i, d in ((1, 3), (2, 9), (3, 27), (4, 90))]
        layers = []
        for _ in range(3):  # three colour fields, mixed into B, G, R
            acc = np.zeros((th, tw), dtype=np.float32)
            for cell, weight in octaves:
                acc += weight * _smooth(rng, th, tw, cell)
            layers.append(acc / sum(w for _, w in octaves))
        sky = np.linspace(1.0, 0.0, th, dtype=np.float32)[:, None]  # lighter at the top, like a landscape
        tex = np.empty((th, tw, 4), dtype=np.uint8)
        for ch, (mix, tint) in enumerate(((0.55, 0.35), (0.6, 0.3), (0.7, 0.25))):
            v = mix * layers[ch] + (1 - mix) * layers[(ch + 1) % 3] + tint * sky
            tex[..., ch] = np.clip(v * 200 + 20, _GRAIN + 2, 255 - _GRAIN - 2)
        tex[..., 3] = 0
        self.texture = tex
        luma = rng.integers(-_GRAIN, _GRAIN + 1, size=(_GRAIN_FRAMES, height, width, 1), dtype=np.int16)
        grain = np.repeat(luma, 4, axis=3)  # film grain is in the brightness, the same in B, G and R
        grain[..., 3] = 0
        self.grain = grain.astype(np.uint8)  # modular: base + grain never wraps (base kept inside the margin)
        side = min(width, height)
        balls = ((0.045, (40, 80, 220)), (0.067, (200, 160, 40)), (0.033, (60, 200, 90)))
        self.sprites = [self._ball(max(3, int(side * f)), color) for f, color in balls]
        self._out = np.empty((height, width, 4), dtype=np.uint8)

    @staticmethod
    def _ball(radius: int, bgr: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        d = 2 * radius
        yy, xx = np.mgrid[0:d, 0:d].astype(np.float32) - radius + 0.5
        r2 = (xx * xx + yy * yy) / (radius * radius)
        mask = r2 <= 1.0
        light = np.clip(
            1.1 - 0.6 * np.sqrt(np.clip((xx + radius / 3) ** 2 + (yy + radius / 3) ** 2, 0, None)) / radius, 0.2, 1.0
        )
        img = np.zeros((d, d, 4), dtype=np.uint8)
        for ch in range(3):
            img[..., ch] = np.clip(bgr[ch] * light + 20, _GRAIN + 2, 255 - _GRAIN - 2)
        return img, mask

    def frame(self, i: int, grain: bool = True) -> bytes:
        """Frame `i` (packed BGRX rows, width * height * 4 bytes); without its film grain when `grain` is False
        (what a codec that dropped only the grain would show: the reference the quality figures sit beside)."""
        h, w = self.height, self.width
        span = 4 * _PAN
        px = i * 3 % span
        py = i % span
        x0 = px if px <= 2 * _PAN else span - px  # back and forth
        y0 = py // 2 if py <= 2 * _PAN else (span - py) // 2
        out = self._out
        out[:] = self.texture[y0 : y0 + h, x0 : x0 + w]
        for k, (img, mask) in enumerate(self.sprites):
            d = img.shape[0]
            t = i / 30 + k * 2.1
            cx = int((w - d) * (0.5 + 0.45 * np.sin(t * (0.7 + 0.2 * k))))
            cy = int((h - d) * (0.5 + 0.45 * np.sin(t * (1.1 - 0.15 * k) + k)))
            region = out[cy : cy + d, cx : cx + d]
            region[mask] = img[mask]
        if grain:
            np.add(out, self.grain[i % _GRAIN_FRAMES], out=out)
        return out.tobytes()


def psnr(a: bytes | memoryview | np.ndarray, b: bytes | memoryview | np.ndarray, channels: int = 3) -> float:
    """PSNR in dB of two packed images with `channels` bytes per pixel (inf when equal; the X byte of 32 bpp
    pixels is not compared)."""
    x = a.reshape(-1) if isinstance(a, np.ndarray) else np.frombuffer(a, dtype=np.uint8)
    y = b.reshape(-1) if isinstance(b, np.ndarray) else np.frombuffer(b, dtype=np.uint8)
    if x.size != y.size:
        raise ValueError(f"images of {x.size} and {y.size} bytes")
    colour = min(channels, 3)  # 32 bpp: B, G, R count, the X byte does not
    diff = x.reshape(-1, channels)[:, :colour].astype(np.float32) - y.reshape(-1, channels)[:, :colour]
    mse = float(np.mean(diff * diff))
    return float("inf") if mse == 0 else 10 * np.log10(255 * 255 / mse)


def ssim(a: bytes | memoryview, b: bytes | memoryview, width: int, height: int, fmt: str = "bgra") -> float:
    """SSIM of two packed images, BGRX (`fmt` "bgra") or RGB ("rgb24"), 1.0 when equal: FFmpeg's `ssim`
    filter through PyAV, on the R, G and B
    planes (8x8 windows, the average over the planes), ~20 ms for a 1080p pair here; no YUV conversion in
    between, so the figure judges the pictures, not a colour-space round trip."""
    import fractions

    import av

    graph = av.filter.Graph()
    tb = fractions.Fraction(1, 30)
    compare, sink = graph.add("ssim"), graph.add("buffersink")
    sources = []
    for i in range(2):
        src = graph.add_buffer(width=width, height=height, format=fmt, time_base=tb)
        planar = graph.add("format", "gbrp")
        src.link_to(planar)
        planar.link_to(compare, 0, i)
        sources.append(src)
    compare.link_to(sink)
    graph.configure()
    for src, data in zip(sources, (a, b), strict=True):
        arr = np.frombuffer(data, dtype=np.uint8).reshape(height, width, -1)
        frame = av.VideoFrame.from_ndarray(arr, format=fmt)
        frame.pts = 0
        src.push(frame)
    return float(sink.pull().metadata["lavfi.ssim.All"])
