"""The folding figure: 2-D PCA pictures of query and item embeddings, one panel per model.

Folding is when a retrieval model places queries of one category near items of another (and so
recommends across categories that never interact). The figure shows it directly: every panel is a
2-D PCA projection of one model's unit-normalised query embeddings (dots) and item embeddings
(squares), coloured by category, titled with the model's measured folding rate.

matplotlib is optional (``pip install 'fastsoftmax[demo]'``) and imported only when a figure is
drawn, with the non-interactive Agg canvas: drawing needs no display and never touches pyplot's
global state or the user's backend. Without matplotlib, :func:`folding_figure` raises
:class:`MatplotlibMissing`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # only for annotations: matplotlib stays an optional, lazy import
    from matplotlib.figure import Figure

__all__ = [
    "DPI",
    "INSTALL_HINT",
    "FoldingPanel",
    "MatplotlibMissing",
    "folding_figure",
    "folding_panel",
    "save_folding_figure",
]

DPI = 150
"""Resolution of the saved figure, dots per inch."""

INSTALL_HINT = "pip install 'fastsoftmax[demo]'"
"""The command that installs the figure's optional dependency (matplotlib)."""

# Size of one panel, and the height of the title and legend rows, inches; at DPI = 150 a
# 2 x 2 figure is 1560 x 1620 px, large enough for 600 + 600 points per panel to stay apart.
_PANEL_W, _PANEL_H, _TITLE_H, _LEGEND_H = 5.2, 4.6, 0.75, 0.85


class MatplotlibMissing(ImportError):
    """matplotlib, which draws the figures, is not installed (`pip install 'fastsoftmax[demo]'`)."""


@dataclass(frozen=True)
class FoldingPanel:
    """One panel of the folding figure: one model's embeddings projected to 2-D.

    Parameters
    ----------
    title : str
        The model's name.
    folding_rate : float
        The model's measured folding rate, in [0, 1] (shown in the panel title).
    queries : numpy.ndarray, float, shape (n_queries, 2)
        Projected query embeddings (drawn as dots).
    query_groups : numpy.ndarray, int, shape (n_queries,)
        Category of each query, in ``[0, n_categories)``.
    items : numpy.ndarray, float, shape (n_items, 2)
        Projected item embeddings (drawn as squares).
    item_groups : numpy.ndarray, int, shape (n_items,)
        Category of each item, in ``[0, n_categories)``.
    explained : tuple of float or None, default None
        Share of variance explained by the two axes (PC 1, PC 2), shown in the axis labels.
    """

    title: str
    folding_rate: float
    queries: np.ndarray
    query_groups: np.ndarray
    items: np.ndarray
    item_groups: np.ndarray
    explained: tuple[float, float] | None = None


