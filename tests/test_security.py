"""CurveZMQ access control with real PUB/SUB sockets on 127.0.0.1."""
from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydantic
import pytest
import zmq

from stream.config import PublishConfig
from stream.security import (SecurityConfig, SecurityError, add_subscriber_key_options,
                             create_key_pair, load_allowed_clients, secure_publisher,
                             secure_subscriber, subscriber_security_from_args,
                             subscriber_socket_setup)

REPO = Path(__file__).resolve().parents[1]
TOPIC = b"cam0"
AUTHORISED_WAIT_S = 20.0   # generous: the machine may be busy
SILENCE_WINDOW_S = 1.5     # how long an unauthorised subscriber must stay empty


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """server, an allowed client and a stranger whose key is not in the allowed folder."""
    server_pub, server_sec = create_key_pair(tmp_path / "server", "server")
    client_pub, client_sec = create_key_pair(tmp_path / "client", "viewer")
    _, stranger_sec = create_key_pair(tmp_path / "stranger", "stranger")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / client_pub.name).write_bytes(client_pub.read_bytes())
    return {"server_pub": server_pub, "server_sec": server_sec, "client_sec": client_sec,
            "stranger_sec": stranger_sec, "allowed": allowed, "other_server_pub": client_pub}


class Publisher:
    """A CURVE PUB socket on a random loopback port sending numbered messages."""

    def __init__(self, keys: dict[str, Path]) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PUB)
        self.socket.linger = 0
        self.authenticator = secure_publisher(self.context, self.socket,
                                              keys["server_sec"], keys["allowed"])
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.url = f"tcp://127.0.0.1:{port}"
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.socket.send_multipart([TOPIC, str(self.sent).encode()])
            self.sent += 1
            time.sleep(0.01)
        self.socket.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.authenticator.stop()
        self.context.term()


@pytest.fixture
def publisher(keys: dict[str, Path]):
    pub = Publisher(keys)
    yield pub
    pub.close()


def subscriber(context: zmq.Context, url: str, client_sec: Path | None = None,
               server_pub: Path | None = None) -> zmq.Socket:
    sock = context.socket(zmq.SUB)
    sock.linger = 0
    if client_sec is not None:
        secure_subscriber(sock, client_sec, server_pub)
    sock.subscribe(TOPIC)
    sock.connect(url)
    return sock


def receive_count(sock: zmq.Socket, seconds: float, enough: int | None = None) -> int:
    """Messages received within `seconds` (stopping early once `enough` arrived)."""
    got, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline and (enough is None or got < enough):
        if sock.poll(50):
            topic, _ = sock.recv_multipart()
            assert topic == TOPIC
            got += 1
    return got


def assert_locked_out(publisher: Publisher, keys: dict[str, Path], intruder: zmq.Socket,
                      context: zmq.Context) -> None:
    """While an authorised subscriber provably receives, the intruder gets nothing."""
    allowed = subscriber(context, publisher.url, keys["client_sec"], keys["server_pub"])
    assert receive_count(allowed, AUTHORISED_WAIT_S, enough=5) == 5
    sent_before = publisher.sent
    assert receive_count(intruder, SILENCE_WINDOW_S) == 0
    assert publisher.sent > sent_before  # the publisher kept sending during the window
    assert receive_count(allowed, AUTHORISED_WAIT_S, enough=5) == 5


def test_authorised_subscriber_receives(publisher: Publisher, keys: dict[str, Path]) -> None:
    with zmq.Context() as context:
        sock = subscriber(context, publisher.url, keys["client_sec"], keys["server_pub"])
        assert receive_count(sock, AUTHORISED_WAIT_S, enough=20) == 20


def test_subscriber_without_keys_receives_nothing(publisher: Publisher, keys: dict[str, Path]) -> None:
    with zmq.Context() as context:
        intruder = subscriber(context, publisher.url)
        assert_locked_out(publisher, keys, intruder, context)


def test_key_not_in_allowed_folder_receives_nothing(publisher: Publisher, keys: dict[str, Path]) -> None:
    with zmq.Context() as context:
        intruder = subscriber(context, publisher.url, keys["stranger_sec"], keys["server_pub"])
        assert_locked_out(publisher, keys, intruder, context)


def test_wrong_server_key_receives_nothing(publisher: Publisher, keys: dict[str, Path]) -> None:
    # an allowed client that trusts another server's key must not complete the handshake
    with zmq.Context() as context:
        confused = subscriber(context, publisher.url, keys["client_sec"], keys["other_server_pub"])
        assert_locked_out(publisher, keys, confused, context)


