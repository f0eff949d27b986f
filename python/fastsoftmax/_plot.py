"""A tiny dependency-free scatter-plot renderer that writes PNG files.

The demo draws the "folding picture" (2-D projections of item and query embeddings coloured by
category) without requiring matplotlib: points are rasterised into an RGB array with NumPy, labels
use a built-in 5x7 bitmap font, and the PNG is encoded with zlib.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Panel", "category_colors", "render_panels", "write_png"]

# 5x7 glyphs, one string of 7 rows x 5 columns per character ('#' = ink).
_FONT_ROWS = {
    "A": ".###.#...##...#######...##...##...#",
    "B": "####.#...##...#####.#...##...#####.",
    "C": ".###.#...##....#....#....#...#.###.",
    "D": "####.#...##...##...##...##...#####.",
    "E": "######....#....####.#....#....#####",
    "F": "######....#....####.#....#....#....",
    "G": ".###.#...##....#.####...##...#.####",
    "H": "#...##...##...#######...##...##...#",
    "I": ".###...#....#....#....#....#...###.",
    "J": "..###...#....#....#....#.#..#..##..",
    "K": "#...##..#.#.#..##...#.#..#..#.#...#",
    "L": "#....#....#....#....#....#....#####",
    "M": "#...###.###.#.##...##...##...##...#",
    "N": "#...###..##.#.##..###...##...##...#",
    "O": ".###.#...##...##...##...##...#.###.",
    "P": "####.#...##...#####.#....#....#....",
    "Q": ".###.#...##...##...##.#.##..#..##.#",
    "R": "####.#...##...#####.#.#..#..#.#...#",
    "S": ".####.....#.....###.....#....#####.",
    "T": "#####..#....#....#....#....#....#..",
    "U": "#...##...##...##...##...##...#.###.",
    "V": "#...##...##...##...##...#.#.#...#..",
    "W": "#...##...##...##.#.##.#.##.#.#.#.#.",
    "X": "#...##...#.#.#...#...#.#.#...##...#",
    "Y": "#...##...#.#.#...#....#....#....#..",
    "Z": "#####....#...#...#...#...#....#####",
    "0": ".###.#...##..###.#.###..##...#.###.",
    "1": "..#...##....#....#....#....#...###.",
    "2": ".###.#...#....#...#...#...#...#####",
    "3": "#####...#...#.....#....##...#.###.",
    "4": "...#...##..#.#.#..#.#####...#....#.",
    "5": "######....####.....#....##...#.###.",
    "6": "..##..#...#....####.#...##...#.###.",
    "7": "#####....#...#...#...#....#....#...",
    "8": ".###.#...##...#.###.#...##...#.###.",
    "9": ".###.#...##...#.####....#...#..##..",
    " ": "...................................",
    ".": "..............................##...",
    ",": ".........................##...#..#.",
    ":": ".......##...##.......##...##.......",
    "-": "................###................",
    "+": ".......#....#..#####..#....#.......",
    "=": "..........#####.....#####..........",
    "(": "...#...#...#....#....#.....#.....#.",
    ")": ".#.....#.....#....#....#...#...#...",
    "/": ".....#...#...#...#...#...#.........",
    "_": "..............................#####",
    "%": "##...##..#...#...#...#...#..##...##",
}
_GLYPHS = {
    ch: np.array([c == "#" for c in rows.ljust(35, ".")[:35]], dtype=bool).reshape(7, 5)
    for ch, rows in _FONT_ROWS.items()
}

_PALETTE = np.array(
    [
        (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
        (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
        (0, 0, 128), (128, 128, 0), (0, 128, 128), (128, 0, 0), (255, 215, 0), (0, 0, 0),
    ],
    dtype=np.uint8,
)  # fmt: skip


def category_colors(groups: np.ndarray) -> np.ndarray:
    """Map integer category ids, shape (N,), to RGB colours, uint8 shape (N, 3)."""
    return _PALETTE[np.asarray(groups, dtype=np.int64) % len(_PALETTE)]


@dataclass
class Panel:
    """One scatter panel: a title and layers of points drawn in order.

    Each layer is ``(xy float (N, 2), rgb uint8 (N, 3), marker)`` with marker ``"dot"`` (2x2 px)
    or ``"square"`` (4x4 px hollow square).
    """

    title: str
    layers: list[tuple[np.ndarray, np.ndarray, str]] = field(default_factory=list)


def _draw_text(img: np.ndarray, text: str, x: int, y: int, scale: int = 2) -> None:
    for ch in text.upper():
        glyph = _GLYPHS.get(ch, _GLYPHS[" "])
        big = np.kron(glyph, np.ones((scale, scale), dtype=bool))
        h, w = big.shape
        region = img[y : y + h, x : x + w]
        region[big[: region.shape[0], : region.shape[1]]] = 0
        x += (5 + 1) * scale


def render_panels(panels: list[Panel], *, panel_size: int = 360, columns: int = 2) -> np.ndarray:
    """Rasterise panels into one RGB image, uint8 shape (H, W, 3).

    Every panel is scaled to its own data range (robust 1st-99th percentile box) and framed.
    """
    rows = (len(panels) + columns - 1) // columns
    title_h, pad = 28, 10
    img = np.full((rows * (panel_size + title_h + pad) + pad, columns * (panel_size + pad) + pad, 3),
                  255, dtype=np.uint8)  # fmt: skip
    for k, panel in enumerate(panels):
        r, c = divmod(k, columns)
        x0 = pad + c * (panel_size + pad)
        y0 = pad + r * (panel_size + title_h + pad)
        _draw_text(img, panel.title[: panel_size // 12], x0, y0 + 4)
        top = y0 + title_h
        img[top, x0 : x0 + panel_size] = 0
        img[top + panel_size - 1, x0 : x0 + panel_size] = 0
        img[top : top + panel_size, x0] = 0
        img[top : top + panel_size, x0 + panel_size - 1] = 0
        allxy = (
            np.concatenate([xy for xy, _, _ in panel.layers]) if panel.layers else np.zeros((1, 2))
        )
        lo = np.percentile(allxy, 1, axis=0)
        hi = np.percentile(allxy, 99, axis=0)
        span = np.where(hi - lo > 0, hi - lo, 1.0)
        inner = panel_size - 16
        for xy, rgb, marker in panel.layers:
            uv = np.clip((xy - lo) / span, 0, 1) * inner
            px = (x0 + 8 + uv[:, 0]).astype(np.int64)
            py = (top + 8 + inner - uv[:, 1]).astype(np.int64)
            if marker == "square":
                offsets = [(dx, dy) for dx in range(-2, 3) for dy in (-2, 2)]
                offsets += [(dx, dy) for dx in (-2, 2) for dy in range(-1, 2)]
            else:
                offsets = [(0, 0), (1, 0), (0, 1), (1, 1)]
            for dx, dy in offsets:
                img[py + dy, px + dx] = rgb
    return img


def write_png(path: str | Path, img: np.ndarray) -> Path:
    """Write an RGB uint8 image of shape (H, W, 3) as a PNG file and return its path."""
    img = np.ascontiguousarray(img, dtype=np.uint8)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"img: expected shape (H, W, 3), got {img.shape}")
    h, w, _ = img.shape
    raw = np.concatenate([np.zeros((h, 1), dtype=np.uint8), img.reshape(h, w * 3)], axis=1)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))  # fmt: skip

    png = (b"\x89PNG\r\n\x1a\n"
           + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
           + chunk(b"IEND", b""))  # fmt: skip
    path = Path(path)
    path.write_bytes(png)
    return path
