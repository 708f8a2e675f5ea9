"""`edge-agent` commands from drivers (`edge_agent.commands` entry points): listed without
importing any driver, third-party ones found, a broken one failing alone and clearly; and
the ONVIF camera simulator's command, both as `edge-agent simulate-camera` and as
`python -m drivers.onvif.simulator`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from drivers.onvif.discovery import discover, parse_target
from drivers.onvif.simulator.standalone import simulate_camera
from tests.peers import free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]
EDGE_AGENT = str(Path(sys.executable).parent / "edge-agent")
SAMPLE = ROOT / "drivers" / "modbus" / "sample.yaml"

# Runs edge-agent in this interpreter, then prints which of the watched modules it imported.
IMPORTS = """\
import json, sys
from edge_agent.cli import main
try:
    main(sys.argv[1:], prog_name="edge-agent")
except SystemExit:
    pass
watched = ("drivers", "fake_hello", "fake_broken")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in watched)))
"""

FAKE_HELLO = '''\
import click


@click.command()
@click.option("--name", default="world")
def hello(name: str) -> None:
    """Say hello (a third-party command)."""
    click.echo(f"hello {name}")


@click.command()
def toasters() -> None:
    """Find toasters."""
    click.echo("toaster-1")


not_a_command = 42
'''


def _dist(folder: Path, name: str, version: str, entry_points: str) -> None:
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[edge_agent.commands]\n{entry_points}")


@pytest.fixture
def plugins(tmp_path: Path) -> Path:
    """A third-party distribution on a folder for PYTHONPATH: good, broken, misnamed
    commands."""
    folder = tmp_path / "site"
    _dist(folder, "fake-plugin", "1.0", """\
