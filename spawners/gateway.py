"""GatewaySpawner: a JupyterHub named server is a gateway environment; its session is the Slurm job.

Built on batchspawner's BatchSpawnerBase: its start loop, its single-user side (``batchspawner-singleuser``,
started by the session's supervisor, tells the hub its port through ``/hub/api/batchspawner``) and its traits.
Submit, query and cancel go to the gateway's environments API as the logged-in user, with the token the
authenticator keeps in ``auth_state``. A query reads the gateway's state, which its one poller keeps: no Slurm
call per hub poll. A gateway that does not answer, or a controller it cannot reach, is ``unknown``, which keeps
the server (batchspawner #179/#187): only the gateway saying the session ended stops it.
"""

from __future__ import annotations

import asyncio
import html
from typing import Any
from urllib.parse import quote

from batchspawner import BatchSpawnerBase, JobStatus  # type: ignore[import-untyped]
from traitlets import Float, List, Unicode

from spawners.client import GatewayError, GatewayUnreachable, call

HUB_PREFIXES = ("JUPYTERHUB_", "JPY_")
RESOURCE_FIELDS = ("gpus", "gpu_type", "cpus", "mem_mib", "time_minutes", "partition", "image")
FORM_WORKSPACES = 10
"""The form lists the datasets and models of this many of the user's workspaces at most (two calls each)."""


def first(form: dict[str, list[str]], key: str) -> str:
    values = form.get(key) or [""]
    return values[0].strip()


def user_options_of(form: dict[str, list[str]]) -> dict[str, Any]:
    """The form's (or the spawn URL's query) fields as user_options; what is left empty keeps the environment's
    own setting. Values are checked by the gateway, not here."""
    options: dict[str, Any] = {}
    if workspace := first(form, "workspace"):
        options["workspace"] = workspace
    for key in ("gpus", "cpus", "time_minutes"):
        if value := first(form, key):
            options[key] = int(value) if value.isdigit() else value
    if value := first(form, "mem_gib"):
        options["mem_mib"] = int(float(value) * 1024) if value.replace(".", "", 1).isdigit() else value
    for key in ("gpu_type", "partition", "image"):
        if value := first(form, key):
            options[key] = value
    for key in ("datasets", "models"):
        if key in form:
            options[key] = [line.strip() for line in first(form, key).splitlines() if line.strip()]
    if "services" in form or "services_given" in form:
        options["services"] = ["jupyterlab", *[s for s in ("ssh", "tensorboard") if s in form.get("services", [])]]
    return options


