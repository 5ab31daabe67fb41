"""Turning rows into the console table, bench/RESULTS.md and the PNG chart."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

from .stats import Measurement, Row, Target


def fmt_rate(rate: float | None) -> str:
    return "-" if not rate else f"{rate:.1f}" if rate < 10 else f"{rate:,.0f}"


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1000
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 10 else f"{ms:.0f}"


def fmt_ratio(row: Row) -> str:
    if row.ratio is not None and (row.scenario == "peers" or (row.scenario == "workflows" and row.baseline == "bgjob")):
        return f"bgjob/peer {row.ratio:.2f}"
    return f"{row.ratio:.2f}x {row.baseline}" if row.ratio is not None else ""


def _spread(m: Measurement) -> str:
    lo, hi = m.extra.get("rate_min"), m.extra.get("rate_max")
    return f"{lo:,.0f}-{hi:,.0f}" if lo and hi else ""


def _memory(m: Measurement) -> str:
    idle, after = m.extra.get("idle_rss_mb"), m.extra.get("rss_mb")
    parts = []
    if m.extra.get("cpu_us_per_job"):
        load = m.extra.get("cpu_load")
        parts.append(
            f"worker CPU {m.extra['cpu_us_per_job']:.0f} µs/job" + (f" ({load:.0%} of a core)" if load else "")
        )
    if idle:
        parts.append(f"idle {idle:.0f} MiB")
    if after:
        parts.append(f"after {after:.0f} MiB")
    return ", ".join(parts)


def markdown_table(header: Sequence[str], lines: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    align = ["---:" if i in right else "---" for i in range(len(header))]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines]
    return "\n".join(out)


def scenario_table(rows: Sequence[Row]) -> str:
    """One scenario's rows: case, system, jobs/s (with the spread over repetitions), latencies, ratio, notes."""
    header = ["case", "system", "jobs/s", "spread", "p50 ms", "p99 ms", "max ms", "ratio", "note"]
    lines = []
    for r in rows:
        note = "; ".join(x for x in (r.note, _memory(r.m)) if x)
        lines.append(
            [
                r.case,
                f"**{r.system}**" if r.system == "bgjob" else r.system,
                fmt_rate(r.m.rate),
                _spread(r.m),
                fmt_ms(r.m.p50),
                fmt_ms(r.m.p99),
                fmt_ms(r.m.max),
                fmt_ratio(r),
                note,
            ]
        )
    return markdown_table(header, lines, right=(2, 4, 5, 6))


def peers_table(rows: Sequence[Row]) -> str:
    """The peers, one line each: enqueue and process rates, paced latency, memory, and bgjob/peer."""
    from .scenarios.peers import BULK, ENQ1, ENQ8, PACED, PROCESS

    by: dict[str, dict[str, Row]] = {}
    for r in rows:
        by.setdefault(r.system, {})[r.case] = r
    header = [
        "system",
        "enqueue 1 thread jobs/s",
        "send p50 / p99 ms",
        "enqueue 8 threads jobs/s",
        "bulk jobs/s",
        "process jobs/s (1 process, 16 threads)",
        "bgjob/peer process",
        "worker CPU µs/job",
        "enqueue-to-start p50 / p99 ms (paced)",
        "worker RSS idle / after MiB",
    ]
    lines = []
    for system, cases in by.items():
        if "skipped" in cases:
            lines.append([system, f"skipped: {cases['skipped'].note}", *[""] * 8])
            continue

        def get(case: str, cases: dict[str, Row] = cases) -> Measurement:
            return cases[case].m if case in cases else Measurement()

        paced = get(PACED)
        ratio = cases[PROCESS].ratio if PROCESS in cases else None
        lines.append(
            [
                f"**{system}**" if system == "bgjob" else system,
                fmt_rate(get(ENQ1).rate),
                f"{fmt_ms(get(ENQ1).p50)} / {fmt_ms(get(ENQ1).p99)}",
                fmt_rate(get(ENQ8).rate),
                fmt_rate(get(BULK).rate),
                fmt_rate(get(PROCESS).rate),
                f"{ratio:.1f}x" if ratio else "",
                f"{get(PROCESS).extra.get('cpu_us_per_job', 0):,.0f}",
                f"{fmt_ms(paced.p50)} / {fmt_ms(paced.p99)} (at {paced.rate or 0:.0f}/s)",
                f"{paced.extra.get('idle_rss_mb', 0):.0f} / {paced.extra.get('rss_mb', 0):.0f}",
            ]
        )
    return markdown_table(header, lines, right=(1, 3, 4, 5, 6, 7))


