"""The cost break-even chart as a standalone SVG, drawn from the numbers of gateway/cost_series.py.

Written by hand (no plotting library), deterministic (the same report gives
the same bytes), and readable without sight or colour: `role="img"` with a
`<title>` and a `<desc>` that state the break-even in words, the same
sentences printed under the title, and each line its own colour (all at least
4.5:1 against the white background) and its own dash pattern. Every name from
the config or the cards is XML-escaped. No script, no external references: the
admin endpoint serves it with a CSP that forbids both anyway.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from gateway.cost import count, money

WIDTH = 880
LEFT, RIGHT = 96, 40  # the plot's margins: room for the y tick labels and the last x tick label
PLOT_HEIGHT = 340
LINE_HEIGHT = 18
WRAP = 112  # characters per line of the sentences at 13px
FONT = "DejaVu Sans, Verdana, Arial, sans-serif"
INK, GRID, MUTED = "#1a1a1a", "#d9d9d9", "#4d4d4d"
# (colour, dash pattern): APIs solid or finely dashed, self-hosting long-dashed; all distinct.
API_STYLES = (("#1f4e9e", ""), ("#6a1b9a", "10 4"), ("#00695c", "3 3"), ("#4e342e", "12 3 3 3"))
HOST_STYLES = (("#b71c1c", "14 6"), ("#bf360c", "6 3 1.5 3"), ("#1b5e20", "18 4 4 4"), ("#880e4f", "2 4"))
_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: Any) -> str:
    return escape(_NOT_XML.sub("\ufffd", str(value)))


def _attrs(attrs: dict[str, Any]) -> str:
    return "".join(f" {k}={quoteattr(_NOT_XML.sub(chr(0xFFFD), str(v)))}" for k, v in attrs.items() if v != "")


def el(tag: str, text: str | None = None, **attrs: Any) -> str:
    """One element; `attrs` with `_` for `-` (stroke_width -> stroke-width), `class_` for `class`."""
    named = {k.rstrip("_").replace("_", "-"): v for k, v in attrs.items()}
    return f"<{tag}{_attrs(named)}/>" if text is None else f"<{tag}{_attrs(named)}>{_text(text)}</{tag}>"


def _num(v: float) -> str:
    return f"{v:.2f}".rstrip("0").rstrip(".") if v else "0"


def short(v: float) -> str:
    """An axis label: 0, 500, 2.5k, 150k, 1.25M."""
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


def style(kind: str, index: int) -> tuple[str, str]:
    """A line's colour and dash pattern: its kind's palette, then further dash patterns past its length."""
    styles = API_STYLES if kind == "api" else HOST_STYLES
    colour = styles[index % len(styles)][0]
    dash = styles[(index + index // len(styles)) % len(styles)][1]
    return colour, dash


def line_label(line: dict[str, Any]) -> str:
    """The legend's words for a line: what it is and how it is priced."""
    if line["kind"] == "api":
        return f"{line['name']} via API: {money(line['per_request_usd'])}/request"
    text = f"self-hosting on {line['name']}: {money(line['fixed_monthly_usd'])}/month flat"
    return text + (f" + {money(line['per_request_usd'])}/request" if line["per_request_usd"] else "")


def break_even_label(b: dict[str, Any], number: int | None = None) -> str:
    """A break-even's words; with several on the chart, numbered as their markers are, and naming the pair."""
    text = f"{count(b['requests_per_day'])} req/day, {money(b['monthly_usd'])}/month"
    if number is None:
        return f"break-even: {text}"
    return f"({number}) {b['api']} via API = self-hosting on {b['self_hosting']}: {text}"


class _Canvas:
    """The plot's coordinate system: data to pixels."""

    def __init__(self, top: float, x_max: float, y_max: float) -> None:
        self.top, self.bottom = top, top + PLOT_HEIGHT
        self.left, self.right = LEFT, WIDTH - RIGHT
        self.x_max, self.y_max = x_max, y_max

    def x(self, v: float) -> float:
        return self.left + v / self.x_max * (self.right - self.left)

    def y(self, v: float) -> float:
        return self.bottom - v / self.y_max * PLOT_HEIGHT