hello = fake_hello:hello
discover.toasters = fake_hello:toasters
broken = fake_broken:command
not-click = fake_hello:not_a_command
run = fake_hello:hello
elsewhere.thing = fake_hello:hello
""")
    (folder / "fake_hello.py").write_text(FAKE_HELLO)
    (folder / "fake_broken.py").write_text("import click\nimport a_library_not_installed_here\n")
    return folder


def _run(*args: str, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = str(path)
    return subprocess.run([EDGE_AGENT, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=60)


def _imports(*args: str, path: Path | None = None) -> tuple[str, list[str]]:
    """edge-agent's stdout and the watched modules it imported."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (ROOT, path) if p is not None)
    done = subprocess.run([sys.executable, "-c", IMPORTS, *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60)
    *out, last = done.stdout.splitlines()
    return "\n".join(out), json.loads(last)


def _section(text: str, title: str) -> str:
    """One section of a --help text, up to the next blank line."""
    start = text.index(title)
    end = text.find("\n\n", start)
    return text[start:] if end < 0 else text[start:end]


def test_help_lists_the_driver_commands_without_importing_any_driver() -> None:
    out, imported = _imports("--help")
    drivers = _section(out, "Commands from drivers")
    assert "simulate " in drivers and "drivers.modbus.commands (community-data" in drivers
    assert "discover cameras" in drivers and "simulate-camera" in drivers
    core = _section(out, "Commands:")
    assert all(name in core for name in ("run", "validate", "discover"))
    assert imported == []
    out, imported = _imports("discover", "--help")
    assert "cameras" in _section(out, "Commands from drivers") and imported == []


def test_a_driver_command_is_imported_when_its_help_is_asked() -> None:
    out, imported = _imports("simulate", "--help")
    assert "--scenario NAME[@TARGET,...]" in out
    assert "drivers.modbus.commands" in imported and "drivers.onvif" not in imported


def test_a_third_party_command_is_found_and_runs(plugins: Path) -> None:
    out, imported = _imports("--help", path=plugins)
    listed = _section(out, "Commands from drivers")
    assert "hello" in listed and "fake_hello (fake-plugin 1.0)" in listed
    assert "discover toasters" in listed and "simulate-camera" in listed
    assert imported == []  # neither ours nor theirs
    done = _run("hello", "--name", "gateway", path=plugins)
    assert (done.returncode, done.stdout) == (0, "hello gateway\n"), done.stderr
    done = _run("discover", "toasters", path=plugins)
    assert (done.returncode, done.stdout) == (0, "toaster-1\n"), done.stderr
    assert "Say hello (a third-party command)." in _run("hello", "--help", path=plugins).stdout


def test_a_command_that_fails_to_import_fails_alone_naming_its_entry_point(
        plugins: Path) -> None:
    done = _run("broken", path=plugins)
    assert done.returncode == 1 and done.stdout == ""
    err = done.stderr
    assert "`broken` cannot be loaded: entry point `broken = fake_broken:command`" in err
    assert "(group edge_agent.commands, distribution fake-plugin 1.0)" in err
    assert "ModuleNotFoundError: No module named 'a_library_not_installed_here'" in err
    assert f"at {plugins / 'fake_broken.py'}:2" in err
    assert "hint: reinstall fake-plugin, or uninstall it" in err
    assert "Traceback" not in err
    done = _run("not-click", path=plugins)
    assert done.returncode == 1 and "names a int, not a click command" in done.stderr
    # the others still work, ours and theirs
    done = _run("validate", "--skip-secrets", str(SAMPLE), path=plugins)
    assert done.returncode == 0 and ": ok: gateway" in done.stdout, done.stderr
    assert "--scenario" in _run("simulate", "--help", path=plugins).stdout
    assert _run("hello", path=plugins).stdout == "hello world\n"
    assert "broken" in _section(_run("--help", path=plugins).stdout, "Commands from drivers")


def test_misplaced_and_clashing_entry_points_are_named(plugins: Path, tmp_path: Path) -> None:
    listed = " ".join(_section(_run("--help", path=plugins).stdout,
                               "Commands from drivers").split())
    assert "run fake_hello (fake-plugin 1.0); ignored: a core command has this name" in listed
    assert "elsewhere thing fake_hello (fake-plugin 1.0); ignored: `elsewhere` is not a " \
        "group" in listed
    done = _run("run", "--help", path=plugins)  # the core's run, not theirs
    assert "Run the agent until SIGINT/SIGTERM." in done.stdout
    done = _run("elsewhere", "thing", path=plugins)
    assert done.returncode == 1
    assert "`elsewhere` is not a group of the core commands" in done.stderr
    assert "groups drivers may add to: discover" in done.stderr
    other = tmp_path / "other"
    _dist(other, "other-plugin", "2.0", "hello = other_hello:hello\n")
    done = _run("hello", path=Path(f"{plugins}{os.pathsep}{other}"))
    assert done.returncode == 1 and "`hello` is claimed by 2 entry points" in done.stderr
    assert "other-plugin 2.0" in done.stderr and "uninstall all but one" in done.stderr


def test_an_unknown_command_suggests_a_close_one() -> None:
    done = _run("simulte")
    assert done.returncode == 2 and "No such command 'simulte'." in done.stderr
    assert "Did you mean 'simulate'?" in done.stderr


@pytest.mark.parametrize("argv", [[EDGE_AGENT, "simulate-camera"],
                                  [sys.executable, "-m", "drivers.onvif.simulator"]])
async def test_the_camera_simulator_command_serves_and_answers_discovery(
        argv: list[str]) -> None:
    port, udp = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        *argv, "--port", str(port), "--discovery-port", str(udp), "--name", "Lobby", "--open",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await asyncio.to_thread(wait_port, port, 30)
        # the UDP responder binds just after the HTTP port opens: probe until it answers
        for _ in range(10):
            found = await discover(parse_target(f"127.0.0.1:{udp}"), 1.5)
            if found:
                break
        assert [(m.host, m.port) for m in found] == [("127.0.0.1", port)]
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()


def test_the_camera_simulator_refuses_a_missing_password_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(simulate_camera, ["--password-file", str(tmp_path / "no.pw")])
    assert result.exit_code == 2 and "--password-file" in result.output
    assert "does not exist" in result.output