def targets_table(targets: Sequence[Target]) -> str:
    """The goals: "goal N" rows are issue 21's goal N, "kept" rows older goals still checked; each met or missed
    (or for information), with the ratio of this run."""
    mark = {True: "met", False: "**missed**", None: "(for information)"}
    lines = [[t.name, t.goal, t.value, mark[t.met]] for t in targets]
    table = markdown_table(["target", "goal", "this run", ""], lines)
    return (
        "\"goal N\" rows are issue 21's goals (performance round 2), \"kept\" rows older goals still checked; "
        "ratios are of figures measured in this run.\n\n" + table
    )


def console(rows: Sequence[Row], targets: Sequence[Target]) -> str:
    """A plain-text table for the terminal."""
    out = []
    scenario = None
    for r in rows:
        if r.scenario != scenario:
            scenario = r.scenario
            out.append(f"\n== {scenario} ==")
            out.append(f"{'case':58} {'system':16} {'jobs/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  ratio")
        note = "; ".join(x for x in (r.note, _memory(r.m)) if x)
        out.append(
            f"{r.case[:58]:58} {r.system:16} {fmt_rate(r.m.rate):>9} {fmt_ms(r.m.p50):>8} {fmt_ms(r.m.p99):>8} "
            f"{fmt_ms(r.m.max):>8}  {fmt_ratio(r)}{'  ' + note if note else ''}"
        )
    if targets:
        out.append("\n== targets (goal N: issue 21's goal N; kept: older goals) ==")
        name_w = max(len(t.name) for t in targets)
        goal_w = min(64, max(len(t.goal) for t in targets))
        value_w = max(len(t.value) for t in targets)
        for t in targets:
            mark = "met" if t.met else "MISSED" if t.met is False else ""
            out.append(f"{t.name:{name_w}}  {t.goal[:goal_w]:{goal_w}}  {t.value:{value_w}}  {mark}")
    return "\n".join(out)


def results_markdown(
    rows: Sequence[Row],
    targets: Sequence[Target],
    meta: dict[str, Any],
    configs: dict[str, str],
    notes: str,
    chart: str | None,
) -> str:
    """The whole RESULTS.md."""
    from .scenarios import SCENARIOS

    titles = {
        "enqueue": "1. Enqueue",
        "process": "2. Process (drain a pre-filled queue)",
        "end to end": "3. End to end",
        "delay": "4. Delay accuracy (lateness)",
        "backlog": "5. Backlog scale",
        "memory": "6. Memory",
        "peers": "7. Peers",
    }
    parts = [
        "# bgjob benchmark results",
        "",
        f"Generated by `{meta['command']}` on {meta['date']} in {meta['duration']}. Machine: {meta['machine']}. "
        f"Versions: {meta['versions']}.",
        "",
        "Every figure is the median of the repetitions (the spread column shows the slowest and fastest). These "
        "2-core machines are shared and differ in speed, so single figures are noisy and do not carry across "
        "machines; ratios between systems measured minutes apart in the same run are the robust part (the machine "
        "speed row of the Targets table gives the scale). Latencies are wall-clock: "
        "per call for enqueueing, and from the producer's `time.time()` in the job's arg to the handler's start "
        "for end to end and delay.",
        "",
    ]
    if chart:
        parts += [f"![throughput and latency]({chart})", ""]
    parts += ["## Targets", "", targets_table(targets), ""]
    order = [s if s != "e2e" else "end to end" for s in SCENARIOS]
    for scenario in order:
        chosen = [r for r in rows if r.scenario == scenario]
        if not chosen:
            continue
        parts += [f"## {titles.get(scenario, scenario)}", ""]
        parts += [peers_table(chosen) if scenario == "peers" else scenario_table(chosen), ""]
    parts += [
        "## How each system was configured",
        "",
        markdown_table(["system", "configuration"], [[k, v] for k, v in configs.items()]),
        "",
    ]
    if notes:
        parts += [notes.strip(), ""]
    parts += [
        "## Reproduce",
        "",
        "```sh",
        'pip install -e ".[dev,bench]"',
        "python -m bench            # everything, ~25 minutes; writes bench/RESULTS.md and bench/results.png",
        "python -m bench --quick    # ~5-10 minutes, small counts, one repetition; writes bench/out/",
        "python -m bench --rev HEAD # measure bgjob as committed, not the working tree",
        "python -m bench --only peers --peers bgjob,celery-redis,huey-redis",
        "python -m bench --profile  # py-spy profiles of send_job and of a worker, and the end-to-end latency",
        "                           # breakdown at 500 jobs/s, into bench/out/profile/",
        "python -m bench.breakdown  # that breakdown alone: send, PubAck, delivery, handler start",
        "python -m bench.ack_cost   # CPU per ack: Msg.ack one at a time against the worker's batched ack",
        "```",
        "",
        f"Plan of this run: `{meta['plan']}`.",
        "",
    ]
    return "\n".join(parts)