def test_subscriber_socket_setup_hook(publisher: Publisher, keys: dict[str, Path], tmp_path: Path) -> None:
    # the hook a subscriber class calls before connect: keys are checked when it is made
    assert subscriber_socket_setup(None) is None
    with pytest.raises(SecurityError):
        subscriber_socket_setup(SecurityConfig(client_secret_key=tmp_path / "missing.key_secret",
                                               server_public_key=keys["server_pub"]))
    setup = subscriber_socket_setup(SecurityConfig(client_secret_key=keys["client_sec"],
                                                   server_public_key=keys["server_pub"]))
    with zmq.Context() as context:
        sock = context.socket(zmq.SUB)
        sock.linger = 0
        setup(sock)
        sock.subscribe(TOPIC)
        sock.connect(publisher.url)
        assert receive_count(sock, AUTHORISED_WAIT_S, enough=5) == 5


@pytest.mark.skipif("security" not in PublishConfig.model_fields,
                    reason="publish.security is not part of the pipeline config yet (docs/security.md)")
def test_secured_pipeline_serves_only_allowed_subscribers(tmp_path: Path, keys: dict[str, Path], engine) -> None:
    from conftest import free_port, make_config, write_video
    from stream.pipeline import Pipeline
    from stream.subscribers import Subscriber

    video = write_video(tmp_path / "in.mp4", frames=24, width=64, height=48)
    config = make_config([{"id": "cam0", "file": str(video), "realtime": True, "loop": True}],
                         publish={"bind": f"tcp://127.0.0.1:{free_port()}",
                                  "security": {"server_secret_key": str(keys["server_sec"]),
                                               "allowed_clients_dir": str(keys["allowed"])}})

    def keyed(client_secret: Path) -> Subscriber:
        setup = subscriber_socket_setup(SecurityConfig(client_secret_key=client_secret,
                                                       server_public_key=keys["server_pub"]))
        return Subscriber(pipeline.endpoint, socket_setup=setup)

    pipeline = Pipeline(config, engine).open()
    subscribers = [keyed(keys["client_sec"]), keyed(keys["stranger_sec"]), Subscriber(pipeline.endpoint)]
    allowed, stranger, no_keys = subscribers
    pipeline.start()
    try:
        def frames_for_allowed(count: int) -> int:
            got = 0
            for message, image in allowed.frames(timeout_s=AUTHORISED_WAIT_S):
                got += message.stream == "cam0" and image is not None
                if got == count:
                    break
            return got

        assert frames_for_allowed(5) == 5
        assert stranger.receive(SILENCE_WINDOW_S) is None
        assert no_keys.receive(0.5) is None
        assert frames_for_allowed(5) == 5  # frames kept flowing while the others got none
        assert stranger.received == no_keys.received == 0
    finally:
        pipeline.request_stop()
        pipeline.wait(60)
        pipeline.close()
        for subscriber in subscribers:
            subscriber.close()


# --- one-line errors for bad key material ----------------------------------

def one_line_error(excinfo: pytest.ExceptionInfo[SecurityError]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def test_missing_and_invalid_key_files(tmp_path: Path, keys: dict[str, Path]) -> None:
    sock = zmq.Context.instance().socket(zmq.SUB)
    try:
        with pytest.raises(SecurityError) as excinfo:
            secure_subscriber(sock, tmp_path / "nope.key_secret", keys["server_pub"])
        assert "not found" in one_line_error(excinfo)

        with pytest.raises(SecurityError) as excinfo:  # public half given as the key pair
            secure_subscriber(sock, keys["server_pub"], keys["server_pub"])
        assert "only a public key" in one_line_error(excinfo)

        garbage = tmp_path / "garbage.key_secret"
        garbage.write_bytes(b"\x00\xffnot a certificate\n")
        with pytest.raises(SecurityError) as excinfo:
            secure_subscriber(sock, garbage, keys["server_pub"])
        assert "no public key" in one_line_error(excinfo)

        short = tmp_path / "short.key"
        short.write_text('curve\n    public-key = "tooshort"\n')
        with pytest.raises(SecurityError) as excinfo:
            secure_subscriber(sock, keys["client_sec"], short)
        assert "Z85" in one_line_error(excinfo)

        with pytest.raises(SecurityError) as excinfo:
            secure_subscriber(sock, keys["client_sec"], tmp_path)
        assert "folder" in one_line_error(excinfo)
    finally:
        sock.close(linger=0)


def test_allowed_clients_folder_checked(tmp_path: Path, keys: dict[str, Path]) -> None:
    with pytest.raises(SecurityError) as excinfo:
        load_allowed_clients(tmp_path / "missing")
    assert "not found" in one_line_error(excinfo)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SecurityError) as excinfo:
        load_allowed_clients(empty)
    assert "no client public keys" in one_line_error(excinfo)

    (empty / "broken.key").write_text("metadata\n")
    with pytest.raises(SecurityError) as excinfo:
        load_allowed_clients(empty)
    assert "broken.key" in one_line_error(excinfo)

    assert len(load_allowed_clients(keys["allowed"])) == 1


