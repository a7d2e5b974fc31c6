"""The command line as a person uses it: wrong input, help, version, Ctrl-C, pipes, reruns.

Every case runs the real ``python -m hybrid`` process and asserts the exit status, the message and
that no traceback reached the user. Flows that need a relay use a real one on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from hybrid.cli import build_parser
from hybrid.tunnel.domains import tunnel_domain

HYBRID = [sys.executable, "-m", "hybrid"]
URL = "FIDO:/" + "0" * 20  # never parsed: every case below fails before the URL is read


def run(*argv: str, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HYBRID, *argv], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def assert_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "error:" in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert "FIDO:/" not in result.stdout  # no QR code shown for a flow that cannot work


DESKTOP = ["desktop", "login", "--rp-id", "example.com"]


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (
            [*DESKTOP, "--relay", "ws://127.0.0.1:99999"],
            ["argument --relay", "port must be a number in 1..65535"],
        ),
        (["phone", "--relay", "ws://127.0.0.1:0", URL], ["port 0 is outside 1..65535"]),
        ([*DESKTOP, "--relay", "http://127.0.0.1:8080"], ["must start with ws:// or wss://"]),
        (["phone", "--relay", "ftp://relay.example", URL], ["must start with ws:// or wss://"]),
        ([*DESKTOP, "--relay", "ws://127.0.0.1:8080/cable"], ["without a path"]),
        (["phone", "--relay", "wss://relay.example/x?y", URL], ["without a path"]),
        ([*DESKTOP, "--timeout", "-5"], ["argument --timeout", "positive number of seconds"]),
        (["phone", "--timeout", "-1", URL], ["positive number of seconds"]),
        (["portal", "--timeout", "-1"], ["argument --timeout", "positive number of seconds"]),
        (["demo", "--timeout", "-3"], ["positive number of seconds"]),
        (["demo", "--timeout", "nan"], ["positive number of seconds"]),
        (["phone", "--domain-id", "70000", URL], ["argument --domain-id", "outside 0..65535"]),
        (["phone", "--domain-id", "7", URL], ["domain id 7 is reserved"]),
        (["phone", "--fallback-domain-id", "1", URL], ["must be a hashed domain id"]),
        ([*DESKTOP, "--ble-port", "70000"], ["argument --ble-port", "outside 1..65535"]),
        (["demo", "--ble-port", "0"], ["outside 1..65535"]),
        (
            [*DESKTOP, "--origin", "https://evil.example"],
            ["--origin https://evil.example is not within --rp-id example.com"],
        ),
        (
            [*DESKTOP, "--origin", "http://example.com"],
            ["is not within --rp-id example.com", "https://"],
        ),
        (["desktop", "register", "--rp-id", "example.com"], ["--user"]),
        ([*DESKTOP, "--ca-file", "/nonexistent/ca.pem"], ["CA file", "does not exist"]),
        (["phone"], ["give either FIDO_URL or --qr-image FILE"]),
        (["domain"], ["give either a domain ID or --of HOST"]),
        (["domain", "70000"], ["outside 0..65535"]),
    ],
)
def test_wrong_input_is_a_usage_error_without_traceback(argv, fragments) -> None:
    assert_usage_error(run(*argv), *fragments)


def test_ca_file_environment_variable_is_checked_too(tmp_path: Path) -> None:
    env = dict(os.environ, HYBRID_CA_FILE=str(tmp_path / "missing.pem"))
    assert_usage_error(run(*DESKTOP, "--no-qr", env=env), "$HYBRID_CA_FILE", "does not exist")
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    assert_usage_error(run(*DESKTOP, "--ca-file", str(bogus)), "not a PEM CA certificate file")


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == "hybrid 0.1.0"


def _optional_actions(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {n}".strip(), a) for n, a in _optional_actions(sub))
        elif action.option_strings and not isinstance(
            action, (argparse._HelpAction, argparse._VersionAction)
        ):
            yield "", action


def test_help_states_every_default() -> None:
    parser = build_parser()
    missing = [
        (where, action.option_strings[0])
        for where, action in _optional_actions(parser)
        if not action.required and "default" not in (action.help or "")
    ]  # fmt: skip
    assert missing == []
    result = run("phone", "--help")
    assert result.returncode == 0
    assert "(default: 60)" in result.stdout and "default: 51889" in result.stdout


def test_register_and_login_help_are_specific() -> None:
    register = run("desktop", "register", "--help").stdout
    login = run("desktop", "login", "--help").stdout
    assert "usage: hybrid desktop register" in register
    assert "usage: hybrid desktop login" in login
    assert "--user NAME" in register.split("\n\n")[0].replace("[--user NAME]", "")  # required
    assert "[--user NAME]" in login
    assert "authenticatorMakeCredential" in register and "discoverable" in login
    assert "--cred-props" in register and "--cred-props" not in login
    overview = run("desktop", "--help").stdout
    assert "register" in overview and "login" in overview


def test_closed_stdout_pipe_ends_quietly() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # whatever the command prints hits a closed pipe
    try:
        result = subprocess.run(
            [*HYBRID, "domain", "300"], stdout=write_end, stderr=subprocess.PIPE, timeout=30
        )
    finally:
        os.close(write_end)
    stderr = result.stderr.decode()
    assert result.returncode == 1
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr
    assert stderr == ""


def test_domain_of_finds_the_id_of_a_hashed_host() -> None:
    host = tunnel_domain(4242)
    result = run("domain", "--of", f"wss://{host}:443")
    assert (result.returncode, result.stdout.strip()) == (0, "4242")
    result = run("domain", "--of", "cable.ua5v.com", "--json")
    assert json.loads(result.stdout) == {"domain_id": 0, "domain": "cable.ua5v.com"}
    result = run("domain", "--of", "relay.example.org")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "only be found by desktops given the same --relay" in result.stderr


def _free_port() -> int:
    from tests.conftest import free_udp_port

    return free_udp_port()


def test_ctrl_c_on_demo_prints_interrupted_and_exits_130() -> None:
    demo = subprocess.Popen(
        [*HYBRID, "demo", "--no-qr", "--ble-port", str(_free_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # The test runner may ignore SIGINT; the demo must get it as a person's Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert demo.stdout is not None
        assert "relay listening" in demo.stdout.readline()
        time.sleep(0.5)  # the ceremony's child processes are running by now
        demo.send_signal(signal.SIGINT)
        stdout, stderr = demo.communicate(timeout=20)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 130
    assert stderr.strip().splitlines()[-1] == "hybrid: interrupted"
    assert "Traceback" not in stderr + stdout and "ExceptionGroup" not in stderr


def test_demo_with_the_same_data_dir_twice_reuses_the_passkey(tmp_path: Path) -> None:
    port = str(_free_port())
    first = run("demo", "--no-qr", "--data-dir", str(tmp_path), "--ble-port", port, timeout=90)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "registered a passkey on the phone and signed in" in first.stdout
    result_file = tmp_path / "second.json"
    second = run(
        "demo", "--no-qr", "--data-dir", str(tmp_path), "--ble-port", port,
        "--json", str(result_file), timeout=90,
    )  # fmt: skip
    assert second.returncode == 0, second.stdout + second.stderr
    assert "already has a passkey for example.com" in second.stdout
    assert "== Register" not in second.stdout
    assert "signed in with the passkey registered in an earlier run" in second.stdout
    document = json.loads(result_file.read_text())
    assert document["registration"] is None
    assert document["authentication"]["response"]["type"] == "public-key"


async def _desktop_with_phone(
    relay_url: str, desktop_args: list[str], phone_args: list[str], ble_port: int, **phone_kw
) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    common = ["--relay", relay_url, "--ble-port", str(ble_port), "--timeout", "10"]
    with trio.fail_after(40):
        desktop = await trio.lowlevel.open_process(
            [*HYBRID, "desktop", *desktop_args, *common, "--no-qr"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert desktop.stdout is not None and desktop.stderr is not None
            line = b""
            while not line.endswith(b"\n"):
                chunk = await desktop.stdout.receive_some(1)
                assert chunk, "the desktop printed no URL"
                line += chunk
            url = line.decode().strip()
            assert url.startswith("FIDO:/")
            out: list[bytes] = [line]
            err: list[bytes] = []

            async def drain(stream, into) -> None:
                while chunk := await stream.receive_some(4096):
                    into.append(chunk)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain, desktop.stdout, out)
                nursery.start_soon(drain, desktop.stderr, err)
                phone = await trio.run_process(
                    [*HYBRID, "phone", *common, *phone_args, url],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                    **phone_kw,
                )
                await desktop.wait()
        finally:
            if desktop.returncode is None:
                desktop.kill()
                await desktop.wait()
    desktop_result = subprocess.CompletedProcess(
        desktop.args, desktop.returncode, b"".join(out).decode(), b"".join(err).decode()
    )
    phone_result = subprocess.CompletedProcess(
        phone.args, phone.returncode, phone.stdout.decode(), phone.stderr.decode()
    )
    return desktop_result, phone_result


async def test_phone_without_a_terminal_declines_and_says_why(
    relay, ble_port, desktop_dir, phone_dir
) -> None:
    desktop, phone = await _desktop_with_phone(
        relay.base_url,
        ["register", "--rp-id", "example.com", "--user", "alice", "--data-dir", str(desktop_dir)],
        ["--data-dir", str(phone_dir)],
        ble_port,
        stdin=subprocess.DEVNULL,
    )
    assert "nobody can approve" in phone.stderr
    assert "declining: standard input is not a terminal" in phone.stderr
    assert "status OPERATION_DENIED" in phone.stderr
    assert desktop.returncode == 11, desktop.stderr
    assert "hybrid: error: Passkey Set Up Canceled" in desktop.stderr
    assert "Traceback" not in desktop.stderr + phone.stderr


async def test_extensions_from_the_command_line_reach_the_json(
    relay, ble_port, desktop_dir, phone_dir, tmp_path
) -> None:
    register_json = tmp_path / "register.json"
    desktop, phone = await _desktop_with_phone(
        relay.base_url,
        ["register", "--rp-id", "example.com", "--user", "alice", "--data-dir", str(desktop_dir),
         "--cred-props", "--prf", "--json", str(register_json)],
        ["--data-dir", str(phone_dir), "--approve"],
        ble_port,
    )  # fmt: skip
    assert desktop.returncode == 0, desktop.stderr + phone.stderr
    document = json.loads(register_json.read_text())
    assert document["response"]["clientExtensionResults"] == {
        "credProps": {"rk": True},
        "prf": {"enabled": True},
    }
    outputs = []
    for salt in ("one", "one", "two"):
        login_json = tmp_path / f"login-{len(outputs)}.json"
        desktop, phone = await _desktop_with_phone(
            relay.base_url,
            ["login", "--rp-id", "example.com", "--user", "alice", "--data-dir", str(desktop_dir),
             "--prf", salt, "--json", str(login_json)],
            ["--data-dir", str(phone_dir), "--approve"],
            ble_port,
        )  # fmt: skip
        assert desktop.returncode == 0, desktop.stderr + phone.stderr
        results = json.loads(login_json.read_text())["response"]["clientExtensionResults"]
        first = results["prf"]["results"]["first"]
        printed = next(line for line in desktop.stdout.splitlines() if line.startswith("prf: "))
        outputs.append((first, printed))
    assert outputs[0] == outputs[1] and outputs[0] != outputs[2]
    assert len(bytes.fromhex(outputs[0][1].removeprefix("prf: "))) == 32


async def test_desktop_refuses_to_show_a_qr_when_the_loopback_port_is_taken(
    ble_port, desktop_dir
) -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", ble_port))
        result = await trio.run_process(
            [*HYBRID, *DESKTOP, "--ble-port", str(ble_port), "--data-dir", str(desktop_dir),
             "--relay", "ws://127.0.0.1:9"],
            capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    stderr = result.stderr.decode()
    assert result.returncode == 16, stderr
    assert "No compatible device found" in stderr and "no QR code was shown" in stderr
    assert "FIDO:/" not in result.stdout.decode()
    assert "Traceback" not in stderr


def test_ctrl_c_on_a_waiting_desktop_exits_130(tmp_path: Path) -> None:
    desktop = subprocess.Popen(
        [*HYBRID, *DESKTOP, "--no-qr", "--ble-port", str(_free_port()),
         "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        assert desktop.stdout is not None
        assert desktop.stdout.readline().startswith("FIDO:/")  # waiting for a phone now
        desktop.send_signal(signal.SIGINT)
        stdout, stderr = desktop.communicate(timeout=20)
    finally:
        if desktop.poll() is None:
            desktop.kill()
            desktop.wait()
    assert desktop.returncode == 130
    assert stderr.strip().splitlines()[-1] == "hybrid: interrupted"
    assert "Traceback" not in stderr
