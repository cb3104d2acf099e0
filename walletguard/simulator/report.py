"""How a simulation reads on a terminal: a progress line while it plays, then tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from walletguard.kit.money import format_yuan
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
