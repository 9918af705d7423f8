"""CurveZMQ access control for the published streams.

A publisher with a server key pair only talks to subscribers whose public key
lies in its allowed-clients folder; everything else (no keys, an unknown key,
a wrong server key) gets no frames. Traffic to allowed subscribers is
encrypted. Key handling, the ZAP authenticator and the certificate format all
come from pyzmq's ``zmq.auth`` (a well-kept implementation of ZeroMQ's RFC 27
ZAP and the czmq certificate files), so this module only validates inputs and
wires sockets; see docs/security.md.

Every call must happen before the socket binds or connects: CURVE options are
read by ZeroMQ when a connection starts.
"""
from __future__ import annotations

import argparse
import logging
import os
import stat
import struct
from pathlib import Path
from typing import Any, Callable

import zmq
import zmq.auth
from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from stream.logs import EXIT_FAILURE, EXIT_USAGE, add_verbosity_options, error_line, setup_logging, verbosity

log = logging.getLogger("chromacast.security")

PUBLIC_SUFFIX = ".key"          # czmq / zmq.auth naming: NAME.key holds the public key
SECRET_SUFFIX = ".key_secret"   # NAME.key_secret holds both keys; keep it private
_Z85_KEY_LENGTH = 40            # a 32-byte Curve25519 key in Z85 text


class SecurityError(Exception):
    """A key file or key folder is missing or invalid; the message is one line."""


class SecurityConfig(BaseModel):
    """CurveZMQ settings; a pipeline config embeds this under its ZeroMQ sink.

    A publisher sets ``server_secret_key`` and ``allowed_clients_dir``; a
    subscriber sets ``client_secret_key`` and ``server_public_key``. Each pair
    is all-or-nothing; leaving everything unset means no encryption.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    server_secret_key: Path | None = None
    allowed_clients_dir: Path | None = None
    client_secret_key: Path | None = None
    server_public_key: Path | None = None

    @field_validator("*")
    @classmethod
    def _expand_home(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @model_validator(mode="after")
    def _pairs_complete(self) -> SecurityConfig:
        _require_pair(self.server_secret_key, "server_secret_key",
                      self.allowed_clients_dir, "allowed_clients_dir")
        _require_pair(self.client_secret_key, "client_secret_key",
                      self.server_public_key, "server_public_key")
        return self

    @property
    def secures_publisher(self) -> bool:
        return self.server_secret_key is not None

    @property
    def secures_subscriber(self) -> bool:
        return self.client_secret_key is not None


def _require_pair(first: Any, first_name: str, second: Any, second_name: str) -> None:
    if (first is None) != (second is None):
        missing = second_name if second is None else first_name
        given = first_name if second is None else second_name
        raise ValueError(f"{given} needs {missing} as well")


# --- key files -------------------------------------------------------------

def _check_z85_key(key: bytes | None, path: Path, role: str, what: str) -> bytes:
    if not key:
        raise SecurityError(f"{role} {path}: no {what} found (not a key file made by 'chromacast keys'?)")
    try:
        valid = len(key) == _Z85_KEY_LENGTH and len(z85.decode(key)) == 32
    except (ValueError, KeyError, struct.error):
        valid = False
    if not valid:
        raise SecurityError(f"{role} {path}: the {what} is not a valid 40-character Z85 CurveZMQ key")
    return key


def _read_certificate(path: Path, role: str) -> tuple[bytes | None, bytes | None]:
    path = Path(path).expanduser()
    if not path.is_file():
        problem = "is a folder, not a key file" if path.is_dir() else "not found"
        raise SecurityError(f"{role} {path}: {problem}")
    try:
        return zmq.auth.load_certificate(path)
    except ValueError:  # zmq.auth's way of saying "no public-key line"
        return None, None
    except OSError as exc:
        raise SecurityError(f"{role} {path}: cannot read it ({exc.strerror or exc})") from None


INSECURE_ENV = "CHROMACAST_INSECURE_KEYS"  # =1: warn instead of refusing open key permissions


def _check_permissions(path: Path, role: str, forbidden: int, problem: str, fix: str) -> None:
    """Refuse a key file or folder whose mode has any `forbidden` bit (others could read a
    secret key, or swap in their own keys); only a warning under the override."""
    if os.name != "posix":
        return
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return  # reported by the read that follows
    if not mode & forbidden:
        return
    text = f"{role} {path}: {problem} (mode {mode:04o})"
    if os.environ.get(INSECURE_ENV) == "1":
        log.warning("%s; used anyway (%s=1)", text, INSECURE_ENV)
        return
    raise SecurityError(f"{text}; {fix}, or set {INSECURE_ENV}=1 (view, record: --insecure-keys) "
                        "to use it anyway")


def load_secret_key_file(path: str | os.PathLike[str], role: str = "secret key file") -> tuple[bytes, bytes]:
    """Return (public, secret) Z85 keys from a ``.key_secret`` file, which only its owner may read."""
    public, secret = _read_certificate(Path(path), role)
    if public and not secret:
        raise SecurityError(f"{role} {path}: holds only a public key; give the "
                            f"{SECRET_SUFFIX} file made by 'chromacast keys'")
    keys = (_check_z85_key(public, Path(path), role, "public key"),
            _check_z85_key(secret, Path(path), role, "secret key"))
    _check_permissions(Path(path).expanduser(), role, 0o077, "other users can read or change it",
                       f"chmod 600 {Path(path).expanduser()}")
    return keys


def load_public_key_file(path: str | os.PathLike[str], role: str = "public key file") -> bytes:
    """Return the Z85 public key from a ``.key`` (or ``.key_secret``) file."""
    public, _ = _read_certificate(Path(path), role)
    return _check_z85_key(public, Path(path), role, "public key")


def load_allowed_clients(folder: str | os.PathLike[str]) -> list[bytes]:
    """Check every ``*.key`` in the folder and return the public keys.

    zmq.auth's own loader logs and skips a bad folder, which would silently
    lock every subscriber out; checking first turns that into a clear error.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise SecurityError(f"allowed clients folder {folder}: not found or not a folder")
    _check_permissions(folder, "allowed clients folder", 0o022, "other users can add keys to it",
                       f"chmod go-w {folder}")
    key_files = sorted(folder.glob(f"*{PUBLIC_SUFFIX}"))
    for key_file in key_files:
        _check_permissions(key_file, "allowed client key", 0o022, "other users can change it",
                           f"chmod go-w {key_file}")
    if not key_files:
        raise SecurityError(f"allowed clients folder {folder}: no client public keys "
                            f"(*{PUBLIC_SUFFIX} files); copy each subscriber's NAME{PUBLIC_SUFFIX} there")
    return [load_public_key_file(f, "allowed client key") for f in key_files]


