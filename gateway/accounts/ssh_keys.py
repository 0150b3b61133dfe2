"""Users' SSH public keys: the only keys the sshd of their environments accepts.

Parsing is pure (:func:`parse_public_key`): one OpenSSH public key line, ``type base64 [comment]``, checked as
sshd would read it, with its fingerprint and size as ``ssh-keygen -lf`` prints them. authorized_keys options
(``command=``, ``permitopen=``...) are refused rather than dropped: the caller should know that what they sent is
not what sshd will apply. The stored key is ``type base64`` only; the comment becomes the key's name when no name
is given, and lines for sshd come from :func:`authorized_keys` / :func:`authorized_keys_sync`.

The same key may be registered by two users: each environment's sshd accepts only its owner's keys, so a key
shared between accounts never makes a login ambiguous. A user registers a key once (409 the second time).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

import msgspec
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from litestar import Controller, delete, get, post
from litestar.params import JSONBody, PathParameter
from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from gateway.accounts.models import SshKey, User
from gateway.actor import Actor
from gateway.audit.writer import record
from gateway.dependencies import BEARER, CurrentActor, DbSession
from gateway.errors import Conflict, InvalidInput, NotFound
from gateway.schemas import whole

MIN_RSA_BITS = 3072
MAX_RSA_BITS = 16384  # OpenSSH's own limit (SSH_RSA_MAXIMUM_MODULUS_SIZE)
MAX_KEYS_PER_USER = 50
MAX_LINE = 16384
NAME_LENGTH = 64

KEY_TYPES: dict[str, str] = {
    "ssh-ed25519": "ED25519",
    "ecdsa-sha2-nistp256": "ECDSA",
    "ecdsa-sha2-nistp384": "ECDSA",
    "ecdsa-sha2-nistp521": "ECDSA",
    "ssh-rsa": "RSA",
    "sk-ssh-ed25519@openssh.com": "ED25519-SK",
    "sk-ecdsa-sha2-nistp256@openssh.com": "ECDSA-SK",
}
"""The accepted types, with the label ``ssh-keygen -l`` prints after the comment."""

_CURVES: dict[str, ec.EllipticCurve] = {
    "nistp256": ec.SECP256R1(),
    "nistp384": ec.SECP384R1(),
    "nistp521": ec.SECP521R1(),
}

_REFUSED: dict[str, str] = {
    "ssh-dss": "DSA keys are refused (OpenSSH disabled them as too weak); use ssh-ed25519",
}
_SUPPORTED = ", ".join(KEY_TYPES)

# authorized_keys options sshd knows; a line starting with one of them is a line with options.
_OPTION = re.compile(
    r"(?:agent-forwarding|cert-authority|command|environment|expiry-time|from|no-agent-forwarding"
    r"|no-port-forwarding|no-pty|no-touch-required|no-user-rc|no-x11-forwarding|permitlisten|permitopen"
    r"|port-forwarding|principals|pty|restrict|tunnel|user-rc|verify-required|x11-forwarding)(?:[=,]|$)",
    re.IGNORECASE,
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but tab and newline (newlines: their own message)
_UNSAFE_IN_LINE = re.compile(r"[^A-Za-z0-9._@:+=,/-]")  # a fingerprint (the default name) stays whole


class InvalidKey(ValueError):
    """The text is not an acceptable public key; the message says why (and never repeats the input)."""


@dataclass(frozen=True)
class ParsedKey:
    key_type: str
    blob: bytes
    bits: int
    comment: str | None

    @property
    def public_key(self) -> str:
        """``type base64`` as authorized_keys takes it (the base64 re-encoded, so always canonical)."""
        return f"{self.key_type} {base64.b64encode(self.blob).decode()}"

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)


def fingerprint(blob: bytes) -> str:
    """``SHA256:`` and the unpadded base64 of the blob's SHA-256, as ``ssh-keygen -lf`` prints it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


