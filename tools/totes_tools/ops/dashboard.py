"""``python -m totes dashboard``: the template's own CloudWatch dashboard, drawn from the
metrics a local run emitted, as a PNG and a self-contained HTML page.

The body is the template's ``DashboardBody`` (resolved with the local names the run recorded),
not a second definition: one panel per widget at its place on the 24-column grid, each metric
reference evaluated as CloudWatch would (``totes_tools.ops.cloudwatch``), the widget's
horizontal annotations (every alarm's threshold) drawn as dashed lines, and the alarm widget as
each alarm's state at the end of the run, evaluated from the same metrics against the alarm's
own definition. Locally each chain cycle stands for one scheduled run: cycle ``k`` is drawn at
``k`` times the schedule rate.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from totes_tools.ops import cloudwatch, metricstore
from totes_tools.ops.cloudwatch import LocalNames, Timeline
from totes_tools.ops.metricstore import Datapoint

ALARM_COLOURS = {"ALARM": "#d13212", "OK": "#1d8102", "INSUFFICIENT_DATA": "#8d99a8"}
GRID_COLUMNS = 24


@dataclass
class Panel:
    """What one widget shows: its series (label -> {seconds: value}, with their axis), the
    thresholds drawn, or the alarms' states."""

    widget: dict[str, Any]
    series: dict[str, tuple[str, dict[float, float]]] = field(default_factory=dict)
    thresholds: list[tuple[str, float, str]] = field(default_factory=list)
    alarms: list[cloudwatch.Evaluation] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return str(self.widget["type"])

    @property
    def title(self) -> str:
        props = self.widget.get("properties", {})
        if self.kind == "text":
            return re.sub(r"^#+\s*", "", str(props.get("markdown", "")))
        return str(props.get("title", ""))

    @property
    def points(self) -> int:
        """Datapoints drawn (metric widgets) or alarms evaluated (alarm widget)."""
        if self.kind == "alarm":
            return len(self.alarms)
        return sum(len(values) for _, values in self.series.values())


def schedule_rate(template: Mapping[str, Any]) -> int:
    """The ingest schedule's default rate in seconds (``IngestScheduleRate``)."""
    text = str(template["Parameters"]["IngestScheduleRate"]["Default"])
    amount, unit = text.split()
    return int(amount) * {"minute": 60, "hour": 3600, "day": 86400}[unit.rstrip("s")]


def panels(
    template: Mapping[str, Any], names: LocalNames, points: Sequence[Datapoint]
) -> list[Panel]:
    """Every widget of the template's dashboard, evaluated over ``points``."""
    timeline = Timeline(schedule_rate(template))
    body = cloudwatch.dashboard_body(template, names)
    alarms = cloudwatch.alarms_from_template(template, names)
    arn_of = {names.value(f"{name}.Arn", template): name for name in alarms}
    out = []
    for widget in body["widgets"]:
        panel = Panel(widget)
        props = widget.get("properties", {})
        if panel.kind == "metric":
            for query in cloudwatch.widget_queries(widget):
                period = query.period or int(props.get("period", 300))
                for label, values in cloudwatch.series(query, points, period, timeline).items():
                    panel.series[label] = (query.y_axis, values)
            for note in props.get("annotations", {}).get("horizontal", []):
                axis = str(note.get("yAxis", "left"))
                panel.thresholds.append((str(note.get("label", "")), float(note["value"]), axis))
        elif panel.kind == "alarm":
            for arn in props.get("alarms", []):
                panel.alarms.append(cloudwatch.evaluate(alarms[arn_of[arn]], points, timeline))
        elif panel.kind != "text":
            raise cloudwatch.UnsupportedMetric(f"widget type {panel.kind!r}")
        out.append(panel)
    return out


# -- drawing ----------------------------------------------------------------------------------