# --- sockets ---------------------------------------------------------------

def _require_unused(socket: zmq.Socket, role: str) -> None:
    if socket.getsockopt(zmq.LAST_ENDPOINT):
        raise SecurityError(f"{role}: secure the socket before it binds or connects")


def secure_publisher(context: zmq.Context, socket: zmq.Socket,
                     server_secret_file: str | os.PathLike[str],
                     allowed_clients_dir: str | os.PathLike[str]) -> ThreadAuthenticator:
    """Make ``socket`` a CURVE server that admits only the allowed client keys.

    Starts a ZAP authenticator thread on ``context`` (one per context) and
    returns it; call its ``stop()`` on shutdown, before ``context.term()``.
    The allowed-clients folder is read once, here.
    """
    _require_unused(socket, "publisher")
    public, secret = load_secret_key_file(server_secret_file, "server secret key file")
    allowed = load_allowed_clients(allowed_clients_dir)
    authenticator = CountingAuthenticator(context)
    try:
        authenticator.start()
    except zmq.ZMQError as exc:
        authenticator.stop()
        raise SecurityError("publisher: cannot start the key authenticator "
                            f"({exc}); one secured ZeroMQ context per authenticator") from None
    authenticator.configure_curve(domain="*", location=str(Path(allowed_clients_dir).expanduser()))
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True
    log.info("CurveZMQ on: encrypted, only the %d allowed key%s in %s may subscribe", len(allowed),
             "" if len(allowed) == 1 else "s", Path(allowed_clients_dir).expanduser())
    return authenticator


class CountingAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP authenticator, counting the subscribers it refuses (`rejected`) and logging
    the first one and every 100th, so a lockout or a stranger's attempts show in the log."""

    rejected = 0

    def _send_zap_reply(self, request_id: bytes, status_code: bytes, status_text: bytes,
                        user_id: str = "anonymous") -> None:
        if status_code != b"200":
            self.rejected += 1
            if self.rejected == 1 or self.rejected % 100 == 0:
                log.warning("CurveZMQ: refused a subscriber (%s; %d refused so far)",
                            status_text.decode("ascii", "replace").lower(), self.rejected)
        super()._send_zap_reply(request_id, status_code, status_text, user_id)


def secure_subscriber(socket: zmq.Socket, client_secret_file: str | os.PathLike[str],
                      server_public_file: str | os.PathLike[str]) -> None:
    """Make ``socket`` a CURVE client with its own key pair, trusting one server key."""
    _require_unused(socket, "subscriber")
    _subscriber_keys_setter(client_secret_file, server_public_file)(socket)