def folding_panel(
    title: str,
    folding_rate: float,
    query_embeddings: np.typing.ArrayLike,
    query_groups: np.typing.ArrayLike,
    item_embeddings: np.typing.ArrayLike,
    item_groups: np.typing.ArrayLike,
) -> FoldingPanel:
    """Project one model's query and item embeddings onto their first two principal components.

    Every embedding is first scaled to unit length: inner-product retrieval ranks by direction
    (for a given query, scaling it changes no ranking), so the picture compares directions. The
    PCA basis is fitted on queries and items together, so both land in the same 2-D space and a
    query near items of another category in the picture is near them in the model too (up to the
    variance the two axes do not show).

    Parameters
    ----------
    title : str
        The model's name (the panel title).
    folding_rate : float
        The model's measured folding rate, in [0, 1].
    query_embeddings : array_like of float, shape (n_queries, dim)
        Query embeddings.
    query_groups : array_like of int, shape (n_queries,)
        Category of each query.
    item_embeddings : array_like of float, shape (n_items, dim)
        Item embeddings, same ``dim``.
    item_groups : array_like of int, shape (n_items,)
        Category of each item.

    Returns
    -------
    FoldingPanel
        Projected points, their categories, and the share of variance of each axis.
    """
    q = np.asarray(query_embeddings, dtype=np.float64)
    v = np.asarray(item_embeddings, dtype=np.float64)
    qg = np.asarray(query_groups, dtype=np.int64)
    vg = np.asarray(item_groups, dtype=np.int64)
    if q.ndim != 2 or v.ndim != 2 or q.shape[1] != v.shape[1]:
        raise ValueError(f"embeddings: expected (n, dim) and (m, dim), got {q.shape}, {v.shape}")
    if qg.shape != (len(q),) or vg.shape != (len(v),):
        raise ValueError(f"groups: expected shapes ({len(q)},) and ({len(v)},), got "
                         f"{qg.shape}, {vg.shape}")  # fmt: skip
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    both = np.concatenate([q, v])
    mean = both.mean(axis=0)
    _, s, vt = np.linalg.svd(both - mean, full_matrices=False)
    # Pad to two axes when dim == 1 (or everything is one point) so the panel still draws.
    basis = np.zeros((2, both.shape[1]))
    basis[: min(2, len(vt))] = vt[:2]
    var = np.zeros(2)
    var[: min(2, len(s))] = s[:2] ** 2
    total = float((s**2).sum())
    explained = (float(var[0] / total), float(var[1] / total)) if total > 0 else None
    return FoldingPanel(title=title, folding_rate=float(folding_rate),
                        queries=(q - mean) @ basis.T, query_groups=qg,
                        items=(v - mean) @ basis.T, item_groups=vg,
                        explained=explained)  # fmt: skip


def _matplotlib() -> tuple[type, type]:
    """Import matplotlib lazily: (Figure, FigureCanvasAgg), or raise MatplotlibMissing."""
    try:
        # `import matplotlib` first, explicitly: a missing or blocked top-level package fails
        # here even when submodules were imported earlier in the process.
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MatplotlibMissing(f"the folding figure needs matplotlib: {INSTALL_HINT}") from e
    return Figure, FigureCanvasAgg


def _category_colors(n_categories: int) -> np.ndarray:
    """RGBA colours, shape (n_categories, 4): qualitative palettes while they last."""
    from matplotlib import colormaps

    if n_categories <= 10:
        return colormaps["tab10"](np.arange(n_categories))
    if n_categories <= 20:
        return colormaps["tab20"](np.arange(n_categories))
    return colormaps["turbo"](np.linspace(0.0, 1.0, n_categories))


