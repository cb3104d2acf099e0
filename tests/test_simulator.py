"""The attack simulator: the 88,130-yuan case, the scenario vocabulary, ablation, the CLI.

Runs play against a fresh instance of their own: a SQLite file, or — when the suite runs on
PostgreSQL — a fresh PostgreSQL database on the same server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import PG_URL
from walletguard.incidents.evidence import verify_package
from walletguard.kit.controls import PROFILES
from walletguard.simulator import runner
from walletguard.simulator.scenario import ACTIONS, ScenarioError, load_scenario

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
SEED = SCENARIOS / "seed-000-sms-sync-drain.yaml"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "scenarios.md"


def play(path: Path, profile: str, disabled: list[str] | None = None) -> runner.RunReport:
    return runner.run(
        load_scenario(path), profile=profile, disabled=disabled or [], postgres_admin_url=PG_URL
    )


def test_the_seed_case_drains_every_card_in_the_vulnerable_profile() -> None:
    report = play(SEED, "vulnerable")
    assert report.loss_fen == {"victim": 8_813_000}
    pays = [s for s in report.steps if s.do == "pay"]
    assert [s.moved_fen for s in pays] == [5_000_000, 3_000_000, 813_000]
    assert all(s.outcome == "ok" for s in report.steps if s.as_), [s.detail for s in report.steps]
    assert report.expectations_failed == []


def test_the_victims_report_opens_a_case_with_the_loss_per_card_and_a_verifiable_package(
    tmp_path: Path,
) -> None:
    report = runner.run(
        load_scenario(SEED),
        profile="vulnerable",
        postgres_admin_url=PG_URL,
        evidence_dir=tmp_path,
    )
    case = report.cases["victim"]
    assert case["loss"] == "88130.00"
    assert case["loss_by_card"] == {"6789": "50000.00", "4323": "30000.00", "5673": "8130.00"}
    assert "victim" in report.frozen_at
    assert report.as_json()["case_id"] == {"victim": case["case_id"]}
    reported = report.steps[-1]
    assert reported.do == "report_incident"
    assert reported.outcome == "ok"
    [package] = report.evidence
    verified = verify_package(Path(package))
    assert verified.ok, [str(p) for p in verified.problems]


def test_the_seed_case_loses_nothing_in_the_protected_profile() -> None:
    report = play(SEED, "protected")
    assert report.loss_fen == {"victim": 0}
    login = next(s for s in report.steps if s.do == "login")
    assert login.outcome == "challenged"
    assert "new_device_step_up" in login.controls
    sync = next(s for s in report.steps if s.do == "enable_sync")
    assert sync.outcome != "ok"
    assert report.expectations_failed == []


def test_with_the_otp_guard_off_the_attack_still_stops_at_login_or_sync() -> None:
    report = play(SEED, "protected", ["otp_guard"])
    assert report.total_loss_fen == 0
    first_stop = next(s for s in report.steps if s.as_ and s.outcome != "ok")
    assert first_stop.do in {"login", "enable_sync"}


def test_the_otp_guard_alone_hides_the_codes_from_the_synced_device() -> None:
    others = [c for c in PROFILES["protected"].enabled() if c != "otp_guard"]
    report = play(SEED, "protected", others)
    assert report.total_loss_fen == 0
    reset = next(s for s in report.steps if s.do == "reset_payment_password")
    assert reset.outcome == "failed"
    assert reset.controls == ["otp_guard"]


@pytest.mark.parametrize(
    ("name", "vulnerable_loss"),
    [
        ("sim-swap.yaml", 3_500_000),
        ("patient-attacker.yaml", 4_200_000),
        ("lost-unlocked-phone.yaml", 2_750_000),
        ("not-me.yaml", 0),
        ("new-phone-verified.yaml", 0),
        ("leaked-identity-recovery.yaml", 0),
    ],
)
def test_more_scenarios_meet_their_expectations(name: str, vulnerable_loss: int) -> None:
    vulnerable = play(SCENARIOS / name, "vulnerable")
    protected = play(SCENARIOS / name, "protected")
    assert vulnerable.total_loss_fen == vulnerable_loss
    assert protected.total_loss_fen == 0
    assert vulnerable.expectations_failed == protected.expectations_failed == []


def test_a_recovery_started_with_leaked_identity_data_is_delayed_and_cancelled() -> None:
    report = play(SCENARIOS / "leaked-identity-recovery.yaml", "protected")
    by_do = {s.do: s for s in report.steps}
    assert by_do["start_recovery"].outcome == "held"
    assert by_do["start_recovery"].controls == ["recovery_delay"]
    assert by_do["cancel_recovery"].outcome == "ok", by_do["cancel_recovery"].detail
    assert by_do["login"].outcome == "failed"
    assert report.alerts["victim"] >= 1


def test_a_holder_moving_their_own_money_is_not_a_loss(tmp_path: Path) -> None:
    scenario = yaml.safe_load(SEED.read_text(encoding="utf-8"))
    scenario["steps"] = [
        *scenario["steps"][:2],
        {
            "actor": "victim",
            "device": "victim-phone",
            "do": "pay",
            "merchant": "超市",
            "amount": "120.50",
            "card": 0,
        },
    ]
    scenario["expect"] = {}
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(scenario, allow_unicode=True), encoding="utf-8")
    report = play(path, "protected")
    assert report.steps[-1].outcome == "ok", report.steps[-1].detail
    assert report.steps[-1].moved_fen == 12_050
    assert report.loss_fen == {"victim": 0}


def test_not_me_and_alert_channel_actions(tmp_path: Path) -> None:
    report = play(SCENARIOS / "not-me.yaml", "protected")
    by_do = {s.do: s for s in report.steps}
    assert by_do["report_not_me"].outcome == "ok", by_do["report_not_me"].detail
    assert by_do["pay"].outcome != "ok"
    assert "holder" in report.frozen_at
    assert report.alerts["holder"] >= 1

    scenario = yaml.safe_load((SCENARIOS / "not-me.yaml").read_text(encoding="utf-8"))
    me = {"actor": "holder", "device": "holder-phone"}
    scenario["steps"] = [
        scenario["steps"][0],
        {**me, "do": "set_alert", "channel": "email", "address": "sun@example.com"},
        {**me, "do": "set_alert", "channel": "email", "enabled": False},
    ]
    scenario["expect"] = {}
    path = tmp_path / "alerts.yaml"
    path.write_text(yaml.safe_dump(scenario, allow_unicode=True), encoding="utf-8")
    turned_on, turned_off = play(path, "protected").steps[1:]
    assert turned_on.outcome == "ok", turned_on.detail
    assert turned_off.outcome == "held", turned_off.detail
    assert turned_off.controls == ["security_alerts"]


def test_every_documented_action_is_playable_and_documented() -> None:
    playable = set(runner.ACTIONS)
    assert set(ACTIONS) - {"wait"} <= playable
    documented = DOCS.read_text(encoding="utf-8")
    for action in ACTIONS:
        assert f"`{action}`" in documented, action


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": [{"actor": "nobody", "device": "x", "do": "login"}]}, "unknown actor"),
        ({"steps": [{"wait": "soon"}]}, "duration"),
        ({"steps": [{"actor": "victim", "device": "victim-phone", "do": "fly"}]}, "steps.0.do"),
        ({"profile": "reckless"}, "profile"),
        ({"steps": [{"actor": "victim", "device": "laptop", "do": "login"}]}, "no device"),
    ],
)
def test_a_bad_scenario_is_refused_with_where(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    scenario = yaml.safe_load(SEED.read_text(encoding="utf-8"))
    scenario.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(scenario, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ScenarioError, match=re.escape(message)):
        load_scenario(path)


def test_ablation_names_the_controls_that_alone_stop_the_attack() -> None:
    ablation = runner.ablate(load_scenario(SEED), profile="protected")
    assert ablation.baseline.total_loss_fen == 0
    stoppers = ablation.stops_alone()
    assert {"new_device_step_up", "otp_guard"} <= set(stoppers)
    assert all(r.total_loss_fen == 0 for r in ablation.without.values())


def simulate_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLETGUARD_")}
    return subprocess.run(
        [sys.executable, "-m", "walletguard.cli", "simulate", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.mark.skipif(PG_URL is not None, reason="the CLI plays on its own SQLite instance")
def test_cli_simulate_json_and_exit_code(tmp_path: Path) -> None:
    result = simulate_cli(str(SEED), "--profile", "vulnerable", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["loss"] == {"victim": "88130.00"}
    assert report["profile"] == "vulnerable"
    assert {"index", "actor", "do", "outcome", "controls", "detail"} <= set(report["steps"][0])

    scenario = yaml.safe_load(SEED.read_text(encoding="utf-8"))
    scenario["expect"] = {"protected": {"loss": {"victim": "1.00"}}}
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump(scenario, allow_unicode=True), encoding="utf-8")
    failed = simulate_cli(str(wrong))
    assert failed.returncode == 1
    assert "expectation failed: loss[victim] is 0.00, expected 1.00" in failed.stderr

    missing = simulate_cli(str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("walletguard: ")
    assert "nope.yaml" in lines[0]
