"""The compiled relay modules (``relay.native``, ``relay.compiled``): used only while current.

The relay suite itself runs on whatever ``relay/__init__.py`` picked; ``./dev test`` builds the
compiled modules first, so there that is the compiled relay, and test_relay_engines.py reruns part
of the suite as plain Python. Here: the freshness check that decides, on copies of the sources.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import relay
from relay import compiled
from relay.config import RelayConfig
from relay.server import Relay


def _fake_build(tmp_path: Path) -> tuple[Path, Path]:
    """A package directory with copies of the compiled sources and a build manifest for them."""
    package = tmp_path / "relay"
    native = package / "_native"
    native.mkdir(parents=True)
    for name in compiled.MODULES:
        shutil.copy2(compiled.PACKAGE_DIR / f"{name}.py", package / f"{name}.py")
    sources = {name: compiled._digest(package / f"{name}.py") for name in compiled.MODULES}
    manifest = {"interpreter": compiled._interpreter(), "sources": sources}
    (native / compiled.MANIFEST).write_text(json.dumps(manifest))
    return package, native


def test_a_build_of_the_same_sources_is_current(tmp_path):
    package, native = _fake_build(tmp_path)
    assert compiled.stale_reason(native, package) is None


def test_an_edited_source_makes_the_build_stale(tmp_path):
    package, native = _fake_build(tmp_path)
    with (package / "tunnel.py").open("a") as source:
        source.write("\n# edited\n")
    assert compiled.stale_reason(native, package) == "relay/tunnel.py changed since the build"


def test_a_missing_or_foreign_build_is_not_used(tmp_path):
    package, native = _fake_build(tmp_path)
    manifest = json.loads((native / compiled.MANIFEST).read_text())
    (native / compiled.MANIFEST).write_text(json.dumps({**manifest, "interpreter": "cpython-27"}))
    assert compiled.stale_reason(native, package) == "built for another interpreter"
    sources = dict(manifest["sources"])
    del sources["reactor"]
    (native / compiled.MANIFEST).write_text(json.dumps({**manifest, "sources": sources}))
    assert compiled.stale_reason(native, package) == "built from another module list"
    (native / compiled.MANIFEST).write_text("{not json")
    assert (compiled.stale_reason(native, package) or "").startswith("unreadable manifest")
    (native / compiled.MANIFEST).unlink()
    assert (compiled.stale_reason(native, package) or "").startswith("not built")


def test_the_variable_turns_the_compiled_modules_off(monkeypatch):
    monkeypatch.setenv(compiled.ENV, "0")
    monkeypatch.setattr(compiled, "active", compiled.active)
    monkeypatch.setattr(compiled, "reason", compiled.reason)
    path: list[str] = []
    assert compiled.activate(path) is False
    assert path == [] and compiled.reason == f"{compiled.ENV}=0"


def test_this_run_uses_what_the_checkout_holds():
    """With a current build and no HYBRID_RELAY_NATIVE=0 the relay runs compiled (./dev test
    builds it: a failed build fails here instead of quietly measuring plain Python)."""
    import relay.reactor as reactor

    if os.environ.get(compiled.ENV) == "0":
        assert not compiled.active
        assert reactor.__file__.endswith(".py")
        return
    why = compiled.stale_reason()
    assert why is None, f"the compiled relay modules are unusable: {why}; python -m relay.native"
    assert compiled.active and relay.__path__[0] == str(compiled.NATIVE_DIR)
    for name in compiled.MODULES:
        module = sys.modules.get(f"relay.{name}") or __import__(f"relay.{name}", fromlist=["_"])
        # mypyc names the file of a module loaded with its group below the group's directory.
        where = Path(module.__file__ or "")
        assert where.is_relative_to(compiled.NATIVE_DIR), (name, where)
        assert where.name.endswith(compiled._ext_suffix()), (name, where)
    assert Relay(RelayConfig(host="127.0.0.1", port=0)).native is True


def test_a_relay_process_says_which_it_runs(tmp_path):
    """The ``listening`` line names it; with the variable at 0, plain Python even when built."""
    script = (
        "import json, sys\n"
        "from relay import compiled\n"
        "import relay.reactor as r\n"
        "print(json.dumps([compiled.active, compiled.reason, r.__file__]))\n"
    )
    env = {**os.environ, compiled.ENV: "0"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    active, reason, path = json.loads(out.stdout)
    assert (active, reason) == (False, f"{compiled.ENV}=0") and path.endswith("reactor.py")


def test_the_build_command_reports_a_current_build():
    if compiled.stale_reason() is not None:
        pytest.fail(f"no current build to check: {compiled.stale_reason()}")
    out = subprocess.run(
        [sys.executable, "-m", "relay.native", "--check"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == "current"


@pytest.mark.parametrize(
    ("reason", "warned"),
    [("relay/reactor.py changed since the build", True), (f"{compiled.ENV}=0", False)],
)
async def test_a_relay_left_uncompiled_says_why(monkeypatch, caplog, reason, warned):
    """An operator whose relay runs as plain Python by accident is told why at start; one who
    asked for plain Python is not."""
    import trio

    from relay.server import serve

    monkeypatch.setattr(compiled, "active", False)
    monkeypatch.setattr(compiled, "reason", reason)
    monkeypatch.setenv(compiled.ENV, "1" if warned else "0")
    caplog.set_level("INFO")
    async with trio.open_nursery() as nursery:
        running = await nursery.start(serve, RelayConfig(host="127.0.0.1", port=0))
        assert running.native is False
        nursery.cancel_scope.cancel()
    events = {record.getMessage(): record for record in caplog.records}
    assert "listening" in events
    if warned:
        record = events["not_compiled"]
        assert record.levelname == "WARNING"
        assert record.fields["reason"] == reason and "relay.native" in record.fields["hint"]
    else:
        assert "not_compiled" not in events