class _Reader:
    """SSH wire format (RFC 4251 §5): uint32-length-prefixed strings and mpints."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def string(self, what: str) -> bytes:
        if self.at + 4 > len(self.data):
            raise InvalidKey(f"the key data is truncated (no {what})")
        (length,) = struct.unpack_from(">I", self.data, self.at)
        start = self.at + 4
        if start + length > len(self.data):
            raise InvalidKey(f"the key data is truncated (in its {what})")
        self.at = start + length
        return self.data[start : self.at]

    def mpint(self, what: str) -> int:
        raw = self.string(what)
        if raw and raw[0] & 0x80:
            raise InvalidKey(f"the key's {what} is negative")
        return int.from_bytes(raw, "big")

    def end(self) -> None:
        if self.at != len(self.data):
            raise InvalidKey("the key data has trailing bytes after the key")


def _type_of_line_start(first: str, rest: str) -> None:
    """Explain why a line that does not start with an accepted type is refused."""
    if first in _REFUSED:
        raise InvalidKey(_REFUSED[first])
    if first.endswith("-cert-v01@openssh.com"):
        raise InvalidKey("certificates are not accepted: send the plain public key (the .pub file)")
    later = rest.split()
    if _OPTION.match(first) or any(t in KEY_TYPES or t in _REFUSED for t in later):
        raise InvalidKey(
            "authorized_keys options (command=, from=, no-pty, ...) are not accepted: send only 'type base64 [comment]'"
        )
    raise InvalidKey(f"not an OpenSSH public key: the line must start with one of {_SUPPORTED}")


def _check_material(key_type: str, blob: bytes) -> int:
    """Walk the blob as OpenSSH does, check the key itself, and return its size in bits as ssh-keygen shows it."""
    reader = _Reader(blob)
    inner = reader.string("type")
    if inner != key_type.encode():
        shown = inner.decode("latin-1")
        if not (inner.isascii() and shown.isprintable() and 0 < len(shown) <= 64):
            shown = "another type"
        raise InvalidKey(f"the key data holds a key of type {shown} but the line says {key_type}")
    bits: int
    if key_type in ("ssh-ed25519", "sk-ssh-ed25519@openssh.com"):
        point = reader.string("public key")
        if len(point) != 32:
            raise InvalidKey("an Ed25519 public key is 32 bytes")
        Ed25519PublicKey.from_public_bytes(point)
        bits = 256
    elif key_type.startswith(("ecdsa-sha2-", "sk-ecdsa-sha2-")):
        expected = key_type.removeprefix("sk-").removeprefix("ecdsa-sha2-").removesuffix("@openssh.com")
        curve_name = reader.string("curve name")
        if curve_name != expected.encode():
            raise InvalidKey(f"the key's curve does not match its type {key_type!r}")
        curve = _CURVES[expected]
        point = reader.string("public point")
        if not point.startswith(b"\x04"):
            raise InvalidKey("the key's public point is not in the uncompressed form OpenSSH writes")
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
        except ValueError as exc:
            raise InvalidKey("the key's public point is not on its curve") from exc
        bits = curve.key_size
    else:  # ssh-rsa
        exponent, modulus = reader.mpint("exponent"), reader.mpint("modulus")
        if exponent < 3 or exponent % 2 == 0 or modulus % 2 == 0:
            raise InvalidKey("not a valid RSA public key")
        bits = modulus.bit_length()
        if bits < MIN_RSA_BITS:
            raise InvalidKey(
                f"RSA keys need at least {MIN_RSA_BITS} bits and this one has {bits}: "
                "make a new key with 'ssh-keygen -t ed25519' (or 'ssh-keygen -t rsa -b 4096')"
            )
        if bits > MAX_RSA_BITS:
            raise InvalidKey(f"RSA keys of more than {MAX_RSA_BITS} bits are not accepted by OpenSSH")
    if key_type.startswith("sk-"):
        application = reader.string("application")
        if not application:
            raise InvalidKey("a security key's public key names its application (usually 'ssh:')")
    reader.end()
    if not key_type.startswith("sk-"):
        try:  # cryptography's own parse of the same bytes, the second opinion on what OpenSSH will load
            load_ssh_public_key(f"{key_type} {base64.b64encode(blob).decode()}".encode())
        except (ValueError, TypeError) as exc:
            raise InvalidKey("the key data is not a valid public key of its type") from exc
    return bits


def parse_public_key(text: str) -> ParsedKey:
    """Parse one OpenSSH public key line (surrounding whitespace and a final newline allowed).

    Raises :class:`InvalidKey` for anything sshd would not take as a plain key of an accepted type, for DSA, RSA
    under 3072 bits, certificates, authorized_keys options, and several lines.
    """
    line = text.strip()
    if not line:
        raise InvalidKey("the public key is empty")
    if line.startswith("---- BEGIN SSH2 PUBLIC KEY"):
        raise InvalidKey("this is an RFC 4716 key: convert it with 'ssh-keygen -i -f FILE' and send that line")
    if line.startswith("-----BEGIN"):
        if "PRIVATE KEY" in line.split("\n", 1)[0]:
            raise InvalidKey("this is a PRIVATE key, which must stay secret: send the .pub file next to it")
        raise InvalidKey("a PEM key is not accepted: send the OpenSSH line ('ssh-keygen -y -f FILE' prints it)")
    if "\n" in line or "\r" in line:
        raise InvalidKey("send one key line only (the text has several lines)")
    if _CONTROL.search(line):
        raise InvalidKey("the key line has control characters")
    if len(line) > MAX_LINE:
        raise InvalidKey(f"the key line is longer than {MAX_LINE} characters")
    first, _, rest = line.replace("\t", " ").partition(" ")
    if first not in KEY_TYPES:
        _type_of_line_start(first, rest)
    data, _, comment = rest.lstrip(" ").partition(" ")
    if not data:
        raise InvalidKey("the key's base64 data is missing after its type")
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidKey("the key data is not valid base64 (truncated or mangled?)") from exc
    bits = _check_material(first, blob)
    comment = comment.strip(" ")
    if not comment.isprintable():
        raise InvalidKey("the key's comment has unprintable characters")
    return ParsedKey(key_type=first, blob=blob, bits=bits, comment=comment or None)


def line_name(name: str) -> str:
    """A key's name as the comment of its authorized_keys line: one word of safe characters."""
    return _UNSAFE_IN_LINE.sub("_", name)[:NAME_LENGTH] or "key"