def _header(series: dict[str, Any]) -> tuple[list[str], float]:
    """The visible title and the sentences under it; the y where the plot can start."""
    out = [el("text", series["title"], x=LEFT, y=30, font_size=20, font_weight="bold", fill=INK)]
    y = 54.0
    for sentence in series["sentences"]:
        for row in textwrap.wrap(sentence, WRAP):
            out.append(el("text", row, x=LEFT, y=_num(y), font_size=13, fill=INK, class_="summary"))
            y += LINE_HEIGHT
    return out, y + 14


def _axes(c: _Canvas, series: dict[str, Any]) -> list[str]:
    out = []
    for v in series["x"]:
        x = _num(c.x(v))
        out.append(el("line", x1=x, x2=x, y1=c.top, y2=c.bottom, stroke=GRID, stroke_width=1))
        out.append(el("text", short(v), x=x, y=c.bottom + 18, font_size=12, fill=INK, text_anchor="middle",
                      class_="x-tick"))
    for v in series["y_ticks"]:
        y = _num(c.y(v))
        out.append(el("line", x1=c.left, x2=c.right, y1=y, y2=y, stroke=GRID, stroke_width=1))
        out.append(el("text", "$" + short(v), x=c.left - 8, y=_num(c.y(v) + 4), font_size=12, fill=INK,
                      text_anchor="end", class_="y-tick"))
    out.append(el("path", d=f"M{c.left} {c.top}V{c.bottom}H{c.right}", fill="none", stroke=INK, stroke_width=1.5))
    mid_x, mid_y = _num((c.left + c.right) / 2), _num((c.top + c.bottom) / 2)
    out.append(el("text", series["x_label"], x=mid_x, y=c.bottom + 42, font_size=13, fill=INK,
                  text_anchor="middle", class_="x-label"))
    out.append(el("text", series["y_label"], x=22, y=mid_y, font_size=13, fill=INK, text_anchor="middle",
                  transform=f"rotate(-90 22 {mid_y})", class_="y-label"))
    return out


def _lines(c: _Canvas, series: dict[str, Any]) -> list[str]:
    out, seen = [], {"api": 0, "self_hosting": 0}
    for line in series["lines"]:
        colour, dash = style(line["kind"], seen[line["kind"]])
        seen[line["kind"]] += 1
        points = " ".join(f"{_num(c.x(x))},{_num(c.y(y))}" for x, y in zip(series["x"], line["y"]))
        out += [f"<g{_attrs({'class': 'cost-line', 'data-kind': line['kind'], 'data-name': line['name']})}>",
                el("title", line_label(line)),
                el("polyline", points=points, fill="none", stroke=colour, stroke_width=2.5, stroke_dasharray=dash,
                   stroke_linecap="butt"), "</g>"]
    return out


def _halo(text: str, **attrs: Any) -> str:
    """A label that stays readable where it crosses a line: a white outline under the ink."""
    return el("text", text, font_size=12, fill=INK, stroke="#ffffff", stroke_width=4, paint_order="stroke",
              stroke_linejoin="round", **attrs)


