"""``remotegpu dataset`` / ``remotegpu model`` as a researcher uses them: the CLI of a non-root POSIX user against a
real ``remotegpu serve`` (SQLite and PostgreSQL) whose storage source is SeaweedFS store A, reached through a
TCP proxy here that slows the bytes going up (so an upload can be interrupted half-way) and counts them (so a
resumed upload is seen to send less). The upload is stopped with Ctrl-C (SIGINT to its process group, as a
terminal sends it), then SIGKILLed, then run to the end; the manifest's SHA-256s are the local files', and a
download gets the same bytes."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.client.data_commands import human_bytes
from tests.cli_runner import operator_user, run_cli_as, user_env, user_venv
from tests.s3 import Stores

pytestmark = pytest.mark.integration

operator = pytest.fixture(scope="module")(operator_user)

BIG = 70 * 1000 * 1000
"""The big file: 9 parts of 8 MiB as the gateway plans them."""
SLOW = 6 * 1000 * 1000
"""Bytes per second the proxy lets through towards the store while an upload is to be interrupted (slow enough for
the test, polling on a loaded machine, to see a part land long before the last one: ~12 s for the 70 MB)."""
SECRET_KEY = base64.b64encode(os.urandom(32)).decode()


class SlowProxy:
    """A TCP proxy on 127.0.0.1 in front of a store: client-to-store bytes are paced to ``rate`` per second
    (None: as fast as they come) and counted in ``upstream``."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.rate: float | None = None
        self.upstream = 0
        self.lock = threading.Lock()
        self.clock = 0.0
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            store = socket.create_connection(self.target)
            self.sockets += [client, store]
            threading.Thread(target=self._pipe, args=(client, store, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(store, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            with contextlib.suppress(OSError):  # either side reset: the finally ends the connection
                while data := src.recv(64 * 1024):
                    if up:
                        self._pace(len(data))
                    dst.sendall(data)
        finally:
            for s in (src, dst):  # either side gone: the connection is over (HTTP never half-closes)
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _pace(self, count: int) -> None:
        with self.lock:
            self.upstream += count
            if self.rate is None:
                return
            now = time.monotonic()
            self.clock = max(self.clock, now) + count / self.rate
            due = self.clock
        time.sleep(max(0.0, due - time.monotonic()))

    def settle(self, quiet: float = 0.5) -> int:
        """``upstream`` once nothing has moved for ``quiet`` seconds (a killed client's bytes still in the
        sockets' buffers have drained)."""
        while True:
            seen = self.upstream
            time.sleep(quiet)
            if self.upstream == seen:
                return seen

    def close(self) -> None:
        self.listener.close()
        for s in self.sockets:
            s.close()


@dataclass
class Gateway:
    url: str
    database_url: str
    user: str
    home: Path
    proxy: SlowProxy
    bucket: str
    tokens: dict[str, str] = field(default_factory=dict)

    def env(self, who: str) -> dict[str, str]:
        return {"REMOTEGPU_URL": self.url, "REMOTEGPU_TOKEN": self.tokens[who]}

    def cli(self, who: str, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli_as(self.user, *args, home=str(self.home), env=self.env(who), timeout=300)

    def ok(self, who: str, *args: str) -> str:
        done = self.cli(who, *args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def start(self, who: str, *args: str, log: Path) -> subprocess.Popen[bytes]:
        """The CLI in the background, in a process group of its own (what a terminal's Ctrl-C reaches)."""
        command = ["runuser", "-u", self.user, "--", "env", "-i"]
        command += [f"{k}={v}" for k, v in user_env(str(self.home), self.env(who)).items()]
        with log.open("wb") as out:
            return subprocess.Popen(
                [*command, str(user_venv() / "bin/remotegpu"), *args],
                cwd=self.home,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                # as from a terminal: a runner started in the background (`cmd &`) passes SIGINT on ignored, and a
                # Python that starts with it ignored never raises KeyboardInterrupt
                preexec_fn=_default_sigint,
            )

    def api(self, who: str) -> httpx.Client:
        return httpx.Client(base_url=self.url + "/api/v1", headers={"Authorization": f"Bearer {self.tokens[who]}"})

    def give(self, path: Path) -> None:
        """Hand a tree made here (as root) to the operator, who runs the CLI."""
        ids = self.home.stat().st_uid, self.home.stat().st_gid
        for item in [path, *path.rglob("*")]:
            os.chown(item, *ids, follow_symlinks=False)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gateway(
    request: pytest.FixtureRequest,
    make_database_url: Callable[[str], str],
    operator: tuple[str, str],
    s3_stores: Stores,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    """A gateway whose one storage source is store A behind the proxy; users root (admin) and alice."""
    user, home = operator
    if request.param == "sqlite":
        folder = Path(home, f"db-{uuid.uuid4().hex[:8]}")
        folder.mkdir()
        os.chown(folder, Path(home).stat().st_uid, Path(home).stat().st_gid)
        database_url = f"sqlite:///{folder}/gateway.db"
    else:
        database_url = make_database_url("postgresql")
    bucket = f"cli-{uuid.uuid4().hex[:12]}"
    s3_stores.a.client().create_bucket(Bucket=bucket)
    proxy = SlowProxy(s3_stores.a.ports.s3)
    port = _free_port()
    log = tmp_path_factory.mktemp("dataset-cli") / "serve.log"
    env = {"REMOTEGPU_DATABASE_URL": database_url, "REMOTEGPU_SECRET_KEYS": SECRET_KEY}
    command = ["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in user_env(home, env).items())]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*command, str(user_venv() / "bin/remotegpu"), "serve", "--port", str(port)],
            cwd=home,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    gw = Gateway(f"http://127.0.0.1:{port}", database_url, user, Path(home), proxy, bucket)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(gw.url + "/readyz", timeout=1).status_code == 200:
                    break
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        operator_env = {"REMOTEGPU_DATABASE_URL": database_url}
        for name, admin in (("root", True), ("alice", False)):
            made = run_cli_as(
                user, "admin", "create-user", name, "--no-password", *(["--admin"] * admin), home=home, env=operator_env
            )
            assert made.returncode == 0, made.stderr
            token = run_cli_as(user, "token", "create", name, home=home, env=operator_env)
            assert token.returncode == 0, token.stderr
            gw.tokens[name] = token.stdout.strip()
        a = s3_stores.a
        body = {
            "name": "store-a",
            "type": "generic",
            "endpoint": f"http://127.0.0.1:{proxy.port}",
            "bucket": bucket,
            "access_key": a.access_key,
            "secret_key": a.secret_key,
        }
        with gw.api("root") as api:
            made_source = api.post("/storage-sources", json=body)
            assert made_source.status_code == 201, made_source.text
        yield gw
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proxy.close()
        if s3_stores.a.running:
            s3_stores.a.client().delete_bucket(Bucket=bucket)
        if request.param == "sqlite":
            for path in folder.iterdir():
                path.unlink()
            folder.rmdir()


@pytest.fixture
def lab(gateway: Gateway) -> str:
    slug = f"lab-{uuid.uuid4().hex[:8]}"
    gateway.ok("alice", "workspace", "create", slug)
    return slug


@pytest.fixture
def workdir(gateway: Gateway) -> Iterator[Path]:
    """A folder in the operator's home for the files to upload and the downloads; removed afterwards."""
    path = gateway.home / f"work-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    gateway.give(path)
    yield path
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def make_tree(gateway: Gateway, root: Path) -> dict[str, bytes]:
    """A dataset folder: a 70 MB file, small ones, an empty one, a link inside and one outside; what the version
    must hold (path -> bytes)."""
    files = {
        "README.md": b"# a dataset\n",
        "empty": b"",
        "labels/classes.json": json.dumps({str(n): f"class-{n}" for n in range(100)}).encode(),
        "labels/deep/er/ids.bin": os.urandom(200 * 1024),
        "weights/big.bin": os.urandom(BIG),
    }
    for path, body in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(body)
    (root / "readme-link").symlink_to("README.md")
    (root / "outside-link").symlink_to("/etc/hostname")
    gateway.give(root)
    return {**files, "readme-link": files["README.md"]}


def table(text: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in text.strip().splitlines()]


class Watch:
    """The server's view of one file's open upload (POST the same path, size and SHA-256: it resumes)."""

    def __init__(self, gateway: Gateway, lab: str, name: str, path: str, body: bytes) -> None:
        self.api = gateway.api("alice")
        self.base = f"/workspaces/{lab}/datasets"
        self.name = name
        self.file = {"path": path, "size": len(body), "sha256": sha256(body)}

    def version(self) -> int:
        dataset = self.api.get(self.base, params={"name": self.name}).json()["items"][0]
        self.dataset = dataset["id"]
        versions = self.api.get(f"{self.base}/{self.dataset}/versions").json()
        return int(max(versions, key=lambda v: v["version"])["version"])

    def upload(self) -> dict[str, Any]:
        version = self.version()
        answer = self.api.post(f"{self.base}/{self.dataset}/versions/{version}/uploads", json=self.file)
        assert answer.status_code == 200, answer.text  # never 201: the CLI made it, this resumes it
        upload: dict[str, Any] = answer.json()
        return upload

    def until(self, done: Callable[[dict[str, Any]], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
        deadline = time.monotonic() + 120
        while not done(self.upload()):
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.1)


def wait_for_bytes(gateway: Gateway, count: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while gateway.proxy.upstream < count:
        assert proc.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.05)


def test_an_interrupted_upload_resumes_and_the_version_holds_the_files(
    gateway: Gateway, lab: str, workdir: Path
) -> None:
    name = f"imagenet-{uuid.uuid4().hex[:6]}"
    ws = ("-w", lab)
    tree = workdir / "data"
    tree.mkdir()
    expected = make_tree(gateway, tree)
    total = sum(len(b) for b in expected.values())
    made = gateway.ok("alice", "dataset", "create", name, "--description", "mini", "--tag", "vision", *ws)
    assert made.startswith(f"created dataset {name} in {lab} (")
    upload = ["dataset", "upload", name, str(tree), *ws]
    watch = Watch(gateway, lab, name, "weights/big.bin", expected["weights/big.bin"])

    # 1: Ctrl-C once the store holds a part of the big file (the small ones go first: they sort before it)
    gateway.proxy.rate = SLOW
    log = workdir / "run1.log"
    proc = gateway.start("alice", *upload, "--workers", "4", "--progress", log=log)
    try:
        # the small files and more than 4 parts' bytes through the proxy: with at most 4 parts in flight, one has
        # been sent whole (counted here, not asked of the gateway: on a loaded machine that answer came too late)
        small = total - len(expected["weights/big.bin"])
        wait_for_bytes(gateway, small + 4 * 8 * 1024 * 1024 + 512 * 1024, proc, log)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 130, log.read_text(errors="replace")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    said = log.read_text(errors="replace")
    assert "skipped outside-link (symlink leading outside" in said and "Traceback" not in said
    assert re.search(r"[0-9.]+[kMG]?B/s", said), said  # the bar, with its speed
    assert said.rstrip().splitlines()[-1].endswith("in the store; run the same command again to resume"), said
    first = watch.upload()
    assert first["status"] == "open" and first["part_count"] == 9 and 1 <= len(first["completed_parts"]) < 9
    assert sorted(p["number"] for p in first["parts"]) == sorted(set(range(1, 10)) - set(first["completed_parts"]))

    # 2: again, one part at a time (parts then land one by one, seconds apart), SIGKILLed (no goodbye) once one
    # more is there
    gateway.proxy.rate = SLOW / 2
    log = workdir / "run2.log"
    proc = gateway.start("alice", *upload, "--workers", "1", log=log)
    try:
        watch.until(lambda u: len(u["completed_parts"]) > len(first["completed_parts"]), proc, log)
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert "resuming the upload of dataset" in log.read_text(errors="replace")
    second = watch.upload()
    assert set(first["completed_parts"]) < set(second["completed_parts"]), (first, second)
    assert len(second["completed_parts"]) < 9
    held = sum(min(8 * 1024 * 1024, BIG - (n - 1) * 8 * 1024 * 1024) for n in second["completed_parts"])

    # 3: to the end, at full speed: only what the store lacks goes up
    gateway.proxy.rate = None
    before = gateway.proxy.settle()
    done = gateway.cli("alice", *upload, "--json")
    assert done.returncode == 0, (done.stdout, done.stderr)
    sent_now = gateway.proxy.upstream - before
    assert "B/s" not in done.stderr  # no bar: stderr is not a terminal
    result = json.loads(done.stdout)
    version = result["version"]
    assert version["status"] == "ready" and version["file_count"] == len(expected) and version["size_bytes"] == total
    assert version["primary_source"] == "store-a" and version["replicas"] == ["store-a"]
    assert result["sent_bytes"] + result["already_bytes"] == total
    assert result["already_bytes"] >= held + len(expected["labels/deep/er/ids.bin"])  # resumed, not sent again
    assert result["sent_bytes"] <= BIG - held
    assert result["sent_bytes"] <= sent_now < total - held + 1024 * 1024, (sent_now, result)  # + HTTP's own bytes

    # the manifest is what is on disk here; the store holds the objects with our checksum
    listed = table(gateway.ok("alice", "dataset", "files", name, *ws))
    assert listed[0] == ["PATH", "SIZE", "SHA256"]
    assert {r[0]: (int(r[1]), r[2]) for r in listed[1:]} == {p: (len(b), sha256(b)) for p, b in expected.items()}
    as_json = json.loads(gateway.ok("alice", "dataset", "files", f"{name}:1", "--json", *ws))
    assert [f["path"] for f in as_json] == sorted(expected)

    shown = gateway.ok("alice", "dataset", "show", name, *ws)
    assert f"name:         {name}" in shown and "tags:         vision" in shown
    versions = table(shown.split("\n\n", 1)[1])
    assert versions[0][:6] == ["VERSION", "STATUS", "FILES", "SIZE", "PRIMARY", "REPLICAS"]
    size = human_bytes(total)
    assert versions[1][:6] == ["1", "ready", str(len(expected)), size, "store-a", "store-a"]
    rows = table(gateway.ok("alice", "dataset", "list", *ws))
    assert [r[:5] for r in rows[1:]] == [[name, "1", "ready", str(len(expected)), size]]

    # download: the same bytes; again: nothing fetched; one file alone
    dest = workdir / "out"
    got = gateway.ok("alice", "dataset", "download", name, str(dest), *ws)
    assert (
        got.strip()
        == f"{len(expected)} files of dataset {name} version 1 in {dest} ({size} fetched, 0 B already there)"
    )
    assert {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()} == expected
    again = gateway.ok("alice", "dataset", "download", f"{name}:1", str(dest), *ws)
    assert f"(0 B fetched, {size} already there)" in again
    one = workdir / "one"
    gateway.ok("alice", "dataset", "download", name, str(one), "--path", "labels", *ws)
    assert sorted(str(p.relative_to(one)) for p in one.rglob("*") if p.is_file()) == [
        "labels/classes.json",
        "labels/deep/er/ids.bin",
    ]

    # a ready version never changes: the next upload makes version 2, with only what was sent this time
    (workdir / "extra.txt").write_bytes(b"v2")
    gateway.give(workdir / "extra.txt")
    second_version = json.loads(
        gateway.ok("alice", "dataset", "upload", name, str(workdir / "extra.txt"), "--json", *ws)
    )
    assert second_version["version"]["version"] == 2 and second_version["version"]["file_count"] == 1
    assert [f["path"] for f in json.loads(gateway.ok("alice", "dataset", "files", name, "--json", *ws))] == [
        "extra.txt"
    ]


def test_models_too_and_mistakes_are_one_line(gateway: Gateway, lab: str, workdir: Path) -> None:
    ws = ("-w", lab)
    (workdir / "model.safetensors").write_bytes(os.urandom(1000))
    (workdir / "bad\\name").write_bytes(b"x")
    gateway.give(workdir)

    one_line_error(
        gateway.cli("alice", "model", "upload", "llama", str(workdir / "model.safetensors"), *ws),
        "no model 'llama' in workspace",
        "remotegpu model create llama",
    )
    gateway.ok("alice", "model", "create", "llama", *ws)
    one_line_error(gateway.cli("alice", "model", "create", "llama", *ws), "already exists")
    one_line_error(gateway.cli("alice", "model", "files", "llama", *ws), "has no versions yet")
    refused = gateway.cli("alice", "model", "upload", "llama", str(workdir), *ws)
    one_line_error(refused, "refusing to upload 'bad\\\\name'", "backslash")
    with gateway.api("alice") as api:
        model = api.get(f"/workspaces/{lab}/models", params={"name": "llama"}).json()["items"][0]
        assert api.get(f"/workspaces/{lab}/models/{model['id']}/versions").json() == []  # nothing was sent

    done = gateway.ok("alice", "model", "upload", "llama", str(workdir / "model.safetensors"), *ws)
    assert done.startswith("model llama version 1: ready, 1 files, 1000 B (1000 B sent now, 0 B already in the store)")
    listed = table(gateway.ok("alice", "model", "files", "llama:1", *ws))
    assert listed[1] == ["model.safetensors", "1000", sha256((workdir / "model.safetensors").read_bytes())]
    one_line_error(gateway.cli("alice", "model", "files", "llama:7", *ws), "no version 7")
    one_line_error(
        gateway.cli("alice", "model", "download", "llama", str(workdir / "d"), "--path", "nope", *ws), "no file 'nope'"
    )
    one_line_error(
        gateway.cli("alice", "model", "rm-file", "llama", "model.safetensors", *ws), "no version of model llama is"
    )
    # a file sent into a version still uploading, taken out again before it is finished
    with gateway.api("alice") as api:
        versions = f"/workspaces/{lab}/models/{model['id']}/versions"
        assert api.post(versions, json={}).status_code == 201
        body = {"path": "notes.txt", "size": 3, "sha256": sha256(b"abc")}
        up = api.post(f"{versions}/2/uploads", json=body).json()
        assert httpx.put(up["parts"][0]["url"], content=b"abc").status_code == 200
        assert api.post(f"{versions}/2/uploads/{up['id']}/complete").status_code == 200
        assert gateway.ok("alice", "model", "rm-file", "llama", "notes.txt", *ws) == (
            "removed notes.txt from model llama version 2\n"
        )
        assert api.get(f"{versions}/2/files").json() == []
    # the datasets are another kind: no model leaks into them
    assert table(gateway.ok("alice", "dataset", "list", *ws)) == [
        ["NAME", "LATEST", "STATUS", "FILES", "SIZE", "REPLICAS", "TAGS", "OWNER", "CREATED"]
    ]


def test_an_upload_the_store_lost_starts_over(gateway: Gateway, lab: str, workdir: Path, s3_stores: Stores) -> None:
    """The store dropped the multipart upload (its lifecycle rules, an operator): the gateway refuses to resume
    it (409), so the CLI aborts it and sends the file again, rather than failing the same way every time."""
    ws = ("-w", lab)
    body = os.urandom(20 * 1000 * 1000)  # 3 parts
    (workdir / "weights.bin").write_bytes(body)
    gateway.give(workdir)
    gateway.ok("alice", "dataset", "create", "lost", *ws)
    watch = Watch(gateway, lab, "lost", "weights.bin", body)
    gateway.proxy.rate = SLOW / 2
    log = workdir / "run1.log"
    proc = gateway.start("alice", "dataset", "upload", "lost", str(workdir / "weights.bin"), *ws, log=log)
    try:
        wait_for_bytes(gateway, gateway.proxy.upstream + 2 * 1024 * 1024, proc, log)
        watch.until(lambda u: bool(u["completed_parts"]), proc, log)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    gateway.proxy.rate = None
    store = s3_stores.a.client()
    open_ones = store.list_multipart_uploads(Bucket=gateway.bucket).get("Uploads", [])
    assert [u["Key"].rsplit("/", 1)[-1] for u in open_ones] == ["weights.bin"]
    store.abort_multipart_upload(Bucket=gateway.bucket, Key=open_ones[0]["Key"], UploadId=open_ones[0]["UploadId"])

    done = json.loads(gateway.ok("alice", "dataset", "upload", "lost", str(workdir / "weights.bin"), "--json", *ws))
    assert done["version"]["status"] == "ready" and done["sent_bytes"] == len(body) and done["already_bytes"] == 0
    listed = json.loads(gateway.ok("alice", "dataset", "files", "lost", "--json", *ws))
    assert listed == [{"path": "weights.bin", "size": len(body), "sha256": sha256(body)}]
    assert store.list_multipart_uploads(Bucket=gateway.bucket).get("Uploads", []) == []
