"""Population simulation: attack money stopped against legitimate actions bothered (SPEC C13, §3).

    .venv/bin/python bench/bench_population.py [--holders 1000] [--days 30] [--seed 0]
        [--profiles vulnerable,protected] [--admin-url URL] [--json FILE]

Generates the population once from the seed (N benign holders living D days, mixed with attack
campaigns from the scenario library) and plays it in each profile on a fresh in-process instance
with a manual clock — SQLite by default, a fresh PostgreSQL database with ``--admin-url`` —
then prints the population table (money attacked, lost, share stopped; legitimate actions and
the share challenged, held, blocked, failed), the wall time of each profile and the actions per
second. SPEC §3 target, in ``protected``: ≥ 99.5 % of attack money stopped, ≤ 2 % of legitimate
actions challenged and ≤ 0.1 % blocked. The figures measure whatever controls exist in the tree
the bench runs on. Scenario worlds use cheap Argon2 (m=8 MiB, t=1): the wall time is the rest of
the path (HTTP in process, risk decision, ledger, audit, alerts).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from walletguard.simulator import report as simulation_report
from walletguard.simulator import runner
from walletguard.simulator.population import (
    PopulationReport,
    PopulationSpec,
    ProfileResult,
    generate,
    measure,
)


class _StepTimer:
    """The time between one step's report and the next is that step: the action through the
    API, the runner's loss bookkeeping and the alert delivery after it."""

    def __init__(
        self,
        profile: str,
        total: int,
        spent: dict[str, float],
        counts: Counter[str],
        advance: Callable[[str, int, int], None],
    ) -> None:
        self.profile, self.total, self.spent, self.counts = profile, total, spent, counts
        self.advance = advance
        self.last = time.perf_counter()
        self.done = 0

    def played(self, step: runner.StepReport) -> None:
        now = time.perf_counter()
        self.spent[step.do] = self.spent.get(step.do, 0.0) + now - self.last
        self.counts[step.do] += 1
        self.last = now
        self.done += 1
        self.advance(self.profile, self.done, self.total)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--holders", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profiles", default="vulnerable,protected")
    parser.add_argument("--admin-url", default=None, help="PostgreSQL admin URL (default SQLite)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()

    console = Console(stderr=True)
    out = Console(soft_wrap=True)
    spec = PopulationSpec(args.holders, args.days, args.seed)
    began = time.perf_counter()
    population = generate(spec)
    steps = len(population.scenario.steps)
    console.print(
        f"generated {steps} steps (actions and waits) in {time.perf_counter() - began:.1f} s"
    )
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    results: dict[str, ProfileResult] = {}
    # Wall time per action, to say what dominates.
    spent: dict[str, dict[str, float]] = {}
    counts: dict[str, Counter[str]] = {}
    with simulation_report.population_progress(console, enabled=sys.stderr.isatty()) as advance:
        for profile in profiles:
            spent[profile], counts[profile] = {}, Counter()
            timer = _StepTimer(profile, steps, spent[profile], counts[profile], advance)
            started = time.perf_counter()
            played = runner.run(
                population.scenario,
                profile=profile,
                on_step=timer.played,
                postgres_admin_url=args.admin_url,
            )
            results[profile] = measure(population, played)
            results[profile].seconds = time.perf_counter() - started
    report = PopulationReport(spec, len(population.campaigns), results)
    total = time.perf_counter() - began
    simulation_report.print_population(out, report)
    for name, played_result in results.items():
        out.print(
            f"{name}: {played_result.actions} actions in {played_result.seconds:.1f} s "
            f"({played_result.actions / played_result.seconds:.1f} actions/s)",
            highlight=False,
        )
        table = Table(title=f"where the time goes — {name}")
        for column in ("step", "count", "seconds", "share", "ms each"):
            table.add_column(column, justify="right" if column != "step" else "left")
        whole = sum(spent[name].values())
        for do, seconds in sorted(spent[name].items(), key=lambda item: -item[1]):
            table.add_row(
                do,
                str(counts[name][do]),
                f"{seconds:.1f}",
                f"{seconds / whole:.1%}",
                f"{1000 * seconds / counts[name][do]:.1f}",
            )
        out.print(table)
    database = "PostgreSQL" if args.admin_url else "SQLite"
    out.print(f"total wall time {total:.1f} s on {database}", highlight=False)
    if args.json:
        args.json.write_text(json.dumps(report.as_json(), ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
