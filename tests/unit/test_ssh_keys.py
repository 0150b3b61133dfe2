"""Parsing users' SSH public keys, checked against keys and fingerprints made by the real ssh-keygen."""

from __future__ import annotations

import base64
import re
import struct
import subprocess
from pathlib import Path

import pytest

from gateway.accounts.models import SshKey
from gateway.accounts.ssh_keys import (
    KEY_TYPES,
    InvalidKey,
    ParsedKey,
    authorized_keys_line,
    fingerprint,
    line_name,
    parse_public_key,
)

pytestmark = pytest.mark.unit

# ssh-keygen -lf: "256 SHA256:... comment (ED25519)"
_LISTING = re.compile(r"^(\d+) (SHA256:[A-Za-z0-9+/]+) (.*) \(([A-Z0-9-]+)\)$")


def keygen(directory: Path, key_type: str, bits: int | None = None, comment: str = "alice@laptop") -> str:
    """A new key pair made by ssh-keygen; returns the public key line."""
    path = directory / f"id_{key_type}_{bits or 0}"
    args = ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", comment, "-f", str(path)]
    if bits:
        args += ["-b", str(bits)]
    subprocess.run(args, check=True, capture_output=True)
    return path.with_suffix(".pub").read_text()


def listing(directory: Path, line: str) -> tuple[int, str, str, str]:
    """What ``ssh-keygen -lf`` says of a public key line: bits, fingerprint, comment, type label."""
    path = directory / "listed.pub"
    path.write_text(line)
    out = subprocess.run(["ssh-keygen", "-lf", str(path)], check=True, capture_output=True, text=True).stdout.strip()
    match = _LISTING.match(out)
    assert match, out
    return int(match[1]), match[2], match[3], match[4]


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _strings(blob: bytes) -> list[bytes]:
    out, at = [], 0
    while at < len(blob):
        (n,) = struct.unpack_from(">I", blob, at)
        out.append(blob[at + 4 : at + 4 + n])
        at += 4 + n
    return out


def _blob(line: str) -> bytes:
    return base64.b64decode(line.split()[1])


def _line(key_type: str, blob: bytes, comment: str = "") -> str:
    return f"{key_type} {base64.b64encode(blob).decode()} {comment}".strip() + "\n"


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ssh-keys")


@pytest.fixture(scope="module")
def keys(keydir: Path) -> dict[str, str]:
    """Real keys, one per accepted and refused kind; security keys are built from real ed25519/ECDSA points
    (ssh-keygen makes those only with a FIDO token, but lists their public keys like any other)."""
    made = {
        "ed25519": keygen(keydir, "ed25519"),
        "ecdsa256": keygen(keydir, "ecdsa", 256),
        "ecdsa384": keygen(keydir, "ecdsa", 384),
        "ecdsa521": keygen(keydir, "ecdsa", 521),
        "rsa2048": keygen(keydir, "rsa", 2048),
        "rsa3072": keygen(keydir, "rsa", 3072),
    }
    ed_point = _strings(_blob(made["ed25519"]))[1]
    sk_ed = _string(b"sk-ssh-ed25519@openssh.com") + _string(ed_point) + _string(b"ssh:")
    made["sk-ed25519"] = _line("sk-ssh-ed25519@openssh.com", sk_ed, "alice@yubikey")
    ec_point = _strings(_blob(made["ecdsa256"]))[2]
    sk_ec = _string(b"sk-ecdsa-sha2-nistp256@openssh.com") + _string(b"nistp256") + _string(ec_point)
    made["sk-ecdsa"] = _line("sk-ecdsa-sha2-nistp256@openssh.com", sk_ec + _string(b"ssh:"), "alice@yubikey")
    return made


ACCEPTED = ["ed25519", "ecdsa256", "ecdsa384", "ecdsa521", "rsa3072", "sk-ed25519", "sk-ecdsa"]