def folding_figure(
    panels: Sequence[FoldingPanel],
    *,
    category_names: Sequence[str] | None = None,
    columns: int = 2,
    k: int = 10,
) -> Figure:
    """Draw the folding figure: one scatter panel per model, a shared legend and a title.

    Parameters
    ----------
    panels : sequence of FoldingPanel
        The panels, in reading order (left to right, then top to bottom); at least one.
    category_names : sequence of str, optional
        Name of each category id (e.g. ``Dataset.group_names``); default ``"category 0"``,
        ``"category 1"``, ...
    columns : int, default 2
        Panels per row.
    k : int, default 10
        The top-k cut-off of the folding rates (explained in the title).

    Returns
    -------
    matplotlib.figure.Figure
        The figure, attached to an Agg canvas (not to pyplot): save it with
        ``fig.savefig(path, dpi=DPI)`` or :func:`save_folding_figure`.

    Raises
    ------
    MatplotlibMissing
        If matplotlib is not installed.
    """
    if not panels:
        raise ValueError("panels: expected at least one panel")
    if columns < 1:
        raise ValueError(f"columns: expected a positive number, got {columns}")
    if any((p.query_groups < 0).any() or (p.item_groups < 0).any() for p in panels):
        raise ValueError("groups: expected category ids >= 0 (points without a category: drop "
                         "them before projecting)")  # fmt: skip
    Figure, FigureCanvasAgg = _matplotlib()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    n_categories = 1 + max(
        int(max(p.query_groups.max(initial=0), p.item_groups.max(initial=0))) for p in panels
    )
    if category_names is not None:
        if len(category_names) < n_categories:
            raise ValueError(f"category_names: expected at least {n_categories} names, got "
                             f"{len(category_names)}")  # fmt: skip
        names = [str(n) for n in category_names[:n_categories]]
    else:
        names = [f"category {c}" for c in range(n_categories)]
    colors = _category_colors(n_categories)

    columns = min(columns, len(panels))
    rows = -(-len(panels) // columns)
    fig = Figure(figsize=(columns * _PANEL_W, rows * _PANEL_H + _TITLE_H + _LEGEND_H),
                 layout="constrained")  # fmt: skip
    FigureCanvasAgg(fig)  # an explicit non-interactive canvas: no display, no pyplot
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        # Items first (hollow squares, larger) then queries (small dots) on top: both stay
        # visible where a category's queries sit on its items.
        ax.scatter(panel.items[:, 0], panel.items[:, 1], s=16, marker="s",
                   facecolors="none", edgecolors=colors[panel.item_groups], linewidths=0.8,
                   alpha=0.8)  # fmt: skip
        ax.scatter(panel.queries[:, 0], panel.queries[:, 1], s=5, marker="o",
                   c=colors[panel.query_groups], linewidths=0, alpha=0.7)  # fmt: skip
        ax.set_title(f"{panel.title}\nfolding rate {panel.folding_rate:.1%}", fontsize=11)
        if panel.explained is not None:
            ax.set_xlabel(f"PC 1 ({panel.explained[0]:.0%} of variance)")
            ax.set_ylabel(f"PC 2 ({panel.explained[1]:.0%} of variance)")
        else:
            ax.set_xlabel("PC 1")
            ax.set_ylabel("PC 2")
        # Equal scales on both axes: distances in the picture are distances in the PCA plane.
        ax.set_aspect("equal", adjustable="datalim")
        ax.tick_params(labelsize=8)
        ax.grid(True, linewidth=0.3, alpha=0.5)
    for ax in axes.flat[len(panels) :]:
        fig.delaxes(ax)  # unused cells of the last row

    grey = "0.35"
    handles = [
        Line2D([], [], linestyle="none", marker="o", markersize=5, color=grey,
               label="queries (dots)"),
        Line2D([], [], linestyle="none", marker="s", markersize=6, markerfacecolor="none",
               markeredgecolor=grey, label="items (squares)"),
    ]  # fmt: skip
    # Colour patches (not markers) for the categories, so they do not read as a third kind of point.
    handles += [Patch(facecolor=colors[c], edgecolor="none", label=name)
                for c, name in enumerate(names)]  # fmt: skip
    # Below the panels, in a row of its own that the constrained layout reserves: never over data.
    # Column-major, two rows: the two markers form the first column, categories pair up after.
    fig.legend(handles=handles, loc="outside lower center", ncols=min(-(-len(handles) // 2), 8),
               fontsize=10, frameon=False, handletextpad=0.4, columnspacing=1.6)  # fmt: skip
    sizes = {(len(p.queries), len(p.items)) for p in panels}
    sample = ""
    if len(sizes) == 1:
        n_q, n_i = sizes.pop()
        sample = f" ({n_q:,} queries and {n_i:,} items per panel)"
    lines = [
        f"2-D PCA of unit-normalised query and item embeddings, coloured by category{sample}",
        "Folding: queries of one category landing near items of another "
        f"(folding rate = share of a query's top-{k} items from another category)",
    ]
    # Wrap to the figure's width (about 14 characters per inch at this font size).
    width = int(fig.get_figwidth() * 14)
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in lines), fontsize=11)
    return fig


def save_folding_figure(
    path: str | Path,
    panels: Sequence[FoldingPanel],
    *,
    category_names: Sequence[str] | None = None,
    columns: int = 2,
    k: int = 10,
) -> Path:
    """Draw the folding figure (:func:`folding_figure`) and save it as a PNG file at :data:`DPI`.

    Parameters
    ----------
    path : str or pathlib.Path
        Output file; its folder must exist.
    panels, category_names, columns, k
        As in :func:`folding_figure`.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    MatplotlibMissing
        If matplotlib is not installed (nothing is written).
    """
    fig = folding_figure(panels, category_names=category_names, columns=columns, k=k)
    path = Path(path)
    fig.savefig(path, dpi=DPI, format="png")
    return path
