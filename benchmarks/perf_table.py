"""Turn benchmarks/throughput.py's JSON into the README's performance section (markdown).

    python benchmarks/perf_table.py benchmarks/results/throughput.json > perf.md

Prints the tables and the command that produced the figures; paste the output into the
README's "Performance" section (between its BEGIN/END markers) or pass --readme README.md
to replace that part in place.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

BEGIN, END = "<!-- perf-table:begin -->", "<!-- perf-table:end -->"


def _x(v) -> str:
    return "–" if v is None else f"{v:,.0f}x"


def render(report: dict, provisional: bool = False) -> str:
    m = report["machine"]
    inp = report["inputs"]
    lines = []
    if provisional:
        lines.append("**Provisional figures** (small mode on a shared, busy machine; not the final measurement).\n")
    lines.append(f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
                 f"device {m['device']}{' (' + m['gpu'] + ')' if m.get('gpu') else ''}. "
                 "x realtime = audio seconds / wall seconds.\n")
    hour_label = inp["hour"] if any("hour" in r for r in report["results"]) else "long file"
    lines.append(f"| model | mode | {inp['mp3']}: end to end | decode | resample | log-mel | encoder "
                 f"| folder ({inp['folder']}) | folder / single file | {hour_label}: peak RSS (above `import torch`) |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in report["results"]:
        mp3 = r.get("mp3", {})
        st = mp3.get("stages", {})
        folder = r.get("folder", {})
        hour = r.get("hour", {})
        rss = (f"{hour['peak_rss_mib']:.0f} MiB ({hour['peak_rss_above_import_torch_mib']:+.0f} MiB)"
               if hour else "–")
        lines.append(f"| {r['model']} | {r['mode']} | {_x(mp3.get('x_realtime'))} | {_x(st.get('decode'))} "
                     f"| {_x(st.get('resample'))} | {_x(st.get('log_mel'))} | {_x(st.get('encoder'))} "
                     f"| {_x(folder.get('x_realtime'))} | {folder.get('ratio_to_mp3', '–')} | {rss} |")
    lines.append("")
    modes = {r["mode"]: r["inference"] for r in report["results"]}
    for mode, how in modes.items():
        extra = ""
        if mode == "fast":
            extra = "; compiling before the first batch (not in the figures): " + ", ".join(
                f"{r['model']} {r['warmup_s']:.0f} s" for r in report["results"] if r["mode"] == mode)
        lines.append(f"- `{mode}`: {how}{extra}")
    lines.append("- stages are timed one at a time on the same file (decode: libsndfile + downmix, one thread); "
                 "end to end runs them overlapped (decode threads ahead of the model).")
    if "import_torch_rss_mib" in report:
        lines.append(f"- `import torch` alone: {report['import_torch_rss_mib']:.0f} MiB RSS (this PyTorch build).")
    lines.append("")
    for name, ab in report.get("ablation", {}).items():
        lines.append(f"Optimisations, {name} (before -> after, measured in the same run):\n")
        lines.append("| what | x realtime |")
        lines.append("|---|---|")
        for k, v in ab.get("network_forward_x_realtime", {}).items():
            lines.append(f"| network forward, {k} | {_x(v)} |")
        groups = {"downmix_x_realtime": "downmix", "resample_44k1_to_model_rate_x_realtime": "resample 44.1 kHz",
                  "decode_threads_x_realtime": "single file",
                  "end_to_end_threads_x_realtime": "end to end", "end_to_end_plain_vs_default_x_realtime": "end to end"}
        for group, label in groups.items():
            for k, v in ab.get(group, {}).items():
                lines.append(f"| {label}, {k} | {_x(v)} |")
        lines.append("")
    peer = report.get("peer")
    if peer:
        if "skipped" in peer:
            lines.append(f"Peer comparison: skipped ({peer['skipped']}).\n")
        else:
            t, o = peer["musicnn"], peer["musicembed_pemr_default"]
            lines.append(f"Peer, same folder ({o['files']} files): {t['peer']} {_x(t['x_realtime'])}; musicembed "
                         f"PEMR default {_x(o['x_realtime'])}: **{peer['speedup']}x** faster.\n")
    lines.append("Produced by:\n")
    lines.append("```bash")
    lines.append(report["command"])
    lines.append(f"python benchmarks/perf_table.py {report.get('_json_path', 'THROUGHPUT.json')}")
    lines.append("```")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path)
    ap.add_argument("--readme", type=Path, help=f"replace the text between {BEGIN} and {END} in this file")
    ap.add_argument("--provisional", action="store_true", help="label the figures as provisional")
    args = ap.parse_args()
    report = json.loads(args.json.read_text())
    report["_json_path"] = str(args.json)
    text = render(report, args.provisional)
    if args.readme:
        old = args.readme.read_text()
        if BEGIN not in old or END not in old:
            raise SystemExit(f"{args.readme} has no {BEGIN} ... {END} markers")
        new = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: f"{BEGIN}\n{text}{END}", old, flags=re.S)
        args.readme.write_text(new)
    print(text, end="")


if __name__ == "__main__":
    main()
