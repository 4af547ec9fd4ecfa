#!/usr/bin/env python3
"""Renders examples/grafana-dashboard.json to a PNG: every panel's own PromQL queries, asked of a
real Prometheus over its HTTP API (query_range), plotted with matplotlib. No Grafana needed;
the picture shows what the dashboard would, from the same queries.

How examples/grafana-dashboard.png was made (a benchmark run, scraped every second):

    # 1. Prometheus (Debian's `prometheus` package) scraping the metrics listener:
    cat > /tmp/prom.yml <<EOF
    global: {scrape_interval: 1s}
    scrape_configs:
      - job_name: sessiond
        static_configs: [{targets: ["127.0.0.1:9959"]}]
    EOF
    prometheus --config.file=/tmp/prom.yml --storage.tsdb.path=/tmp/prom-data \\
        --web.listen-address=127.0.0.1:9090 &
    # 2. The benchmark's servers with a metrics listener (the bench clears SESSIOND_* from
    #    the servers it starts, so a wrapper sets it):
    printf '#!/bin/sh\\nSESSIOND_METRICS_LISTEN=127.0.0.1:9959 exec %s "$@"\\n' \\
        "$PWD/target/release/sessiond" > /tmp/sessiond-metrics && chmod +x /tmp/sessiond-metrics
    START=$(date +%s)
    cargo run --release -p sessiond-bench -- --sessiond /tmp/sessiond-metrics --ratio-only 6
    cargo run --release -p sessiond-bench -- --sessiond /tmp/sessiond-metrics --logins-only 3
    # 3. The picture:
    python3 examples/render-dashboard.py --start "$START" --end "$(date +%s)"

Needs matplotlib (pip install matplotlib).
"""

import argparse
import json
import math
import pathlib
import time
import urllib.parse
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent


def query_range(prom, expr, start, end, step):
    url = prom.rstrip("/") + "/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": expr, "start": start, "end": end, "step": step}
    )
    with urllib.request.urlopen(url, timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise SystemExit(f"query failed: {expr}: {body}")
    return body["data"]["result"]


def legend(fmt, labels):
    out = fmt
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prometheus", default="http://127.0.0.1:9090")
    ap.add_argument("--dashboard", default=str(HERE / "grafana-dashboard.json"))
    ap.add_argument("--out", default=str(HERE / "grafana-dashboard.png"))
    ap.add_argument("--start", type=float, required=True, help="unix time")
    ap.add_argument("--end", type=float, default=time.time(), help="unix time")
    ap.add_argument("--step", type=float, default=2.0, help="seconds between points")
    ap.add_argument(
        "--rate-interval",
        default="10s",
        help="what $__rate_interval stands for (Grafana: 4 × the scrape interval at least)",
    )
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    dash = json.loads(pathlib.Path(args.dashboard).read_text())
    panels = dash["panels"]
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(16, 3.6 * rows), squeeze=False)
    fig.suptitle(
        f"{dash['title']}: {time.strftime('%Y-%m-%d %H:%M', time.gmtime(args.start))} UTC, "
        f"{(args.end - args.start) / 60:.0f} min of a benchmark run",
        fontsize=14,
    )
    units = {
        "s": lambda v, _: f"{v * 1e3:.3g} ms" if v < 1 else f"{v:.3g} s",
        "percentunit": lambda v, _: f"{v * 100:.0f}%",
    }
    for ax, panel in zip(axes.flat, panels):
        ax.set_title(panel["title"], fontsize=10, loc="left")
        ax.grid(True, color="#dddddd", linewidth=0.6)
        drawn = 0
        for t in panel["targets"]:
            expr = t["expr"].replace("$__rate_interval", args.rate_interval)
            for series in query_range(args.prometheus, expr, args.start, args.end, args.step):
                xs = [(float(x) - args.start) / 60 for x, _ in series["values"]]
                ys = [float(y) for _, y in series["values"]]
                ys = [y if math.isfinite(y) else float("nan") for y in ys]
                ax.plot(xs, ys, linewidth=1.2, label=legend(t.get("legendFormat", ""), series["metric"]))
                drawn += 1
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if unit in units:
            ax.yaxis.set_major_formatter(FuncFormatter(units[unit]))
        ax.set_ylim(bottom=0)
        if unit == "percentunit":
            ax.set_ylim(top=1.05)
        ax.set_xlabel("minutes", fontsize=8)
        ax.tick_params(labelsize=8)
        if drawn:
            ax.legend(fontsize=7, loc="upper left", ncol=2, framealpha=0.8)
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="#888888")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(args.out, dpi=72)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