def subscriber_socket_setup(security: SecurityConfig | None) -> Callable[[zmq.Socket], None] | None:
    """A ``socket_setup`` hook for a SUB socket (stream.subscribers.Subscriber), or None
    without subscriber keys. The key files are read and checked now, so a bad file is
    reported before any socket exists."""
    if security is None or not security.secures_subscriber:
        return None
    return _subscriber_keys_setter(security.client_secret_key, security.server_public_key)


def _subscriber_keys_setter(client_secret_file: str | os.PathLike[str],
                            server_public_file: str | os.PathLike[str]) -> Callable[[zmq.Socket], None]:
    public, secret = load_secret_key_file(client_secret_file, "client secret key file")
    server_public = load_public_key_file(server_public_file, "server public key file")

    def apply(socket: zmq.Socket) -> None:
        socket.curve_secretkey = secret
        socket.curve_publickey = public
        socket.curve_serverkey = server_public

    return apply


# --- subscriber command-line options ---------------------------------------

def add_subscriber_key_options(parser: argparse.ArgumentParser) -> None:
    """Add --server-key / --client-key to a subscriber command (view, record)."""
    group = parser.add_argument_group("CurveZMQ (see docs/security.md)")
    group.add_argument("--server-key", type=Path, metavar="FILE",
                       help=f"the publisher's public key (NAME{PUBLIC_SUFFIX})")
    group.add_argument("--client-key", type=Path, metavar="FILE",
                       help=f"this subscriber's key pair (NAME{SECRET_SUFFIX})")
    group.add_argument("--insecure-keys", action="store_true",
                       help="use a secret key that other users can read (a warning instead of an error)")


def subscriber_security_from_args(args: argparse.Namespace) -> SecurityConfig | None:
    """The SecurityConfig the two options ask for, or None when neither is given."""
    if getattr(args, "insecure_keys", False):
        os.environ[INSECURE_ENV] = "1"
    if args.server_key is None and args.client_key is None:
        return None
    if args.server_key is None or args.client_key is None:
        raise SecurityError("--server-key and --client-key go together")
    return SecurityConfig(client_secret_key=args.client_key, server_public_key=args.server_key)


# --- `chromacast keys` -----------------------------------------------------

def _keys_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chromacast keys",
        description="Create a CurveZMQ key pair: NAME.key (public, share it) and "
                    "NAME.key_secret (private, keep it on this machine).")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="folder for the two key files (created if missing)")
    parser.add_argument("--name", default="chromacast",
                        help="base name of the files (default: chromacast)")
    parser.add_argument("--force", action="store_true", help="replace existing key files")
    add_verbosity_options(parser)
    return parser


def create_key_pair(out_dir: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret into out_dir; return (public, secret) paths."""
    if not name or name in (".", "..") or os.sep in name or (os.altsep and os.altsep in name):
        raise SecurityError(f"--name {name!r}: give a plain file name, without folders")
    public_file = out_dir / f"{name}{PUBLIC_SUFFIX}"
    secret_file = out_dir / f"{name}{SECRET_SUFFIX}"
    existing = [str(p) for p in (public_file, secret_file) if p.exists()]
    if existing and not force:
        raise SecurityError(f"{', '.join(existing)} already exists; use --force to replace")
    public, secret = zmq.curve_keypair()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_certificate(public_file, public, None, 0o644)
        _write_certificate(secret_file, public, secret, 0o600)
    except OSError as exc:
        raise KeyWriteError(f"cannot write keys into {out_dir}: {exc.strerror or exc}") from None
    return public_file, secret_file


class KeyWriteError(SecurityError):
    """The key files could not be written (a runtime failure, not bad input)."""


def _write_certificate(path: Path, public: bytes, secret: bytes | None, mode: int) -> None:
    """A czmq certificate file (the format zmq.auth reads). It is created with its final mode
    under a fresh name and renamed over `path`, so a secret key is never readable by others,
    not even for a moment and whatever the umask."""
    lines = ["#   ZeroMQ CURVE " + ("**Secret** Certificate" if secret else "Public Certificate"),
             "#   made by 'chromacast keys'" + ("; keep it private" if secret else ""), "",
             "metadata", "curve", f'    public-key = "{public.decode("ascii")}"']
    if secret:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits off a public key's 0644
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def keys_main(argv: list[str]) -> int:
    args = _keys_parser().parse_args(argv)
    setup_logging(verbosity(args))
    try:
        public_file, secret_file = create_key_pair(args.out.expanduser(), args.name, args.force)
    except SecurityError as exc:
        error_line("keys", str(exc))
        return EXIT_FAILURE if isinstance(exc, KeyWriteError) else EXIT_USAGE
    print(f"public key: {public_file}  (give it to the other side)")
    print(f"secret key: {secret_file}  (keep it private)")
    return 0
