"""`walletguard otp-check`: the OTP recogniser on the command line, run as an operator would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

BANK_CODE_SMS = (
    "【工商银行】您尾号8821的卡正向 金店 支付 1,000.00 元，动态密码 382914，5分钟内有效，请勿泄露。"
)
BALANCE_SMS = "【工商银行】您尾号8821的卡于11月20日支出1,000.00元，余额3,456.78元。"


def run(*args: str, stdin: str | bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    # otp-check needs no database: run it with no WALLETGUARD_ settings at all.
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALLETGUARD_")}
    return subprocess.run(
        [sys.executable, "-m", "walletguard.cli", "otp-check", *args],
        env=env,
        input=stdin.encode() if isinstance(stdin, str) else stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


def verdicts(result: subprocess.CompletedProcess[bytes]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr.decode()
    return [json.loads(line) for line in result.stdout.decode("utf-8").splitlines()]


def test_plain_lines_and_jsonl_lines_from_a_file(tmp_path: Path) -> None:
    messages = tmp_path / "messages.txt"
    messages.write_text(
        "\n".join(
            [
                BANK_CODE_SMS,
                json.dumps({"text": "G-123456 is your Google verification code.", "otp": True}),
                "",
                BALANCE_SMS,
                '{"sender": "95588"}',
                "{not json, just braces",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    got = verdicts(run(str(messages)))
    assert got[0] == {
        "text": BANK_CODE_SMS,
        "otp": True,
        "code": "382914",
        "span": [BANK_CODE_SMS.index("382914"), BANK_CODE_SMS.index("382914") + 6],
        "keyword": "动态密码",
    }
    assert got[1] == {
        "text": "G-123456 is your Google verification code.",
        "otp": True,
        "code": "123456",
        "span": [2, 8],
        "keyword": "verification code",
    }
    # The blank line is no message; a JSON object without "text" is read as plain text.
    assert [v["text"] for v in got[2:]] == [
        BALANCE_SMS,
        '{"sender": "95588"}',
        "{not json, just braces",
    ]
    assert all(
        v == {**v, "otp": False, "code": None, "span": None, "keyword": None} for v in got[2:]
    )


def test_reads_standard_input_and_keeps_chinese_readable() -> None:
    result = run(stdin=f"{BALANCE_SMS}\r\n【支付宝】验证码 5218，你正在登录支付宝。\r\n")
    got = verdicts(result)
    assert [(v["otp"], v["code"]) for v in got] == [(False, None), (True, "5218")]
    assert "支付宝" in result.stdout.decode("utf-8")  # ensure_ascii=False: no \\u escapes
    assert "\\u" not in result.stdout.decode("utf-8")


def test_the_labelled_set_can_be_checked_as_jsonl() -> None:
    labelled = Path(__file__).parent / "data" / "otp_messages.jsonl"
    rows = [json.loads(line) for line in labelled.read_text(encoding="utf-8").splitlines()]
    got = verdicts(run(str(labelled)))
    assert [v["text"] for v in got] == [r["text"] for r in rows]


def test_an_unreadable_file_is_one_error_line_and_exit_1(tmp_path: Path) -> None:
    for target, reason in [
        (tmp_path / "missing.txt", "No such file or directory"),
        (tmp_path, "Is a directory"),
    ]:
        result = run(str(target))
        assert result.returncode == 1
        lines = result.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("walletguard: cannot read"), lines
        assert reason in lines[0]
        assert result.stdout == b""


def test_input_that_is_not_utf8_is_refused_readably() -> None:
    result = run(stdin=b"\xff\xfe\x00garbage")
    assert result.returncode == 1
    assert (
        result.stderr.decode().strip() == "walletguard: cannot read standard input: not UTF-8 text"
    )
