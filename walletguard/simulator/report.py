"""How a simulation reads on a terminal: a progress line while it plays, then tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from walletguard.kit.money import format_yuan
from walletguard.simulator.population import PopulationReport
from walletguard.simulator.runner import Ablation, RunReport

OUTCOME_STYLES = {
    "ok": "green",
    "challenged": "yellow",
    "held": "yellow",
    "blocked": "red",
    "failed": "red",
}


@contextmanager
def progress(console: Console, *, enabled: bool) -> Iterator[Callable[[str], None]]:
    """Yield ``advance(label)``; shows a spinner with the step count on ``console``."""
    if not enabled:
        yield lambda _label: None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed} done"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("simulating", total=None)

        def advance(label: str) -> None:
            bar.update(task, advance=1, description=f"simulating: {label}")

        yield advance


def print_run(console: Console, report: RunReport) -> None:
    title = f"{report.scenario} — profile {report.profile}"
    if report.disabled_controls:
        title += f" (off: {', '.join(report.disabled_controls)})"
    table = Table(title=title, show_lines=False)
    for column in ("#", "actor", "as", "do", "outcome", "controls", "detail"):
        table.add_column(column, overflow="fold")
    for step in report.steps:
        style = OUTCOME_STYLES.get(step.outcome, "")
        table.add_row(
            str(step.index),
            step.actor or "",
            step.as_ or "",
            step.do,
            f"[{style}]{step.outcome}[/]" if style else step.outcome,
            ", ".join(step.controls),
            step.detail,
        )
    console.print(table)
    for actor, fen in report.loss_fen.items():
        console.print(f"loss[{actor}] = {format_yuan(fen)} yuan", highlight=False, markup=False)
    for actor, count in report.alerts.items():
        console.print(f"alerts delivered to {actor}: {count}", highlight=False, markup=False)
    detect = report.time_to_detect_s
    console.print(
        "time to detect: " + (f"{detect:.0f} s" if detect is not None else "not detected"),
        highlight=False,
        markup=False,
    )
    for actor, at in report.frozen_at.items():
        console.print(f"{actor}'s transactions closed at {at}", highlight=False, markup=False)
    for actor, case in report.cases.items():
        by_card = ", ".join(f"{card} {amount}" for card, amount in case["loss_by_card"].items())
        console.print(
            f"{actor}'s case {case['reference']} ({case['case_id']}): loss {case['loss']}"
            + (f" = {by_card}" if by_card else ""),
            highlight=False,
            markup=False,
        )
    for path in report.evidence:
        console.print(
            f"evidence package: {path}  (check it: walletguard evidence verify {path})",
            highlight=False,
            markup=False,
        )


def print_ablation(console: Console, ablation: Ablation) -> None:
    base = ablation.baseline
    console.print(
        f"{base.scenario} — profile {base.profile}: loss with every control on "
        f"{format_yuan(base.total_loss_fen)} yuan",
        highlight=False,
        markup=False,
    )
    table = Table(title="one control at a time")
    table.add_column("control", no_wrap=True)
    table.add_column("loss with it off alone", justify="right")
    table.add_column("loss with it on alone", justify="right")
    table.add_column("stops the attack alone")
    for name in ablation.without:
        off = ablation.without[name].total_loss_fen
        alone = ablation.alone[name].total_loss_fen
        table.add_row(
            name,
            format_yuan(off),
            format_yuan(alone),
            "[green]yes[/]" if alone == 0 else "no",
        )
    console.print(table)
    stoppers = ablation.stops_alone()
    console.print(
        "controls that alone would still have stopped the loss: "
        + (", ".join(stoppers) if stoppers else "none"),
        highlight=False,
        markup=False,
    )


@contextmanager
def population_progress(
    console: Console, *, enabled: bool
) -> Iterator[Callable[[str, int, int], None]]:
    """Yield ``advance(profile, done, total)``; shows a bar per profile with steps and ETA."""
    if not enabled:
        yield lambda _profile, _done, _total: None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def advance(profile: str, done: int, total: int) -> None:
            if profile not in tasks:
                tasks[profile] = bar.add_task(f"population, {profile}", total=total)
            bar.update(tasks[profile], completed=done)

        yield advance


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value:.2%}"


def print_population(console: Console, report: PopulationReport) -> None:
    spec = report.spec
    console.print(
        f"population: {spec.holders} holders, {spec.days} days, seed {spec.seed}, "
        f"{report.campaigns} attack campaigns from the scenario library",
        highlight=False,
        markup=False,
    )
    profiles = list(report.results)
    table = Table(title="protection against friction")
    table.add_column("", no_wrap=True)
    for name in profiles:
        table.add_column(name, justify="right")
    results = [report.results[name] for name in profiles]

    def row(label: str, values: list[str]) -> None:
        table.add_row(label, *values)

    row("actions played", [str(r.actions) for r in results])
    row("money attacked (yuan)", [format_yuan(r.attacked_fen) for r in results])
    row("money lost (yuan)", [format_yuan(r.lost_fen) for r in results])
    row("attack money stopped", [_share(r.stopped_share) for r in results])
    row("legitimate actions", [str(r.legitimate_total) for r in results])
    for outcome in ("challenged", "held", "blocked", "failed"):
        row(
            f"  {outcome}",
            [f"{_share(r.share(outcome))} ({r.legitimate[outcome]})" for r in results],
        )
    row("wall time (s)", [f"{r.seconds:.1f}" for r in results])
    console.print(table)
    for result in results:
        bothered = {
            kind: counts
            for kind, counts in sorted(result.legitimate_by_kind.items())
            if sum(counts.values()) != counts["ok"]
        }
        if not bothered:
            continue
        detail = Table(title=f"legitimate actions not ok — {result.profile}")
        detail.add_column("life event: action", no_wrap=True)
        for outcome in ("ok", "challenged", "held", "blocked", "failed"):
            detail.add_column(outcome, justify="right")
        for kind, counts in bothered.items():
            detail.add_row(
                kind, *(str(counts[o]) for o in ("ok", "challenged", "held", "blocked", "failed"))
            )
        console.print(detail)