def _draw(ax: Any, panel: Panel, rate: int) -> None:
    """One panel on a matplotlib axis (its right axis created when a series needs it)."""
    if panel.kind == "text":
        ax.axis("off")
        ax.text(0.0, 0.5, panel.title, fontsize=13, fontweight="bold", va="center")
        return
    ax.set_title(panel.title, fontsize=8.5, loc="left")
    if panel.kind == "alarm":
        _draw_alarms(ax, panel)
        return
    right = None
    stacked = bool(panel.widget.get("properties", {}).get("stacked"))
    drawn = 0
    bottoms: dict[float, float] = {}
    for index, (label, (axis, values)) in enumerate(panel.series.items()):
        colour = f"C{index % 10}"  # one colour cycle across both axes
        if not values:
            continue
        target = ax
        if axis == "right":
            right = right or ax.twinx()
            target = right
        xs = sorted(values)
        minutes = [(x + rate / 2) / 60 for x in xs]
        ys = [values[x] for x in xs]
        label = f"{label} (last {ys[-1]:,.3g})"
        if stacked and axis == "left":
            base = [bottoms.get(x, 0.0) for x in xs]
            tops = [b + y for b, y in zip(base, ys, strict=True)]
            target.fill_between(
                minutes, base, tops, step="mid", alpha=0.55, label=label, color=colour
            )
            bottoms.update(zip(xs, tops, strict=True))
        else:
            style = "--" if axis == "right" else "-"
            target.plot(
                minutes, ys, style, marker="o", markersize=3, linewidth=1.2, label=label,
                color=colour,
            )  # fmt: skip
        drawn += len(xs)
    for label, value, axis in panel.thresholds:
        target = ax
        if axis == "right":
            right = right or ax.twinx()
            target = right
        target.axhline(value, color="#d13212", linestyle=":", linewidth=1.2)
        target.annotate(
            f"{label} > {value:g}",
            xy=(1.0, value),
            xycoords=("axes fraction", "data"),
            xytext=(-2, 2),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=6,
            color="#d13212",
        )
    if not drawn:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="#d13212")
    ax.set_xlabel("minutes (one local cycle = one scheduled run)", fontsize=6.5)
    ax.tick_params(labelsize=6.5)
    if right is not None:
        right.tick_params(labelsize=6.5)
    handles, labels = ax.get_legend_handles_labels()
    if right is not None:
        more = right.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    if handles:
        ax.legend(handles, labels, fontsize=5.5, loc="upper left", ncol=2, framealpha=0.7)
    ax.grid(alpha=0.3)


def _draw_alarms(ax: Any, panel: Panel) -> None:
    ax.axis("off")
    rows = len(panel.alarms) or 1
    for i, result in enumerate(panel.alarms):
        y = 1 - (i + 0.5) / rows
        colour = ALARM_COLOURS[result.state]
        ax.add_patch(_rectangle((0.0, y - 0.4 / rows), 0.2, 0.8 / rows, colour, ax.transAxes))
        ax.text(0.1, y, result.state.replace("INSUFFICIENT_DATA", "NO DATA"), ha="center",
                va="center", fontsize=6, color="white", transform=ax.transAxes)  # fmt: skip
        ax.text(0.23, y, result.alarm, va="center", fontsize=7, transform=ax.transAxes)


def _rectangle(xy: tuple[float, float], width: float, height: float, colour: str, transform: Any):
    from matplotlib.patches import Rectangle

    return Rectangle(xy, width, height, color=colour, transform=transform)


def _figure(panels_: Sequence[Panel], rate: int, scale: float = 0.62):
    """The whole dashboard on one figure, each panel at its grid place."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(p.widget["y"] + p.widget["height"] for p in panels_)
    fig = plt.figure(figsize=(GRID_COLUMNS * scale, rows * scale * 1.05), dpi=110)
    grid = fig.add_gridspec(rows, GRID_COLUMNS, hspace=6, wspace=0)
    fig.subplots_adjust(left=0.0, right=1.0, top=0.98, bottom=0.04)
    for panel in panels_:
        w = panel.widget
        ax = fig.add_subplot(grid[w["y"] : w["y"] + w["height"], w["x"] : w["x"] + w["width"]])
        # Each panel keeps a margin of its own, so a right-hand axis's labels never run into
        # the next panel's left-hand ones.
        box = ax.get_position()
        ax.set_position((box.x0 + 0.035, box.y0, box.width - 0.07, box.height))
        _draw(ax, panel, rate)
    return fig


def _panel_png(panel: Panel, rate: int) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = panel.widget
    fig, ax = plt.subplots(figsize=(w["width"] * 0.62, max(1, w["height"]) * 0.62), dpi=110)
    _draw(ax, panel, rate)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write(
    template: Mapping[str, Any], names: LocalNames, points: Sequence[Datapoint], out_dir: Path
) -> tuple[Path, Path, list[Panel]]:
    """``dashboard.png`` and ``dashboard.html`` in ``out_dir``; also returns the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rate = schedule_rate(template)
    drawn = panels(template, names, points)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "dashboard.png"
    fig = _figure(drawn, rate)
    fig.savefig(png)
    plt.close(fig)
    page = out_dir / "dashboard.html"
    page.write_text(_html(drawn, rate, points))
    return png, page, drawn