def _shorten(label: str, width: int = 60) -> str:
    label = label.replace(" + ack loop, bgjob's 5 headers on each message", "+ack, bgjob's 5 headers")
    label = label.replace("js.publish via run_coroutine_threadsafe", "js.publish from threads")
    return label if len(label) <= width else label[: width - 1] + "…"


def chart(path: pathlib.Path, rows: Sequence[Row]) -> None:
    """Throughput bars (enqueue, process) and latency bars (p50 and p99, log scale) in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def colour(system: str) -> str:
        return "#1f77b4" if system == "bgjob" else "#7f7f7f" if system.startswith("nats-py") else "#ff7f0e"

    def bars(ax: Any, items: list[tuple[str, str, float]], title: str, xlabel: str, log: bool = False) -> None:
        labels = [_shorten(f"{system}: {case}") for system, case, _ in items]
        ax.barh(range(len(items)), [v for *_, v in items], color=[colour(s) for s, *_ in items])
        ax.set_yticks(range(len(items)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        if log:
            ax.set_xscale("log")
        for i, (*_, v) in enumerate(items):
            ax.text(v, i, f" {v:,.0f}" if not log else f" {v:.2f}", va="center", fontsize=6)

    enqueue = [(r.system, r.case, r.m.rate) for r in rows if r.scenario == "enqueue" and r.m.rate]
    process = [(r.system, r.case, r.m.rate) for r in rows if r.scenario == "process" and r.m.rate]
    process += [
        (r.system, "process, 16 threads", r.m.rate)
        for r in rows
        if r.scenario == "peers" and r.case.startswith("process") and r.m.rate
    ]
    latency: list[tuple[str, str, float]] = []
    for r in rows:
        if r.m.p50 is None:
            continue
        if r.scenario == "enqueue" and "1 thread" in r.case:
            case = "enqueue call, 1 thread"
        elif r.scenario == "end to end":
            case = "enqueue-to-start, flat out" if "flat out" in r.case else f"enqueue-to-start, {r.m.rate:.0f}/s"
        elif r.scenario == "peers" and r.case.startswith("end to end"):
            case = f"enqueue-to-start, {r.m.rate or 0:.0f}/s"
        else:
            continue
        latency.append((r.system, f"{case} p50", r.m.p50 * 1000))
        latency.append((r.system, f"{case} p99", (r.m.p99 or 0) * 1000))
    panels = [
        (enqueue, "Enqueue throughput (blue: bgjob, grey: raw nats-py, orange: peers)", "jobs/s", False),
        (process, "Process throughput, one worker process, no-op job", "jobs/s", False),
        ([item for item in latency if item[2] > 0], "Latency (ms, log scale)", "ms", True),
    ]
    panels = [p for p in panels if p[0]]
    if not panels:
        return
    height = 0.22 * sum(len(p[0]) for p in panels) + 1.2 * len(panels)
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(11, height),
        squeeze=False,
        gridspec_kw={"height_ratios": [len(p[0]) + 2 for p in panels]},
    )
    for ax, (items, title, xlabel, log) in zip(axes[:, 0], panels, strict=True):
        bars(ax, items, title, xlabel, log)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