def _markers(c: _Canvas, series: dict[str, Any]) -> list[str]:
    out = []
    m = series["measured"]
    if m["in_range"]:
        x = c.x(m["requests_per_day"])
        right = x > (c.left + c.right) / 2
        out += [f"<g{_attrs({'class': 'measured', 'data-requests-per-day': repr(m['requests_per_day'])})}>",
                el("line", x1=_num(x), x2=_num(x), y1=c.top, y2=c.bottom, stroke=MUTED, stroke_width=2,
                   stroke_dasharray="1 4", stroke_linecap="round"),
                _halo(f"measured: {count(m['requests_per_day'])} req/day"
                      + (" (no usage yet)" if series["state"] == "no_usage" else ""), x=_num(x - 6 if right else x + 6),
                      y=c.top + 16, text_anchor="end" if right else "start", class_="measured-label"), "</g>"]
    shown = [b for b in series["break_even"] if b["in_range"]]
    for i, b in enumerate(shown, 1):
        x, y = c.x(b["requests_per_day"]), c.y(b["monthly_usd"])
        right = x > c.left + (c.right - c.left) * 0.6
        label_y = y + 22 if y < c.top + 40 else y - 14
        anchor = {"x": _num(x - 10 if right else x + 10), "y": _num(label_y), "text_anchor": "end" if right else "start",
                  "font_weight": "bold"}
        # One break-even: its words beside it. Several: a number each (labels would collide), words in the legend.
        label = (_halo(break_even_label(b), class_="break-even-label", **anchor) if len(shown) == 1 else
                 _halo(str(i), class_="break-even-number", **anchor))
        out += [f"<g{_attrs({'class': 'break-even', 'data-requests-per-day': repr(b['requests_per_day'])})}>",
                el("title", break_even_label(b, i if len(shown) > 1 else None)),
                el("circle", cx=_num(x), cy=_num(y), r=6, fill="#ffffff", stroke=INK, stroke_width=2.5), label, "</g>"]
    return out


def _legend(top: float, series: dict[str, Any]) -> tuple[list[str], float]:
    out, y, seen = [el("text", "Legend", x=LEFT, y=_num(top), font_size=13, font_weight="bold", fill=INK)], top, \
        {"api": 0, "self_hosting": 0}

    def row(label: str, sample: str) -> None:
        nonlocal y
        y += 22
        out.extend([sample, el("text", label, x=LEFT + 48, y=_num(y + 4), font_size=13, fill=INK,
                               class_="legend-label")])

    for line in series["lines"]:
        colour, dash = style(line["kind"], seen[line["kind"]])
        seen[line["kind"]] += 1
        row(line_label(line), el("line", x1=LEFT, x2=LEFT + 38, y1=_num(y + 22), y2=_num(y + 22), stroke=colour,
                                 stroke_width=2.5, stroke_dasharray=dash))
    for name in series["unpriced_apis"]:
        row(f"{name} via API: not drawn (no request reached a model yet, so no cost per request)", "")
    if series["measured"]["in_range"]:
        row("measured volume (average requests/day over the period)",
            el("line", x1=LEFT + 19, x2=LEFT + 19, y1=_num(y + 14), y2=_num(y + 30), stroke=MUTED, stroke_width=2,
               stroke_dasharray="1 4", stroke_linecap="round"))
    shown = [b for b in series["break_even"] if b["in_range"]]
    if shown:
        row("break-even: where an API and a self-hosting option cost the same",
            el("circle", cx=LEFT + 19, cy=_num(y + 22), r=6, fill="#ffffff", stroke=INK, stroke_width=2.5))
    if len(shown) > 1:
        for i, b in enumerate(shown, 1):
            y += 20
            out.append(el("text", break_even_label(b, i), x=LEFT + 48, y=_num(y + 4), font_size=13, fill=INK,
                          class_="break-even-label"))
    return out, y + 20


def _document(series: dict[str, Any], body: list[str], height: float) -> str:
    h = _num(height)
    root = {"xmlns": "http://www.w3.org/2000/svg", "width": WIDTH, "height": h, "viewBox": f"0 0 {WIDTH} {h}",
            "role": "img", "aria-labelledby": "chart-title chart-desc", "font-family": FONT,
            "data-state": series["state"]}
    return "\n".join([
        '<?xml version="1.0" encoding="UTF-8"?>', f"<svg{_attrs(root)}>",
        el("title", series["title"], id="chart-title"), el("desc", series["summary"], id="chart-desc"),
        el("rect", width=WIDTH, height=h, fill="#ffffff"), *body, "</svg>", ""])


def render_svg(series: dict[str, Any]) -> str:
    """The chart of `chart_series(report)`; without self-hosting options, a message image instead."""
    header, top = _header(series)
    if series["state"] == "no_self_hosting":
        return _document(series, header, top + 10)
    c = _Canvas(top, series["x"][-1], series["y_ticks"][-1])
    legend, bottom = _legend(c.bottom + 76, series)
    return _document(series, header + _axes(c, series) + _lines(c, series) + _markers(c, series) + legend, bottom)
