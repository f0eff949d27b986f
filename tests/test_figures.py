"""The folding figure (fastsoftmax.figures): the PCA projection and the matplotlib Figure itself."""

import sys

import numpy as np
import pytest

from fastsoftmax import figures

pytest.importorskip("matplotlib")  # the `test` extra installs it; the figure needs it

RATES = (0.975, 0.0421, 0.5)  # one per panel; each must appear in its title as a percentage
NAMES = ("Softmax positives-only", "Softmax uniform neg.", "WALS w0=0")


def make_panels(n_queries=40, n_items=30, n_categories=3, dim=6, seed=0):
    """Three panels from random embeddings with category structure (one centre per category)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_categories, dim)) * 3
    panels = []
    for name, rate in zip(NAMES, RATES, strict=True):
        qg = np.arange(n_queries) % n_categories
        ig = np.arange(n_items) % n_categories
        q = centres[qg] + rng.normal(size=(n_queries, dim))
        v = centres[ig] + rng.normal(size=(n_items, dim))
        panels.append(figures.folding_panel(name, rate, q, qg, v, ig))
    return panels


def test_folding_panel_is_pca_of_unit_vectors():
    rng = np.random.default_rng(1)
    q, v = rng.normal(size=(25, 5)), rng.normal(size=(15, 5))
    qg, ig = np.arange(25) % 2, np.arange(15) % 2
    panel = figures.folding_panel("m", 0.25, q, qg, v, ig)
    assert panel.queries.shape == (25, 2) and panel.items.shape == (15, 2)
    assert panel.title == "m" and panel.folding_rate == 0.25
    np.testing.assert_array_equal(panel.query_groups, qg)
    np.testing.assert_array_equal(panel.item_groups, ig)
    # Independent reference: covariance eigenvectors of the unit-normalised points.
    unit = np.concatenate([q, v])
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    centred = unit - unit.mean(axis=0)
    evals, evecs = np.linalg.eigh(centred.T @ centred)
    ref = centred @ evecs[:, ::-1][:, :2]
    got = np.concatenate([panel.queries, panel.items])
    for axis in range(2):  # principal directions are defined up to sign
        sign = np.sign(ref[:, axis] @ got[:, axis])
        np.testing.assert_allclose(got[:, axis], sign * ref[:, axis], atol=1e-10)
    share = evals[::-1][:2] / evals.sum()
    np.testing.assert_allclose(panel.explained, share, rtol=1e-10)
    assert panel.explained[0] >= panel.explained[1] > 0
    # Only directions matter: scaling an embedding does not move it in the picture.
    q_scaled = q.copy()
    q_scaled[3] *= 7.0
    again = figures.folding_panel("m", 0.25, q_scaled, qg, v, ig)
    np.testing.assert_allclose(again.queries, panel.queries, atol=1e-10)


def test_folding_panel_rejects_mismatched_shapes():
    q, v = np.ones((4, 3)), np.ones((5, 2))
    with pytest.raises(ValueError, match="embeddings"):
        figures.folding_panel("m", 0.0, q, np.zeros(4), v, np.zeros(5))
    with pytest.raises(ValueError, match="groups"):
        figures.folding_panel("m", 0.0, q, np.zeros(3), np.ones((5, 3)), np.zeros(5))


def test_folding_figure_panels_titles_legend_and_axes():
    panels = make_panels()
    fig = figures.folding_figure(panels)
    # One axes per panel: the empty fourth cell of the 2 x 2 grid is removed.
    assert len(fig.axes) == len(panels) == 3
    for ax, panel, name, rate in zip(fig.axes, panels, NAMES, RATES, strict=True):
        title = ax.get_title()
        assert name in title and f"{rate:.1%}" in title  # 97.5%, 4.2%, 50.0%
        assert ax.get_xlabel().startswith("PC 1 (") and "of variance" in ax.get_xlabel()
        assert ax.get_ylabel().startswith("PC 2 (") and "of variance" in ax.get_ylabel()
        assert f"{panel.explained[0]:.0%}" in ax.get_xlabel()
        # Two scatter layers: the items (squares) and the queries (dots), every point drawn.
        items, queries = ax.collections
        assert len(items.get_offsets()) == len(panel.items)
        assert len(queries.get_offsets()) == len(panel.queries)
        np.testing.assert_allclose(queries.get_offsets(), panel.queries)
        # Queries are coloured by category: same category, same colour; different, different.
        colours = queries.get_facecolors()[:, :3]
        for c in range(3):
            same = colours[panel.query_groups == c]
            assert (same == same[0]).all()
        assert len(np.unique(colours, axis=0)) == 3
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["queries (dots)", "items (squares)", "category 0", "category 1",
                      "category 2"]  # fmt: skip
    handles = legend.legend_handles
    assert handles[0].get_marker() == "o" and handles[1].get_marker() == "s"
    suptitle = fig.get_suptitle()
    assert "2-D PCA" in suptitle and "unit-normalised" in suptitle and "Folding" in suptitle
    assert "top-10" in suptitle


def test_folding_figure_category_names_and_columns():
    panels = make_panels()
    fig = figures.folding_figure(panels, category_names=["en", "fr", "de"], columns=3, k=5)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[2:] == ["en", "fr", "de"]
    assert len(fig.axes) == 3
    rows = {round(ax.get_position().y0, 3) for ax in fig.axes}
    assert len(rows) == 1  # three columns: one row
    assert "top-5" in fig.get_suptitle()
    with pytest.raises(ValueError, match="category_names"):
        figures.folding_figure(panels, category_names=["en"])
    with pytest.raises(ValueError, match="panels"):
        figures.folding_figure([])
    bad = figures.FoldingPanel("m", 0.0, np.zeros((2, 2)), np.array([0, -1]), np.zeros((1, 2)),
                               np.array([0]))  # fmt: skip
    with pytest.raises(ValueError, match="groups"):
        figures.folding_figure([bad])


def test_folding_figure_uses_agg_without_pyplot():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    had_pyplot = "matplotlib.pyplot" in sys.modules
    fig = figures.folding_figure(make_panels())
    assert isinstance(fig.canvas, FigureCanvasAgg)
    if not had_pyplot:  # drawing never imports pyplot (its global state stays untouched)
        assert "matplotlib.pyplot" not in sys.modules


def test_save_folding_figure_writes_a_readable_png(tmp_path):
    from PIL import Image

    panels = make_panels()
    path = figures.save_folding_figure(tmp_path / "f.png", panels)
    assert path == tmp_path / "f.png"
    assert 10_000 < path.stat().st_size < 2_000_000
    expected = figures.folding_figure(panels).get_size_inches() * figures.DPI
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == tuple(np.round(expected).astype(int))
        img = np.asarray(im.convert("RGB"))
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 100  # not blank


def test_missing_matplotlib_raises_with_install_hint(tmp_path, monkeypatch):
    # None in sys.modules makes `import matplotlib` raise ImportError, as if not installed.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    panels = make_panels()  # projecting needs only NumPy
    with pytest.raises(figures.MatplotlibMissing, match=r"fastsoftmax\[demo\]"):
        figures.folding_figure(panels)
    with pytest.raises(ImportError):
        figures.save_folding_figure(tmp_path / "f.png", panels)
    assert not (tmp_path / "f.png").exists()