def test_secure_publisher_refuses_bound_socket(keys: dict[str, Path]) -> None:
    with zmq.Context() as context:
        sock = context.socket(zmq.PUB)
        sock.linger = 0
        sock.bind_to_random_port("tcp://127.0.0.1")
        with pytest.raises(SecurityError) as excinfo:
            secure_publisher(context, sock, keys["server_sec"], keys["allowed"])
        assert "before it binds" in one_line_error(excinfo)
        sock.close()


def test_second_authenticator_on_one_context_is_a_clear_error(keys: dict[str, Path]) -> None:
    with zmq.Context() as context:
        first, second = context.socket(zmq.PUB), context.socket(zmq.PUB)
        auth = secure_publisher(context, first, keys["server_sec"], keys["allowed"])
        try:
            with pytest.raises(SecurityError) as excinfo:
                secure_publisher(context, second, keys["server_sec"], keys["allowed"])
            assert "authenticator" in one_line_error(excinfo)
        finally:
            auth.stop()
            first.close(linger=0)
            second.close(linger=0)


# --- config model and subscriber options -----------------------------------

def test_security_config_pairs_and_unknown_keys() -> None:
    assert not SecurityConfig().secures_publisher
    publisher_cfg = SecurityConfig(server_secret_key="k/server.key_secret", allowed_clients_dir="k/ok")
    assert publisher_cfg.secures_publisher and not publisher_cfg.secures_subscriber
    assert isinstance(publisher_cfg.allowed_clients_dir, Path)
    with pytest.raises(pydantic.ValidationError, match="allowed_clients_dir"):
        SecurityConfig(server_secret_key="k/server.key_secret")
    with pytest.raises(pydantic.ValidationError, match="client_secret_key"):
        SecurityConfig(server_public_key="k/server.key")
    with pytest.raises(pydantic.ValidationError, match="server_key_file"):
        SecurityConfig(server_key_file="typo")


def test_subscriber_options() -> None:
    parser = argparse.ArgumentParser()
    add_subscriber_key_options(parser)
    assert subscriber_security_from_args(parser.parse_args([])) is None
    cfg = subscriber_security_from_args(
        parser.parse_args(["--server-key", "s.key", "--client-key", "c.key_secret"]))
    assert cfg is not None and cfg.secures_subscriber
    assert cfg.server_public_key == Path("s.key")
    with pytest.raises(SecurityError, match="go together"):
        subscriber_security_from_args(parser.parse_args(["--server-key", "s.key"]))


# --- `chromacast keys` as a real command -------------------------------------

def run_keys(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stream.cli", "keys", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_keys_command_creates_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    done = run_keys("--out", str(out), "--name", "server")
    assert done.returncode == 0, done.stderr
    public, secret = out / "server.key", out / "server.key_secret"
    assert public.is_file() and secret.is_file()
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert "secret-key" not in public.read_text()
    first_secret = secret.read_bytes()

    again = run_keys("--out", str(out), "--name", "server")
    assert again.returncode == 2
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert "Traceback" not in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert secret.read_bytes() == first_secret  # nothing was replaced

    forced = run_keys("--out", str(out), "--name", "server", "--force")
    assert forced.returncode == 0, forced.stderr
    assert secret.read_bytes() != first_secret


def test_keys_command_bad_name_and_missing_out(tmp_path: Path) -> None:
    bad = run_keys("--out", str(tmp_path), "--name", "a/b")
    assert bad.returncode == 2 and "plain file name" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = run_keys("--name", "x")
    assert missing.returncode == 2 and "--out" in missing.stderr