@pytest.mark.parametrize("kind", ACCEPTED)
def test_accepted_keys_match_what_ssh_keygen_lists(kind: str, keys: dict[str, str], keydir: Path) -> None:
    line = keys[kind]
    bits, fp, comment, label = listing(keydir, line)
    parsed = parse_public_key(line)
    assert (parsed.bits, parsed.fingerprint, parsed.comment) == (bits, fp, comment)
    assert KEY_TYPES[parsed.key_type] == label
    assert parsed.public_key == " ".join(line.split()[:2])
    # the stored form (no comment) is still a key ssh-keygen reads, with the same fingerprint
    assert listing(keydir, parsed.public_key + " x")[:2] == (bits, fp)


def test_sizes_are_those_ssh_keygen_shows(keys: dict[str, str]) -> None:
    sizes = {kind: parse_public_key(keys[kind]).bits for kind in ACCEPTED}
    assert sizes == {
        "ed25519": 256,
        "ecdsa256": 256,
        "ecdsa384": 384,
        "ecdsa521": 521,
        "rsa3072": 3072,
        "sk-ed25519": 256,
        "sk-ecdsa": 256,
    }


def test_separators_and_surrounding_whitespace(keys: dict[str, str]) -> None:
    kind, data, comment = keys["ed25519"].split()
    expected = parse_public_key(keys["ed25519"])
    for text in (f"  {kind}\t{data}  {comment}\n", f"{kind} {data}\r\n", f"{kind}  {data}"):
        parsed = parse_public_key(text)
        assert parsed.fingerprint == expected.fingerprint and parsed.public_key == expected.public_key
    assert parse_public_key(f"{kind} {data}").comment is None
    assert parse_public_key(f"{kind} {data} two words here").comment == "two words here"


def _refused(text: str, *fragments: str) -> str:
    with pytest.raises(InvalidKey) as caught:
        parse_public_key(text)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_rsa_under_3072_bits_is_refused_with_a_clear_message(keys: dict[str, str]) -> None:
    _refused(keys["rsa2048"], "at least 3072 bits", "has 2048", "ssh-keygen -t ed25519")


def test_dsa_is_refused(keydir: Path) -> None:
    try:
        line = keygen(keydir, "dsa")
    except subprocess.CalledProcessError:  # an OpenSSH built without DSA: a key of that type by hand
        line = _line("ssh-dss", _string(b"ssh-dss") + b"".join(_string(b"\x01" * 20) for _ in range(4)))
    _refused(line, "DSA")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n",
        "hello world",
        "AAAAC3NzaC1lZDI1NTE5AAAAI",
        "ssh-ed25519",
        "ssh-ed25519 ",
        "ssh-ed25519 not*base64!",
        "ssh-ed25519 QUJD",  # valid base64, not a key
        "rsa-sha2-512 AAAA",
        "ecdsa-sha2-nistp999 AAAA",
    ],
)
def test_garbage_is_refused(text: str) -> None:
    _refused(text)


def test_garbage_is_not_repeated_in_the_message() -> None:
    secret = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ"  # what a pasted private key's body looks like
    assert secret not in _refused(f"{secret} more", "must start with")


def test_truncated_base64_is_refused(keys: dict[str, str]) -> None:
    kind, data = keys["ed25519"].split()[:2]
    for cut in (1, 4, 8, 20, len(data) - 4):
        _refused(f"{kind} {data[:-cut]}")


def test_declared_type_must_be_the_blob_type(keys: dict[str, str]) -> None:
    ed_data = keys["ed25519"].split()[1]
    for declared in ("ssh-rsa", "ecdsa-sha2-nistp256", "sk-ssh-ed25519@openssh.com"):
        _refused(f"{declared} {ed_data}", "ssh-ed25519", declared)
    _refused(f"ecdsa-sha2-nistp256 {keys['ecdsa384'].split()[1]}", "ecdsa-sha2-nistp384")
    _refused(f"ssh-ed25519 {keys['sk-ed25519'].split()[1]}", "sk-ssh-ed25519@openssh.com")


