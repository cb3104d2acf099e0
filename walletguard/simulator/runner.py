"""Play a scenario against a fresh in-process walletguard and report what each control did.

``run`` plays once; ``ablate`` plays again with each control switched off alone and with each
control on alone, to show which controls alone would still have stopped the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from walletguard.kit.controls import PROFILES
from walletguard.kit.money import format_yuan_plain
from walletguard.simulator import actions, money
from walletguard.simulator.actions import Ctx, Outcome, StepStopped
from walletguard.simulator.scenario import Scenario
from walletguard.simulator.world import World

ACTIONS: dict[str, Callable[[Ctx], Outcome]] = {
    "register": actions.do_register,
    "login": actions.do_login,
    "step_up": actions.do_step_up,
    "approve_device": actions.do_approve_device,
    "enable_sync": actions.do_enable_sync,
    "disable_sync": actions.do_disable_sync,
    "read_messages": actions.do_read_messages,
    "receive_sms": actions.do_receive_sms,
    "change_password": actions.do_change_password,
    "reset_payment_password": actions.do_reset_payment_password,
    "report_not_me": actions.do_report_not_me,
    "start_recovery": actions.do_start_recovery,
    "cancel_recovery": actions.do_cancel_recovery,
    "sim_swap": actions.do_sim_swap,
    "wait": actions.do_wait,
    **money.ACTIONS,
}


@dataclass
class StepReport:
    index: int
    actor: str | None
    do: str
    as_: str | None
    at: datetime
    outcome: str
    controls: list[str]
    detail: str
    moved_fen: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "actor": self.actor,
            "do": self.do,
            "as": self.as_,
            "at": self.at.isoformat(),
            "outcome": self.outcome,
            "controls": self.controls,
            "detail": self.detail,
        }


@dataclass
class RunReport:
    scenario: str
    profile: str
    disabled_controls: list[str]
    loss_fen: dict[str, int]
    alerts: dict[str, int]
    time_to_detect_s: float | None
    steps: list[StepReport] = field(default_factory=list)
    frozen_at: dict[str, str] = field(default_factory=dict)
    cases: dict[str, dict[str, Any]] = field(default_factory=dict)
    evidence: list[str] = field(default_factory=list)
    expectations_failed: list[str] = field(default_factory=list)

    @property
    def total_loss_fen(self) -> int:
        return sum(self.loss_fen.values())

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "profile": self.profile,
            "disabled_controls": self.disabled_controls,
            "loss": {actor: format_yuan_plain(fen) for actor, fen in self.loss_fen.items()},
            "alerts": self.alerts,
            "time_to_detect_s": self.time_to_detect_s,
            "frozen_at": self.frozen_at,
            "case_id": {actor: case["case_id"] for actor, case in self.cases.items()},
            "cases": self.cases,
            "evidence": self.evidence,
            "steps": [step.as_json() for step in self.steps],
            "expectations_failed": self.expectations_failed,
        }


def run(
    scenario: Scenario,
    *,
    profile: str | None = None,
    disabled: Iterable[str] = (),
    on_step: Callable[[StepReport], None] | None = None,
    postgres_admin_url: str | None = None,
    evidence_dir: Path | None = None,
) -> RunReport:
    """Play the scenario once. By default against a fresh SQLite instance; with
    ``postgres_admin_url`` against a fresh PostgreSQL database created on that server."""
    chosen = profile or scenario.profile
    disabled = list(disabled)
    world = World.create(scenario, chosen, disabled, postgres_admin_url=postgres_admin_url)
    try:
        money.open_bank_accounts(world)
        loss = {name: 0 for name in scenario.actors}
        first_attack: datetime | None = None
        reports: list[StepReport] = []
        placed: dict[tuple[str, str], str] = {}
        for index, step in enumerate(scenario.steps, start=1):
            do = step.do or "wait"
            if step.wait is not None or do == "wait":
                ctx = Ctx(world, step, index)
                result = actions.do_wait(ctx)
                report = StepReport(
                    index,
                    step.actor,
                    "wait",
                    None,
                    world.clock.now(),
                    result.outcome,
                    [],
                    result.detail,
                )
            else:
                ctx = Ctx(world, step, index)
                owner = step.target
                attacking = step.actor != owner
                if attacking and first_attack is None:
                    first_attack = world.clock.now()
                _place_device(ctx, placed)
                before = money.holdings_fen(world, owner)
                try:
                    result = ACTIONS[do](ctx)
                except StepStopped as stopped:
                    result = stopped.result
                after = money.holdings_fen(world, owner)
                moved = max(0, before - after)
                if attacking:
                    loss[owner] += moved
                report = StepReport(
                    index,
                    step.actor,
                    do,
                    step.as_,
                    world.clock.now(),
                    result.outcome,
                    sorted(set(result.controls)),
                    result.detail,
                    moved,
                )
            money.after_step(world)
            reports.append(report)
            if on_step:
                on_step(report)
        alerts = {name: money.alerts_delivered(world, name) for name in scenario.actors}
        detect = money.first_alert_after(world, first_attack) if first_attack else None
        result_report = RunReport(
            scenario=scenario.name,
            profile=chosen,
            disabled_controls=disabled,
            loss_fen={name: fen for name, fen in loss.items() if _is_holder(scenario, name)},
            alerts={name: n for name, n in alerts.items() if _is_holder(scenario, name)},
            time_to_detect_s=(detect - first_attack).total_seconds()
            if detect and first_attack
            else None,
            steps=reports,
            frozen_at=money.frozen_at(world),
            cases=money.case_reports(world),
        )
        if evidence_dir is not None:
            result_report.evidence = [str(p) for p in money.export_evidence(world, evidence_dir)]
        result_report.expectations_failed = _check(scenario, result_report)
        return result_report
    finally:
        world.close()


def _place_device(ctx: Ctx, placed: dict[tuple[str, str], str]) -> None:
    """A step's optional ``ip`` moves the device there (travel); it stays until moved again."""
    ip = ctx.extra.get("ip")
    if ip is None:
        return
    key = (ctx.device_holder, ctx.device)
    if placed.get(key, ctx.world.device(*key).ip) == str(ip):
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    previous = ctx.world.clients.pop(key, None)
    if previous is not None:
        previous.close()
    ctx.world.clients[key] = TestClient(
        ctx.world.app, client=(str(ip), 40000), headers={"user-agent": f"sim/{key[0]}/{key[1]}"}
    )
    placed[key] = str(ip)