def authorized_keys_line(key: SshKey) -> str:
    return f"{key.public_key} {line_name(key.name)}"


def _name_for(parsed: ParsedKey, name: str | None) -> str:
    if name:
        return name
    if parsed.comment:
        return parsed.comment[:NAME_LENGTH].rstrip() or parsed.fingerprint
    return parsed.fingerprint


# --- schemas

KeyName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=NAME_LENGTH,
        pattern=whole(r"[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x1f\x7f]*"),
        description="defaults to the key's comment, else its fingerprint",
        examples=["laptop"],
    ),
]
PublicKeyText = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=MAX_LINE,
        description=f"one OpenSSH public key line, 'type base64 [comment]' (the .pub file); types: {_SUPPORTED}; "
        f"RSA at least {MIN_RSA_BITS} bits; no authorized_keys options",
        examples=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBhIjhWqDlU7fIgywC6juoumN9WkzmrqgfxAqdEJ2KqG alice@laptop"],
    ),
]


class SshKeyCreate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    public_key: PublicKeyText
    name: KeyName | None = None


class SshKeyOut(msgspec.Struct, kw_only=True):
    id: int
    name: str
    key_type: str
    bits: int
    fingerprint: str
    """``SHA256:...`` as ``ssh-keygen -lf`` prints it."""
    public_key: str
    """``type base64``, without the comment."""
    created_at: datetime

    @classmethod
    def of(cls, key: SshKey) -> SshKeyOut:
        return cls(
            id=key.id,
            name=key.name,
            key_type=key.key_type,
            bits=key.bits,
            fingerprint=key.fingerprint,
            public_key=key.public_key,
            created_at=key.created_at,
        )


# --- services


def _user_id(actor: Actor) -> int:
    if actor.user_id is None:
        raise NotFound("the operator has no account to hold SSH keys")
    return actor.user_id


async def list_keys(session: AsyncSession, actor: Actor) -> list[SshKey]:
    rows = await session.scalars(select(SshKey).where(SshKey.user_id == _user_id(actor)).order_by(SshKey.id))
    return list(rows)