def test_bad_key_material_is_refused(keys: dict[str, str]) -> None:
    ed_blob = _blob(keys["ed25519"])
    _refused(_line("ssh-ed25519", ed_blob + _string(b"extra")), "trailing")
    _refused(_line("ssh-ed25519", _string(b"ssh-ed25519") + _string(b"\x01" * 31)), "32 bytes")
    _type, curve, point = _strings(_blob(keys["ecdsa256"]))
    off_curve = point[:-1] + bytes([point[-1] ^ 1])
    _refused(_line("ecdsa-sha2-nistp256", _string(b"ecdsa-sha2-nistp256") + _string(curve) + _string(off_curve)))
    compressed = bytes([2 + point[-1] % 2]) + point[1:33]
    _refused(
        _line("ecdsa-sha2-nistp256", _string(b"ecdsa-sha2-nistp256") + _string(curve) + _string(compressed)),
        "uncompressed",
    )
    _refused(
        _line("ecdsa-sha2-nistp256", _string(b"ecdsa-sha2-nistp256") + _string(b"nistp384") + _string(point)),
        "curve",
    )
    sk_no_application = _string(b"sk-ssh-ed25519@openssh.com") + _string(_strings(ed_blob)[1])
    _refused(_line("sk-ssh-ed25519@openssh.com", sk_no_application), "truncated")
    _rsa_type, _e, n = _strings(_blob(keys["rsa3072"]))
    _refused(_line("ssh-rsa", _string(b"ssh-rsa") + _string(b"\x02") + _string(n)), "RSA")


@pytest.mark.parametrize(
    "prefix",
    [
        'command="/bin/sh" ',
        "no-pty ",
        "restrict ",
        'restrict,command="echo hi there" ',
        'from="10.0.0.0/8",no-agent-forwarding ',
        'environment="PATH=/tmp" ',
        'permitopen="host:22" ',
    ],
)
def test_authorized_keys_options_are_refused(prefix: str, keys: dict[str, str]) -> None:
    _refused(prefix + keys["ed25519"], "options")


def test_several_lines_and_control_characters_are_refused(keys: dict[str, str]) -> None:
    kind, data, comment = keys["ed25519"].split()
    _refused(keys["ed25519"] + keys["ecdsa256"], "one key line")
    _refused(f"{kind} {data[:20]}\n{data[20:]}", "one key line")
    _refused(f"{kind} {data} {comment}\nno-pty {kind} {data}", "one key line")
    _refused(f"{kind} {data} evil\x00comment", "control")
    _refused(f"{kind} {data} evil\x1b[2Jcomment", "control")
    _refused(f"{kind} {data} split\u2028comment", "unprintable")


def test_other_formats_say_what_to_send(keydir: Path, keys: dict[str, str]) -> None:
    private = (keydir / "id_ed25519_0").read_text()
    message = _refused(private, "PRIVATE")
    assert "AAAA" not in message
    rfc4716 = subprocess.run(
        ["ssh-keygen", "-e", "-f", str(keydir / "id_ed25519_0.pub")], check=True, capture_output=True, text=True
    ).stdout
    _refused(rfc4716, "ssh-keygen -i")
    pem = subprocess.run(
        ["ssh-keygen", "-e", "-m", "PKCS8", "-f", str(keydir / "id_ecdsa_256.pub")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    _refused(pem, "PEM")
    cert_type = "ssh-ed25519-cert-v01@openssh.com"
    _refused(f"{cert_type} {keys['ed25519'].split()[1]}", "certificates")


def test_fingerprint_is_unpadded_sha256() -> None:
    fp = fingerprint(b"")
    assert fp == "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU" and not fp.endswith("=")


def test_authorized_keys_lines_carry_no_options_and_a_safe_name(keys: dict[str, str]) -> None:
    parsed: ParsedKey = parse_public_key(keys["ed25519"])
    key = SshKey(name='a "b"\tc;d\\e $(x) é', public_key=parsed.public_key, key_type=parsed.key_type)
    line = authorized_keys_line(key)
    kind, data, name = line.split(" ")
    assert f"{kind} {data}" == parsed.public_key
    assert name == "a__b__c_d_e___x___" and re.fullmatch(r"[A-Za-z0-9._@:+=,/-]+", name)
    assert line_name("alice@laptop") == "alice@laptop"
    assert line_name(parsed.fingerprint) == parsed.fingerprint
    assert line_name("SHA256:a/b+c") == "SHA256:a/b+c"
    assert line_name("") == "key"
