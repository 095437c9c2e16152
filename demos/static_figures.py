"""Static copies of the notebooks' plotly figures, drawn offline with matplotlib.

Plotly's own static export (``fig.write_image``) needs kaleido, and kaleido 1.x drives a
Chrome it cannot download on an offline machine. So the notebooks register this module's
renderer instead: every figure a cell shows is sent as *both* plotly's interactive JSON and a
PNG drawn here from the figure's data, and the PNG is also written to a folder. Jupyter shows
the interactive one; a static viewer (GitHub, nbviewer, ``jupyter nbconvert --to html``
without JavaScript) shows the PNG.

The drawing covers what tvlens's figures use: subplots placed by their axis domains,
``scatter`` (lines, markers, text), ``bar`` (grouped or stacked, horizontal or vertical, with
numbers), ``heatmap`` (with a colour bar, category axes and reversed axes), ``scatter3d`` (a
matplotlib 3-D axis), axis titles, log axes, tick values and labels, subplot titles and the
legend. It is a faithful sketch, not a pixel copy: the interactive figure is the reference.

Use::

    import static_figures
    static_figures.enable(RUNS / "figures")  # then every figure shown gets a PNG beside it
"""

from __future__ import annotations

import base64
import io
import itertools
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: the images are files and notebook outputs

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import plotly.io as pio  # noqa: E402
from plotly.io._base_renderers import MimetypeRenderer  # noqa: E402

#: plotly's default colour sequence (``plotly`` template), used for traces with no colour
COLORWAY = (
    "#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A",
    "#19d3f3", "#FF6692", "#B6E880", "#FF97FF", "#FECB52",
)  # fmt: skip
DASHES = {"dash": (0, (5, 3)), "dot": (0, (1, 2)), "dashdot": (0, (5, 2, 1, 2))}
PX_PER_INCH = 100


