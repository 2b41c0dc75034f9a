"""scripts/quickstart.sh: argument errors and --help (the end-to-end run is measured by hand, see the script)."""

import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "quickstart.sh"


def run(*args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_unknown_argument_fails_before_doing_anything():
    r = run("--fats")
    assert r.returncode == 2
    assert "unknown argument '--fats'" in r.stderr and "--fast" in r.stderr
    assert "[quickstart] ====" not in r.stdout


def test_help():
    r = run("--help")
    assert r.returncode == 0 and "--fast" in r.stdout and "report.md" in r.stdout


def test_syntax():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