async def add_key(session: AsyncSession, actor: Actor, data: SshKeyCreate) -> SshKey:
    """Register a key of the caller's (400 for a bad or weak key, 409 if they have it already)."""
    user_id = _user_id(actor)
    try:
        parsed = parse_public_key(data.public_key)
    except InvalidKey as exc:
        raise InvalidInput(str(exc), field="public_key") from exc
    # One user's additions one at a time (PostgreSQL; SQLite's writes are serial anyway), so the cap holds.
    await session.execute(select(User.id).where(User.id == user_id).with_for_update())
    held = await session.scalar(select(func.count()).select_from(SshKey).where(SshKey.user_id == user_id))
    if (held or 0) >= MAX_KEYS_PER_USER:
        raise InvalidInput(
            f"you have {MAX_KEYS_PER_USER} SSH keys already, the most an account may hold: delete one first",
            field="public_key",
        )
    duplicate = await session.scalar(
        select(SshKey.id).where(SshKey.user_id == user_id, SshKey.fingerprint == parsed.fingerprint)
    )
    if duplicate is not None:
        raise Conflict(f"you have registered this key already (id {duplicate})", field="public_key")
    key = SshKey(
        user_id=user_id,
        name=_name_for(parsed, data.name),
        key_type=parsed.key_type,
        bits=parsed.bits,
        public_key=parsed.public_key,
        fingerprint=parsed.fingerprint,
    )
    session.add(key)
    try:
        await session.flush()
    except IntegrityError as exc:  # the same key sent twice at once
        await session.rollback()
        raise Conflict("you have registered this key already", field="public_key") from exc
    record(
        session,
        actor,
        "ssh_key.add",
        target_type="ssh_key",
        target=f"{actor.name}/{key.fingerprint}",
        details={"id": key.id, "name": key.name, "key_type": key.key_type, "bits": key.bits},
    )
    await session.commit()
    return key


async def delete_key(session: AsyncSession, actor: Actor, key_id: int) -> None:
    """Remove one of the caller's keys; someone else's id is 404, as if it did not exist."""
    key = await session.scalar(select(SshKey).where(SshKey.id == key_id, SshKey.user_id == _user_id(actor)))
    if key is None:
        raise NotFound(f"SSH key {key_id} not found")
    record(
        session,
        actor,
        "ssh_key.delete",
        target_type="ssh_key",
        target=f"{actor.name}/{key.fingerprint}",
        details={"id": key.id, "name": key.name, "key_type": key.key_type},
    )
    await session.delete(key)
    await session.commit()


def _keys_of(user_id: int) -> Select[SshKey]:
    return select(SshKey).where(SshKey.user_id == user_id).order_by(SshKey.id)


async def authorized_keys(session: AsyncSession, user_id: int) -> list[str]:
    """The authorized_keys lines of a user's sshd: ``type base64 name``, no options, oldest key first."""
    return [authorized_keys_line(k) for k in await session.scalars(_keys_of(user_id))]


def authorized_keys_sync(session: Session, user_id: int) -> list[str]:
    """:func:`authorized_keys` for synchronous sessions (worker, ``Database.run`` units of work)."""
    return [authorized_keys_line(k) for k in session.scalars(_keys_of(user_id))]


# --- routes

KeyId = Annotated[int, PathParameter(ge=1, le=2**31 - 1, description="the key's id")]


class SshKeyController(Controller):
    path = "/api/v1/me/ssh-keys"
    tags = ["auth"]
    security = BEARER

    @get("/", operation_id="listSshKeys", summary="The caller's SSH public keys")
    async def list_ssh_keys(self, db_session: DbSession, actor: CurrentActor) -> list[SshKeyOut]:
        return [SshKeyOut.of(k) for k in await list_keys(db_session, actor)]

    @post("/", operation_id="addSshKey", summary="Register an SSH public key")
    async def add_ssh_key(self, db_session: DbSession, actor: CurrentActor, data: JSONBody[SshKeyCreate]) -> SshKeyOut:
        """The caller's environments' sshd accepts the caller's registered keys and no others."""
        return SshKeyOut.of(await add_key(db_session, actor, data))

    @delete("/{key_id:int}", operation_id="deleteSshKey", summary="Remove an SSH public key")
    async def delete_ssh_key(self, db_session: DbSession, actor: CurrentActor, key_id: KeyId) -> None:
        await delete_key(db_session, actor, key_id)
