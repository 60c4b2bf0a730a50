"""The suite's skip policy (conftest.py): a skip is allowed on a user's machine and is a failure under CI=true."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")
# a module that skips itself at import (a missing solo-learn), a skipif test (a DALI that fails to import), a pass
TESTS = {
    "test_module_skip.py": "import pytest\npytest.skip('no solo-learn here', allow_module_level=True)\n",
    "test_marks.py": (
        "import pytest\n\n"
        "@pytest.mark.skipif(True, reason='no DALI here')\n"
        "def test_dali():\n    pass\n\n"
        "def test_plain():\n    assert 1 + 1 == 2\n"
    ),
}


class Outcomes:
    """Collects the outcome of every test report of a run."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or report.outcome != "passed":
            self.seen[report.nodeid.split("::")[-1]] = report.outcome


def run_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ci: str | None) -> tuple[int, dict[str, str]]:
    """Run the small suite above in-process, its conftest being this project's tests/conftest.py."""
    for name, text in TESTS.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    outcomes = Outcomes()
    args = [str(tmp_path), "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "--import-mode=importlib"]
    try:
        code = pytest.main(args, plugins=[outcomes])  # importlib mode: the copied conftest is a module of its own
    finally:  # the next run imports its own copies afresh
        for name, module in list(sys.modules.items()):
            if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
                del sys.modules[name]
    return int(code), outcomes.seen


def test_a_skip_is_allowed_outside_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    code, seen = run_suite(tmp_path, monkeypatch, ci=None)
    assert code == 0 and seen == {"test_dali": "skipped", "test_plain": "passed"}


def test_under_ci_every_skip_is_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    code, seen = run_suite(tmp_path, monkeypatch, ci="true")
    assert code == pytest.ExitCode.TESTS_FAILED
    assert seen == {"module_skipped": "failed", "test_dali": "failed", "test_plain": "passed"}
