""".ci/run: the README's command verbatim, its exit status passed on, pytest's 5 a failure.

The script runs in a copy of the repository layout with stand-ins for python3
and the venv it makes (and for the system programs, so nothing is installed),
so these tests see exactly which commands it runs and what it makes of them.
"""

import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
RUFF = "python -m ruff check hyperloom loom tests benchmarks examples"
README_COMMAND = ("python3 -m venv .venv && .venv/bin/pip install -e '.[test]' "
                  "&& .venv/bin/python -m pytest")

# python3 -m venv .venv: makes a venv whose pip and python log their arguments
FAKE_PYTHON3 = """#!/bin/sh
echo "python3 $*" >> "$LOG"
mkdir -p .venv/bin
cat > .venv/bin/pip <<'EOS'
#!/bin/sh
echo "pip $*" >> "$LOG"
exit "$PIP_STATUS"
EOS
cat > .venv/bin/python <<'EOS'
#!/bin/sh
echo "python $*" >> "$LOG"
case "$*" in "-m ruff"*|"-m mypy"*) exit "$LINT_STATUS";; esac
exit "$PYTEST_STATUS"
EOS
chmod +x .venv/bin/pip .venv/bin/python
"""


def test_ci_runs_the_readme_command_verbatim():
    with open(os.path.join(ROOT, "README.md")) as readme:
        assert README_COMMAND in readme.read()
    with open(os.path.join(ROOT, ".ci", "run")) as script:
        lines = [line.strip() for line in script]
    assert README_COMMAND in lines
    assert not any(re.search(r"(^|\s)(\.|source)\s+\S*activate", line) for line in lines)


@pytest.fixture
def run_ci(tmp_path):
    os.makedirs(tmp_path / "repo" / ".ci")
    shutil.copy(os.path.join(ROOT, ".ci", "run"), tmp_path / "repo" / ".ci" / "run")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON3)
    for name in ("chromium", "slurmctld", "slurmd", "sinfo", "munged"):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "$LOG"\n')
    (bin_dir / "apt-get").write_text(   # updates, then cannot install
        '#!/bin/sh\necho "apt-get $*" >> "$LOG"\n[ "$1" = update ] || exit 100\n')
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    log = tmp_path / "log"

    def run(pytest_status, pip_status=0, missing=(), lint_status=0):
        for name in missing:
            (bin_dir / name).unlink()
        log.write_text("")
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LOG": str(log),
               "PIP_STATUS": str(pip_status), "PYTEST_STATUS": str(pytest_status),
               "LINT_STATUS": str(lint_status)}
        result = subprocess.run(["bash", str(tmp_path / "repo" / ".ci" / "run")],
                                env=env, capture_output=True, text=True, timeout=60)
        return result, log.read_text().splitlines()
    return run


def test_ci_goes_on_when_system_packages_cannot_be_installed(run_ci):
    result, commands = run_ci(pytest_status=0, missing=("slurmctld", "munged"))
    assert result.returncode == 0, result.stderr
    # asked for the missing ones only (as root: apt-get, which fails here), then ran the tests
    assert "slurmctld munge;" in result.stdout and "skipped" in result.stdout
    if os.geteuid() == 0:
        assert "apt-get install -y -qq slurmctld munge" in commands
    assert commands[-3:] == ["python -m pytest", RUFF, "python -m mypy"]


def test_ci_passes_when_the_tests_pass(run_ci):
    result, commands = run_ci(pytest_status=0)
    assert result.returncode == 0, result.stderr
    # nothing installed when everything is there; then the README's three steps, in order,
    # and the static checks
    assert commands == ["python3 -m venv .venv", "pip install -e .[test]", "python -m pytest",
                        RUFF, "python -m mypy"]


def test_ci_fails_when_ruff_or_mypy_finds_a_problem(run_ci):
    result, commands = run_ci(pytest_status=0, lint_status=1)
    assert result.returncode == 1
    assert commands[-1] == RUFF   # mypy is not needed to know CI failed


@pytest.mark.parametrize("status", [1, 2, 3, 4])
def test_ci_fails_when_pytest_fails(run_ci, status):
    result, _ = run_ci(pytest_status=status)
    assert result.returncode == status


def test_ci_fails_when_no_test_was_collected(run_ci):
    result, _ = run_ci(pytest_status=5)
    assert result.returncode == 5
    assert "pytest collected no tests" in result.stderr


def test_ci_fails_when_the_install_fails(run_ci):
    result, commands = run_ci(pytest_status=0, pip_status=1)
    assert result.returncode == 1
    assert not any(command.startswith("python -m pytest") for command in commands)


def test_every_core_module_is_typed_strictly():
    # A new module of the broker's core (or of the trace package) is typed strictly from
    # its first commit: pyproject.toml lists it, or this test names it.
    import glob
    tomllib = pytest.importorskip("tomllib")   # Python 3.11+
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        overrides = tomllib.load(f)["tool"]["mypy"]["overrides"]
    strict = {module for override in overrides if override.get("disallow_untyped_defs")
              for module in override["module"]}
    package = os.path.join(ROOT, "hyperloom")
    cores = {f"hyperloom.{sub}.{os.path.basename(path)[:-3]}"
             for sub in ("broker", "trace") for path in glob.glob(f"{package}/{sub}/*.py")}
    cores -= {"hyperloom.broker.server",      # the socket loop
              "hyperloom.broker.__init__", "hyperloom.broker.__main__"}
    cores |= {"hyperloom.worker.state", "hyperloom.protocol", "hyperloom.data"}
    cores = {name.removesuffix(".__init__") for name in cores}
    assert "hyperloom.broker.state" in cores and "hyperloom.trace.writer" in cores
    assert sorted(cores - strict) == []