def _is_holder(scenario: Scenario, name: str) -> bool:
    return scenario.actors[name].phone is not None


def _check(scenario: Scenario, report: RunReport) -> list[str]:
    expectation = scenario.expect.get(report.profile)
    if expectation is None or report.disabled_controls:
        return []
    failed = []
    for actor, expected in expectation.loss.items():
        from walletguard.kit.money import parse_yuan

        want = parse_yuan(expected, allow_zero=True)
        got = report.loss_fen.get(actor, 0)
        if want != got:
            failed.append(f"loss[{actor}] is {format_yuan_plain(got)}, expected {expected}")
    for actor, minimum in expectation.min_alerts.items():
        if report.alerts.get(actor, 0) < minimum:
            failed.append(f"alerts[{actor}] is {report.alerts.get(actor, 0)}, expected ≥ {minimum}")
    return failed


@dataclass
class Ablation:
    baseline: RunReport
    without: dict[str, RunReport]
    alone: dict[str, RunReport]

    def stops_alone(self) -> list[str]:
        return [name for name, report in self.alone.items() if report.total_loss_fen == 0]

    def as_json(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline.as_json(),
            "without": {
                name: {
                    "loss": format_yuan_plain(r.total_loss_fen),
                    "stopped_by": sorted({c for s in r.steps for c in s.controls}),
                }
                for name, r in self.without.items()
            },
            "alone": {
                name: {"loss": format_yuan_plain(r.total_loss_fen)}
                for name, r in self.alone.items()
            },
            "controls_that_alone_stop_the_loss": self.stops_alone(),
        }


def ablate(
    scenario: Scenario, *, profile: str | None = None, progress: Callable[[str], None] | None = None
) -> Ablation:
    chosen = profile or scenario.profile
    controls = PROFILES[chosen].enabled()
    baseline = run(scenario, profile=chosen)
    without: dict[str, RunReport] = {}
    alone: dict[str, RunReport] = {}
    for name in controls:
        if progress:
            progress(f"without {name}")
        without[name] = run(scenario, profile=chosen, disabled=[name])
    for name in controls:
        if progress:
            progress(f"{name} alone")
        alone[name] = run(scenario, profile=chosen, disabled=[c for c in controls if c != name])
    return Ablation(baseline, without, alone)