def spec_changes(options: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The environment fields the options change (a PATCH body)."""
    wanted = {k: v for k, v in options.items() if k in (*RESOURCE_FIELDS, "datasets", "models", "services")}
    if "gpus" in wanted and not wanted["gpus"]:
        wanted["gpu_type"] = None
    if "services" not in wanted and "jupyterlab" not in spec.get("services", []):
        wanted["services"] = [*spec.get("services", []), "jupyterlab"]
    return {k: v for k, v in wanted.items() if spec.get(k) != v}


def job_status_of(view: dict[str, Any]) -> str:
    """``running 10.0.0.7``: the gateway's derived state, and the address the session's services listen on."""
    session = view.get("session") or {}
    host = session.get("host") or session.get("node") or ""
    return f"{view.get('state', 'unknown')} {host}".strip()


def status_of(view: dict[str, Any], session_job: str) -> JobStatus:
    """The gateway's state as batchspawner's: only an ended (or replaced) session is NOTFOUND."""
    session = view.get("session") or {}
    if session_job and session.get("job_id") != session_job:
        return JobStatus.NOTFOUND  # started again elsewhere (the CLI): the server this hub knew is gone
    state = view.get("state")
    if state in ("pending", "starting"):
        return JobStatus.PENDING
    if state == "running":
        return JobStatus.RUNNING
    if state == "unknown":
        return JobStatus.UNKNOWN
    return JobStatus.NOTFOUND


def _gateway_checks_them(_spawner: Any, _options: dict[str, Any]) -> None:
    """JupyterHub's hook for user options: nothing to apply here, the gateway validates them at the start."""


class GatewaySpawner(BatchSpawnerBase):  # type: ignore[misc]
    gateway_url = Unicode("http://127.0.0.1:8000", help="The gateway's base URL, as the hub reaches it").tag(
        config=True
    )
    default_server_name = Unicode("jupyterlab", help="The environment the user's default (unnamed) server is").tag(
        config=True
    )
    request_timeout = Float(30.0, help="Seconds per gateway call").tag(config=True)
    default_services = List(["jupyterlab"], help="Services of an environment the hub makes").tag(config=True)

    workspace = Unicode("")
    session_job = Unicode("")

    def _apply_user_options_default(self) -> Any:
        return _gateway_checks_them

    # -- identity and state

    @property
    def environment_name(self) -> str:
        return self.name or self.default_server_name

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.workspace = state.get("workspace", "")
        self.session_job = state.get("session_job", "")

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().get_state()
        if self.workspace:
            state["workspace"] = self.workspace
        if self.session_job:
            state["session_job"] = self.session_job
        return state

    def clear_state(self) -> None:
        super().clear_state()
        self.session_job = ""

    async def _token(self) -> str:
        auth_state = await self.user.get_auth_state() or {}
        token = auth_state.get("token")
        if not token:
            raise GatewayError(401, "your gateway session has expired: log out and log in again")
        return str(token)

    async def _api(self, method: str, path: str, body: Any = None) -> Any:
        return await call(self.gateway_url, await self._token(), method, path, json=body, timeout=self.request_timeout)

    def _environments(self, workspace: str) -> str:
        return f"/workspaces/{quote(workspace, safe='')}/environments"

    # -- the options form

    async def options_form(self, _spawner: Any) -> str:
        """Workspaces, GPU types with free counts, and the environment's current settings (when it exists)."""
        try:
            me = await self._api("GET", "/me")
            cluster = await self._api("GET", "/cluster")
        except (GatewayError, GatewayUnreachable) as error:
            return f'<p class="alert alert-danger">The gateway did not answer: {html.escape(str(error))}</p>'
        return render_form(me, cluster, self.user_options or {}, await self._readable(me))

    async def _readable(self, me: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
        """Per kind ("datasets", "models") and workspace, the ``NAME:VERSION`` of each ready newest version the
        user may mount (the form shows them as hints; a list the gateway does not give is left out)."""
        slugs = [w["workspace"] for w in (me.get("workspaces") or [])][:FORM_WORKSPACES]

        async def one(kind: str, slug: str) -> tuple[str, str, list[str]]:
            try:
                page = await self._api("GET", f"/workspaces/{quote(slug, safe='')}/{kind}?limit=100")
            except (GatewayError, GatewayUnreachable):
                return kind, slug, []
            items = page.get("items") or []
            ready = [i for i in items if (i.get("latest") or {}).get("status") == "ready"]
            return kind, slug, [f"{i['name']}:{i['latest']['version']}" for i in ready]

        found = await asyncio.gather(*(one(kind, slug) for kind in ("datasets", "models") for slug in slugs))
        out: dict[str, dict[str, list[str]]] = {"datasets": {}, "models": {}}
        for kind, slug, names in found:
            if names:
                out[kind][slug] = names
        return out

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, Any]:
        return user_options_of(formdata)

    # -- batchspawner's three operations

    def get_env(self) -> dict[str, str]:
        """The hub's variables for the single-user server; an empty one is one the hub left unset."""
        return {k: v for k, v in super().get_env().items() if k.startswith(HUB_PREFIXES) and v}

    async def submit_batch_script(self) -> str:
        options = dict(self.user_options or {})
        workspace = options.get("workspace") or self.workspace
        if not workspace:
            me = await self._api("GET", "/me")
            slugs = [w["workspace"] for w in me.get("workspaces", [])]
            if len(slugs) != 1:
                raise GatewayError(400, "choose a workspace (you are in none, or in several)")
            workspace = slugs[0]
        base = self._environments(workspace)
        name = self.environment_name
        found = await self._api("GET", f"{base}?name={quote(name)}&user={quote(self.user.name)}")
        launch = {"jupyterhub": {"env": self.get_env()}}
        if not found["items"]:
            fields = {k: v for k, v in options.items() if k in (*RESOURCE_FIELDS, "datasets", "models", "services")}
            body = {"services": list(self.default_services), **fields, "name": name, "start": False}
            view = await self._api("POST", base + "/", body)
        else:
            view = found["items"][0]
            changes = spec_changes(options, view["spec"])
            if changes:
                view = await self._api("PATCH", f"{base}/{view['id']}", changes)
        active = view["state"] in ("pending", "starting", "running", "unknown", "stopping")
        verb = "restart" if active else "start"  # running without the hub (started from the CLI): again, with it
        self.log.info("gateway: %s environment %s/%s (%s)", verb, workspace, name, view["id"])
        view = await self._api("POST", f"{base}/{view['id']}/{verb}", launch)
        self.workspace, self.job_id = workspace, view["id"]
        self.session_job = (view.get("session") or {}).get("job_id", "")
        self.job_status = job_status_of(view)
        return str(self.job_id)

    async def query_job_status(self) -> JobStatus:
        if not self.job_id or not self.workspace:
            self.job_status = ""
            return JobStatus.NOTFOUND
        try:
            view = await self._api("GET", f"{self._environments(self.workspace)}/{self.job_id}")
        except GatewayError as error:
            if error.status == 404:
                self.job_status = "deleted"
                return JobStatus.NOTFOUND
            self.log.warning("gateway refused the state of %s: %s", self.job_id, error)
            self.job_status = "unknown"
            return JobStatus.UNKNOWN
        except GatewayUnreachable as error:
            self.log.warning("gateway did not answer for %s: %s", self.job_id, error)
            self.job_status = "unknown"
            return JobStatus.UNKNOWN
        self.job_status = job_status_of(view)
        return status_of(view, self.session_job)

    async def cancel_batch_job(self) -> None:
        if not self.job_id or not self.workspace:
            return
        try:
            await self._api("POST", f"{self._environments(self.workspace)}/{self.job_id}/stop")
        except GatewayError as error:  # 409: nothing to stop; 404: deleted
            self.log.info("gateway: stop of %s: %s", self.job_id, error)

    # -- what batchspawner reads from job_status

    def state_ispending(self) -> bool:
        return self.job_status.startswith(("pending", "starting"))

    def state_isrunning(self) -> bool:
        return self.job_status.startswith("running")

    def state_isunknown(self) -> bool:
        return self.job_status.startswith("unknown")

    def state_gethost(self) -> str:
        parts = self.job_status.split()
        return parts[1] if len(parts) > 1 else ""

    async def progress(self) -> Any:
        while True:
            if self.state_isrunning():
                yield {"message": "Session running on the cluster: JupyterLab is starting..."}
                return
            if self.state_ispending():
                yield {"message": f"Slurm job {self.job_id}: {self.job_status.split()[0]}..."}
            else:
                yield {"message": "Waiting for the gateway..."}
            await asyncio.sleep(1)


def _options(values: list[tuple[str, str]], chosen: str) -> str:
    return "".join(
        f'<option value="{html.escape(v)}"{" selected" if v == chosen else ""}>{html.escape(label)}</option>'
        for v, label in values
    )


def _group(key: str, label: str, control: str) -> str:
    return f'<div class="form-group"><label for="{key}">{html.escape(label)}</label>\n{control}</div>\n'


def _select(key: str, label: str, values: list[tuple[str, str]], chosen: str) -> str:
    options = _options(values, chosen)
    return _group(key, label, f'<select class="form-control" name="{key}" id="{key}">{options}</select>')


def _number(key: str, label: str, value: object, minimum: str, step: str = "1") -> str:
    attrs = f'type="number" min="{minimum}" step="{step}" value="{html.escape(str(value))}"'
    return _group(key, label, f'<input class="form-control" name="{key}" id="{key}" {attrs}>')


def _lines(key: str, label: str, lines: list[str], hints: dict[str, list[str]] | None = None) -> str:
    text = html.escape("\n".join(lines))
    field = f'<textarea class="form-control" name="{key}" id="{key}">{text}</textarea>'
    if hints:
        shown = "; ".join(f"{slug}: {', '.join(names)}" for slug, names in sorted(hints.items()))
        field += f'\n<p class="help-block">Ready to mount: {html.escape(shown)}</p>'
    return _group(key, label, field)


def _checkbox(value: str, label: str, checked: bool) -> str:
    mark = " checked" if checked else ""
    return f'<label><input type="checkbox" name="services" value="{value}"{mark}> {label}</label> '


def render_form(
    me: dict[str, Any],
    cluster: dict[str, Any],
    previous: dict[str, Any],
    readable: dict[str, dict[str, list[str]]] | None = None,
) -> str:
    """The spawn form (plain HTML in the hub's page: nothing loaded from elsewhere); ``readable``: per kind and
    workspace, the versions the user may mount, shown under their fields."""
    readable = readable or {}
    workspaces = [(w["workspace"], f"{w['workspace']} ({w['role']})") for w in (me.get("workspaces") or [])]
    if not workspaces:
        return '<p class="alert alert-warning">You are in no workspace yet: ask a workspace owner to add you.</p>'
    gpu_types = [("", "none")] + [
        (g["type"], f"{g['type']} ({g['free']} of {g['total']} free)") for g in cluster.get("gpu_types", [])
    ]
    partitions = [("", "default")] + [(p["name"], p["name"]) for p in cluster.get("partitions", [])]
    mem = previous.get("mem_mib")
    services = previous.get("services", [])
    image = html.escape(str(previous.get("image", "")))
    return "".join(
        [
            _select("workspace", "Workspace", workspaces, previous.get("workspace", "")),
            _select("gpu_type", "GPU type", gpu_types, previous.get("gpu_type", "")),
            _number("gpus", "GPUs", previous.get("gpus", 0), "0"),
            _number("cpus", "CPUs", previous.get("cpus", 1), "1"),
            _number("mem_gib", "Memory (GiB)", mem / 1024 if mem else 2, "0.5", "0.5"),
            _number("time_minutes", "Time limit (minutes)", previous.get("time_minutes", 240), "1"),
            _select("partition", "Partition", partitions, previous.get("partition", "")),
            _group(
                "image", "Image (empty: none)", f'<input class="form-control" name="image" id="image" value="{image}">'
            ),
            _lines(
                "datasets",
                "Datasets (NAME[:VERSION] of the workspace, or a path on the nodes; one per line, at most 3)",
                previous.get("datasets", []),
                readable.get("datasets"),
            ),
            _lines(
                "models",
                "Models (NAME[:VERSION] of the workspace, or a path on the nodes; one per line, at most 3)",
                previous.get("models", []),
                readable.get("models"),
            ),
            '<input type="hidden" name="services_given" value="1">\n<div class="checkbox">',
            _checkbox("ssh", "SSH", "ssh" in services),
            _checkbox("tensorboard", "TensorBoard", "tensorboard" in services),
            "</div>\n",
        ]
    )