def plain(text: Any) -> str:
    """Plotly text as plain text: ``<br>`` is a new line, other tags and entities dropped."""
    if text is None:
        return ""
    if isinstance(text, dict):
        text = text.get("text", "")
    text = re.sub(r"<br\s*/?>", "\n", str(text))
    text = re.sub(r"<[^>]+>", "", text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def color(value: Any, default: str) -> Any:
    """A matplotlib colour from a plotly one (``#hex``, ``rgb(…)``, ``rgba(…)``, a name)."""
    if not isinstance(value, str) or not value:
        return default
    m = re.fullmatch(r"rgba?\(([^)]*)\)", value.replace(" ", ""))
    if m:
        parts = [float(p) for p in m.group(1).split(",")]
        rgb = [min(max(p / 255, 0), 1) for p in parts[:3]]
        return (*rgb, parts[3]) if len(parts) == 4 else tuple(rgb)
    try:
        matplotlib.colors.to_rgba(value)
        return value
    except ValueError:
        return default


def colormap(scale: Any, reverse: bool | None, default: str) -> Any:
    """A matplotlib colormap from a plotly colorscale: a list of [stop, colour] pairs or a
    name (plotly's "RdBu" runs red to blue: matplotlib's "RdBu" too)."""
    cmap: Any = default
    if isinstance(scale, (list, tuple)) and scale:
        stops = [(float(s), color(c, "grey")) for s, c in scale]
        cmap = matplotlib.colors.LinearSegmentedColormap.from_list("plotly", stops)
    elif isinstance(scale, str):
        for name in (scale, scale.lower(), scale.title()):
            if name in matplotlib.colormaps:
                cmap = name
                break
    if reverse:
        cmap = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
        cmap = cmap.reversed()
    return cmap


def _values(v: Any) -> list:
    """A trace's data array as a list (plotly JSON may hold typed-array dicts)."""
    if v is None:
        return []
    if isinstance(v, dict) and "bdata" in v:  # plotly 6+: base64 typed arrays
        arr = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = v.get("shape")
        if isinstance(shape, str):
            shape = [int(n) for n in shape.split(",")]
        return arr.reshape(shape).tolist() if shape else arr.tolist()
    return list(np.asarray(v, dtype=object).tolist()) if not isinstance(v, list) else v


def _numeric(values: list) -> bool:
    return all(isinstance(x, (int, float, np.number)) or x is None for x in values)


class _Axes:
    """One plotly subplot (an x/y axis pair) as a matplotlib axis."""

    def __init__(self, fig: plt.Figure, layout: dict, xref: str, yref: str, box: tuple) -> None:
        self.xkey = "xaxis" + xref[1:]
        self.ykey = "yaxis" + yref[1:]
        self.xa = layout.get(self.xkey, {})
        self.ya = layout.get(self.ykey, {})
        x0, x1 = self.xa.get("domain", [0, 1])
        y0, y1 = self.ya.get("domain", [0, 1])
        left, bottom, width, height = box
        self.ax = fig.add_axes(
            (left + x0 * width, bottom + y0 * height, (x1 - x0) * width, (y1 - y0) * height)
        )
        self.categories: dict[str, list] = {"x": [], "y": []}
        self.images = False  # a heatmap: no grid over it

    def position(self, axis: str, values: list) -> list:
        """Category values as 0, 1, 2, …; numbers as they are."""
        spec = self.xa if axis == "x" else self.ya
        if spec.get("type") != "category" and _numeric(values):
            return values
        cats = self.categories[axis]
        for v in values:
            if v not in cats:
                cats.append(v)
        return [cats.index(v) for v in values]

    def finish(self) -> None:
        ax = self.ax
        for axis, spec in (("x", self.xa), ("y", self.ya)):
            set_label = ax.set_xlabel if axis == "x" else ax.set_ylabel
            set_label(plain(spec.get("title")), fontsize=8)
            if spec.get("type") == "log":
                (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
            cats = self.categories[axis]
            ticks = ax.set_xticks if axis == "x" else ax.set_yticks
            if cats:
                ticks(range(len(cats)), [plain(c) for c in cats], fontsize=7)
            if spec.get("tickvals") is not None:
                vals = _values(spec["tickvals"])
                text = spec.get("ticktext")
                labels = [plain(t) for t in _values(text)] if text is not None else None
                if labels is None:
                    ticks(vals)
                else:
                    ticks(vals, labels, fontsize=7)
            if spec.get("range") and spec.get("type") != "log" and not cats:
                (ax.set_xlim if axis == "x" else ax.set_ylim)(*spec["range"])
            if spec.get("autorange") == "reversed":
                (ax.invert_xaxis if axis == "x" else ax.invert_yaxis)()
            if spec.get("showticklabels") is False:
                ax.tick_params(axis=axis, labelbottom=False, labelleft=False)
        if cats := self.categories["x"]:
            if max((len(str(c)) for c in cats), default=0) > 3:
                ax.tick_params(axis="x", labelrotation=60)
        ax.tick_params(which="both", labelsize=7)
        if not self.images:
            ax.grid(alpha=0.3)


def _scatter(a: _Axes, t: dict, c: str, bar_slot: tuple) -> Any:
    mode = t.get("mode") or "lines+markers"
    xs = _values(t.get("x"))
    ys = _values(t.get("y"))
    if not xs:
        xs = list(range(len(ys)))
    xs, ys = a.position("x", xs), a.position("y", ys)
    line = t.get("line") or {}
    marker = t.get("marker") or {}
    col = color(line.get("color") or marker.get("color"), c)
    style = "-" if "lines" in mode else ""
    handle = a.ax.plot(
        [np.nan if v is None else v for v in xs],
        [np.nan if v is None else v for v in ys],
        linestyle=DASHES.get(line.get("dash"), style) if style else "none",
        marker="o" if "markers" in mode else None,
        markersize=3,
        linewidth=line.get("width", 1.5) or 1.5,
        color=col,
    )[0]
    if "text" in mode:
        for x, y, s in zip(xs, ys, _values(t.get("text")), strict=False):
            a.ax.annotate(plain(s), (x, y), fontsize=7, textcoords="offset points", xytext=(3, 3))
    err = t.get("error_y") or {}
    if err.get("array") is not None and err.get("visible", True):
        a.ax.errorbar(xs, ys, yerr=_values(err["array"]), fmt="none", ecolor=col, alpha=0.6)
    return handle


def _bar(a: _Axes, t: dict, c: str, bar_slot: tuple) -> Any:
    i, n, mode = bar_slot
    horizontal = t.get("orientation") == "h"
    cats, vals = (
        _values(t.get("y" if horizontal else "x")),
        _values(t.get("x" if horizontal else "y")),
    )
    if not cats:
        cats = list(range(len(vals)))
    pos = np.asarray(a.position("y" if horizontal else "x", cats), dtype=float)
    width = 0.8 if mode in ("stack", "relative", "overlay") else 0.8 / n
    if mode not in ("stack", "relative", "overlay"):
        pos = pos - 0.4 + width * (i + 0.5)
    marker = t.get("marker") or {}
    col = marker.get("color")
    cols = [color(x, c) for x in col] if isinstance(col, list) else color(col, c)
    vals = [np.nan if v is None else v for v in vals]
    draw = a.ax.barh if horizontal else a.ax.bar
    handle = draw(pos, vals, width, color=cols)
    text = t.get("text")
    if text is not None and not isinstance(text, str):
        a.ax.bar_label(handle, labels=[plain(s) for s in _values(text)], fontsize=6)
    return handle


def _heatmap(a: _Axes, t: dict, c: str, bar_slot: tuple) -> Any:
    z = np.asarray(_values(t.get("z")), dtype=float)
    if z.ndim == 1:
        z = z[None, :]
    xs = _values(t.get("x")) or list(range(z.shape[1]))
    ys = _values(t.get("y")) or list(range(z.shape[0]))
    zmid = t.get("zmid")
    kwargs: dict[str, Any] = {"cmap": "viridis", "aspect": "auto", "origin": "lower"}
    if zmid is not None:
        span = np.nanmax(np.abs(z - zmid)) or 1.0
        kwargs.update(cmap="RdBu_r", vmin=zmid - span, vmax=zmid + span)
    for key, arg in (("zmin", "vmin"), ("zmax", "vmax")):
        if t.get(key) is not None:
            kwargs[arg] = t[key]
    kwargs["cmap"] = colormap(t.get("colorscale"), t.get("reversescale"), kwargs["cmap"])
    numeric = a.xa.get("type") != "category" and _numeric(xs) and _numeric(ys)
    numeric = numeric and a.ya.get("type") != "category"
    if numeric and len(xs) == z.shape[1] and len(ys) == z.shape[0]:
        dx = (xs[-1] - xs[0]) / max(len(xs) - 1, 1) or 1
        dy = (ys[-1] - ys[0]) / max(len(ys) - 1, 1) or 1
        kwargs["extent"] = (xs[0] - dx / 2, xs[-1] + dx / 2, ys[0] - dy / 2, ys[-1] + dy / 2)
    else:
        a.position("x", xs)
        a.position("y", ys)
    image = a.ax.imshow(z, **kwargs)
    a.images = True
    if t.get("showscale", True) is not False:
        title = plain((t.get("colorbar") or {}).get("title"))
        a.ax.figure._static_scales.append((image, title))  # drawn once, by _colorbar
    if t.get("texttemplate") or t.get("text") is not None:
        labels = _values(t.get("text")) if t.get("text") is not None else None
        for r in range(z.shape[0]):
            for col_ in range(z.shape[1]):
                s = plain(labels[r][col_]) if labels else f"{z[r, col_]:.2g}"
                x = col_ if "extent" not in kwargs else xs[col_]
                y = r if "extent" not in kwargs else ys[r]
                a.ax.text(x, y, s, ha="center", va="center", fontsize=5)
    return None


DRAW = {"scatter": _scatter, "scattergl": _scatter, "bar": _bar, "heatmap": _heatmap}


def _scene(fig: plt.Figure, layout: dict, key: str, traces: list[dict], box: tuple) -> list:
    """The 3-D traces of one scene, on a matplotlib 3-D axis."""
    spec = layout.get(key, {})
    dom = spec.get("domain", {})
    x0, x1 = dom.get("x", [0, 1])
    y0, y1 = dom.get("y", [0, 1])
    left, bottom, width, height = box
    ax = fig.add_axes(
        (left + x0 * width, bottom + y0 * height, (x1 - x0) * width, (y1 - y0) * height),
        projection="3d",
    )
    handles = []
    for i, t in enumerate(traces):
        c = COLORWAY[i % len(COLORWAY)]
        mode = t.get("mode") or "markers"
        marker = t.get("marker") or {}
        line = t.get("line") or {}
        col = color(marker.get("color") if isinstance(marker.get("color"), str) else None, c)
        col = color(line.get("color"), col)
        xyz = [np.asarray(_values(t.get(k)), dtype=float) for k in "xyz"]
        h = ax.plot(
            *xyz,
            linestyle="-" if "lines" in mode else "none",
            marker="o" if "markers" in mode else None,
            markersize=2 if "lines" not in mode else 4,
            color=col,
        )[0]
        if "text" in mode:
            for x, y, z, s in zip(*xyz, _values(t.get("text")), strict=False):
                ax.text(x, y, z, plain(s), fontsize=7)
        handles.append((t, h))
    for axis in "xyz":
        title = plain((spec.get(f"{axis}axis") or {}).get("title"))
        getattr(ax, f"set_{axis}label")(title, fontsize=7)
    ax.tick_params(labelsize=6)
    return handles


def draw(fig_dict: dict) -> plt.Figure:
    """A matplotlib figure of the plotly figure ``fig_dict`` (``fig.to_dict()``)."""
    layout = fig_dict.get("layout", {})
    traces = [dict(t) for t in fig_dict.get("data", [])]
    width = (layout.get("width") or 900) / PX_PER_INCH
    height = (layout.get("height") or 500) / PX_PER_INCH
    fig = plt.figure(figsize=(width, height), dpi=PX_PER_INCH)
    legend_room = 0.2 if any(t.get("name") for t in traces) else 0.0
    if any(t.get("type") == "heatmap" for t in traces):
        legend_room = max(legend_room, 0.08)  # the colour bar
    fig._static_scales = []  # heatmaps' (image, title): one colour bar for the figure
    box = (0.08, 0.08, 0.9 - legend_room, 0.8)
    title = plain(layout.get("title"))
    if title:
        fig.suptitle(title, fontsize=10, x=0.02, ha="left")
    axes: dict[tuple[str, str], _Axes] = {}
    handles: list[tuple[dict, Any]] = []
    scenes: dict[str, list[dict]] = {}
    bar_traces: dict[tuple[str, str], list[int]] = {}
    for i, t in enumerate(traces):
        kind = t.get("type", "scatter")
        if kind.endswith("3d"):
            scenes.setdefault(t.get("scene", "scene"), []).append(t)
            continue
        if kind == "bar":
            bar_traces.setdefault((t.get("xaxis", "x"), t.get("yaxis", "y")), []).append(i)
    for scene, group in scenes.items():
        handles += _scene(fig, layout, scene, group, box)
    for i, t in enumerate(traces):
        kind = t.get("type", "scatter")
        if kind.endswith("3d") or t.get("visible") is False:
            continue
        ref = (t.get("xaxis", "x"), t.get("yaxis", "y"))
        if ref not in axes:
            axes[ref] = _Axes(fig, layout, *ref, box)
        a = axes[ref]
        group = bar_traces.get(ref, [i])
        slot = (group.index(i) if i in group else 0, len(group), layout.get("barmode", "group"))
        fn = DRAW.get(kind)
        if fn is None:
            a.ax.text(0.5, 0.5, f"({kind}: interactive figure only)", ha="center",
                      transform=a.ax.transAxes, fontsize=8)  # fmt: skip
            continue
        h = fn(a, t, COLORWAY[i % len(COLORWAY)], slot)
        if h is not None:
            handles.append((t, h))
    if layout.get("barmode") in ("stack", "relative"):
        pass  # stacked bars are drawn side by side of the same width: values stay readable
    for a in axes.values():
        a.finish()
    for ann in layout.get("annotations", []) or []:
        if ann.get("xref", "paper") == "paper" and ann.get("yref", "paper") == "paper":
            x = box[0] + ann.get("x", 0) * box[2]
            y = box[1] + ann.get("y", 0) * box[3] + 0.005
            fig.text(x, y, plain(ann.get("text")), fontsize=7, ha="center", va="bottom")
    _legend(fig, handles, legend_room)
    _colorbar(fig)
    return fig


def _colorbar(fig: plt.Figure) -> None:
    """One colour bar, right of the plot area (where plotly draws it), for the first
    heatmap that shows a scale; not one per panel."""
    if not fig._static_scales:
        return
    image, title = fig._static_scales[0]
    plots = [ax.get_position() for ax in fig.axes]
    right = max(p.x1 for p in plots)
    y0, y1 = min(p.y0 for p in plots), max(p.y1 for p in plots)
    cax = fig.add_axes((right + 0.01, y0, 0.012, y1 - y0), label="<colorbar>")
    bar = fig.colorbar(image, cax=cax)
    bar.ax.tick_params(labelsize=6)
    if title:
        bar.set_label(title, fontsize=7)


def _legend(fig: plt.Figure, handles: Iterable[tuple[dict, Any]], room: float) -> None:
    seen: dict[str, Any] = {}
    for t, h in handles:
        name = plain(t.get("name"))
        if name and t.get("showlegend", True) is not False and name not in seen:
            seen[name] = h
    if seen and room:
        fig.legend(list(seen.values()), list(seen), loc="upper right", fontsize=7,
                   bbox_to_anchor=(0.995, 0.9), frameon=False)  # fmt: skip


def png(fig_dict: dict) -> bytes:
    """The static copy of a plotly figure as PNG bytes."""
    fig = draw(fig_dict)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


class StaticCopy(MimetypeRenderer):
    """A plotly renderer adding ``image/png`` (drawn by :func:`png`) to a figure's output,
    and writing the same PNG into ``folder`` (``NN-title.png``, numbered in display order)."""

    def __init__(self, folder: Path | str | None = None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.numbers = itertools.count(1)  # shared by plotly's copies of the renderer

    def to_mimebundle(self, fig_dict: dict) -> dict[str, str]:
        data = png(fig_dict)
        number = next(self.numbers)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            slug = re.sub(
                r"[^a-z0-9]+", "-", plain(fig_dict.get("layout", {}).get("title")).lower()
            )
            (self.folder / f"{number:02d}-{slug.strip('-')[:50] or 'figure'}.png").write_bytes(data)
        return {"image/png": base64.b64encode(data).decode()}


def enable(folder: Path | str | None = None) -> StaticCopy:
    """Show every plotly figure interactively *and* as a static PNG (saved in ``folder``)."""
    renderer = StaticCopy(folder)
    pio.renderers["static_copy"] = renderer
    pio.renderers.default = "plotly_mimetype+static_copy"
    return renderer
