#!/usr/bin/env python3
"""Turns vs_redis.sh's CSVs into results.md (tables with ratios) and results.svg (bars)."""
import csv
import sys
from collections import defaultdict
from pathlib import Path

out = Path(sys.argv[1])
runs = list(csv.DictReader(open(out / "runs.csv")))
mem = list(csv.DictReader(open(out / "memory_restart.csv")))

rps = {}
rows = []
for r in runs:
    key = (r["sync"], int(r["pipeline"]), r["test"])
    rps.setdefault(key, {})[r["engine"]] = r
    if key not in rows:
        rows.append(key)

sync_name = {"always": "ringcask --sync always vs Redis appendfsync always",
             "everysec": "ringcask --sync interval:1000 vs Redis appendfsync everysec"}
md = ["# ringcask serve vs redis-server, redis-benchmark side by side", "",
      "`server/bench/vs_redis.sh`: `redis-benchmark -t set,get,incr,mset -n N -r 1000000 -d 100 -c 50 -P p`,",
      "each engine on a fresh directory, one after the other on the same machine.", ""]
for sync in ("always", "everysec"):
    md += [f"## {sync_name[sync]}", "",
           "| -P | test | ringcask req/s | Redis req/s | ratio | ringcask p50/p99 ms | Redis p50/p99 ms |",
           "|---|---|---|---|---|---|---|"]
    for key in rows:
        if key[0] != sync:
            continue
        e = rps[key]
        if "ringcask" not in e or "redis" not in e:
            continue
        a, b = float(e["ringcask"]["rps"]), float(e["redis"]["rps"])
        md.append(f"| {key[1]} | {key[2]} | {a:,.0f} | {b:,.0f} | {a / b:.2f}x | "
                  f"{e['ringcask']['p50_ms']} / {e['ringcask']['p99_ms']} | {e['redis']['p50_ms']} / {e['redis']['p99_ms']} |")
    md.append("")
md += ["## Memory and restart", "",
       "| engine | keys | RSS growth per key (bytes) | restart after SHUTDOWN (ms) | restart after SIGKILL (ms) |",
       "|---|---|---|---|---|"]
for m in mem:
    per_key = (int(m["rss_after_kib"]) - int(m["rss_before_kib"])) * 1024 / int(m["keys"])
    md.append(f"| {m['engine']} | {int(m['keys']):,} | {per_key:.0f} | {m['restart_clean_ms']} | {m['restart_killed_ms']} |")
(out / "results.md").write_text("\n".join(md) + "\n")

# SVG: one row per (sync, -P, test), two bars (ringcask, Redis), scaled per row group.
bar_h, gap, left, width = 12, 10, 330, 520
labels = [k for k in rows if "ringcask" in rps[k] and "redis" in rps[k]]
top = max([float(rps[k][e]["rps"]) for k in labels for e in ("ringcask", "redis")] or [1])
height = 40 + len(labels) * (2 * bar_h + gap) + 30
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 120}" height="{height}" font-family="sans-serif" font-size="11">',
       '<text x="10" y="20" font-size="14">redis-benchmark requests/s: ringcask (blue) vs Redis (grey), -d 100 -c 50</text>']
y = 40
colors = {"ringcask": "#2b6cb0", "redis": "#888"}
for k in labels:
    sync = "always" if k[0] == "always" else "everysec/interval:1000"
    svg.append(f'<text x="10" y="{y + bar_h + 4}">{sync}, -P {k[1]}, {k[2]}</text>')
    for i, e in enumerate(("ringcask", "redis")):
        v = float(rps[k][e]["rps"])
        w = max(1, int(width * v / top))
        yy = y + i * bar_h
        svg.append(f'<rect x="{left}" y="{yy}" width="{w}" height="{bar_h - 2}" fill="{colors[e]}"/>')
        svg.append(f'<text x="{left + w + 4}" y="{yy + bar_h - 3}">{v:,.0f}</text>')
    y += 2 * bar_h + gap
svg.append("</svg>")
(out / "results.svg").write_text("\n".join(svg) + "\n")