def _html(panels_: Sequence[Panel], rate: int, points: Sequence[Datapoint]) -> str:
    cycles = sorted({p.cycle for p in points})
    cells = []
    for panel in panels_:
        w = panel.widget
        place = (
            f"grid-column: {w['x'] + 1} / span {w['width']};"
            f" grid-row: {w['y'] + 1} / span {w['height']};"
        )
        if panel.kind == "text":
            body = f"<h1>{html.escape(panel.title)}</h1>"
        elif panel.kind == "alarm":
            rows = "".join(
                f"<tr><td class='state' style='background:{ALARM_COLOURS[e.state]}'>"
                f"{html.escape(e.state)}</td><td>{html.escape(e.alarm)}</td></tr>"
                for e in panel.alarms
            )
            body = f"<h2>{html.escape(panel.title)}</h2><table>{rows}</table>"
        else:
            data = base64.b64encode(_panel_png(panel, rate)).decode()
            body = f"<img alt='{html.escape(panel.title)}' src='data:image/png;base64,{data}'>"
        cells.append(f"<div class='cell' style='{place}'>{body}</div>")
    span = f"cycles {cycles[0]}-{cycles[-1]}" if cycles else "no cycles"
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Terrific Totes dashboard"
        "</title><style>body{font-family:sans-serif;margin:12px;background:#f2f3f3}"
        ".grid{display:grid;grid-template-columns:repeat(24,1fr);grid-auto-rows:52px;gap:8px}"
        ".cell{background:white;border:1px solid #d5dbdb;padding:4px;overflow:hidden}"
        ".cell img{width:100%;height:100%;object-fit:contain}h1{font-size:18px;margin:4px}"
        "h2{font-size:13px;margin:2px}table{font-size:12px;border-collapse:collapse}"
        "td{padding:2px 6px}td.state{color:white;font-weight:bold;text-align:center}</style>"
        f"</head><body><p>The template's dashboard drawn from a local run ({span}, each"
        f" cycle drawn as one {rate // 60}-minute scheduled run; {len(points)} datapoints)."
        f"</p><div class='grid'>{''.join(cells)}</div></body></html>\n"
    )


# -- the command ------------------------------------------------------------------------------


def names_from_record(record: Mapping[str, Any]) -> LocalNames:
    return LocalNames(
        functions=dict(record["functions"]),
        failure_queue=str(record["failure_queue"]),
        queues=dict(record.get("queues", {})),
        resources=dict(record.get("resources", {})),
        conditions=dict(record.get("conditions", {})),
        region=str(record.get("region", "eu-west-2")),
        account=str(record.get("account", "123456789012")),
    )


def command(args: Any) -> int:
    """``python -m totes dashboard``."""
    from totes.errors import TotesError

    path = Path(args.metrics) if args.metrics else metricstore.default_metrics_path()
    points, recorded = metricstore.read(path)
    if not points:
        raise TotesError(
            f"no metrics in {path}: run `make demo`, or `python -m totes run --endpoint-url ...`"
            " (which records them there), first"
        )
    if args.run:
        points = [p for p in points if p.run == args.run]
    out = Path(args.out) if args.out else path.parent
    png, page, drawn = write(cloudwatch.load_template(), names_from_record(recorded), points, out)
    for panel in drawn:
        if panel.kind == "alarm":
            for result in panel.alarms:
                print(f"  {result.state:<17} {result.alarm}")
    empty = [p.title for p in drawn if p.kind == "metric" and not p.points]
    if empty:
        print("  panels without data: " + "; ".join(empty))
    print(f"dashboard: {png}\n           {page}")
    return 0
