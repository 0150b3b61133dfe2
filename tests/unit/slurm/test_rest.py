"""The REST backend's own logic: sbatch options -> job description, environment, errors, and the client against
a fake slurmrestd (httpx.MockTransport) answering with what the real one answered (recorded on 22.05.8)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from slurm.cli import SBATCH_OPTIONS
from slurm.client import Submission
from slurm.dialects import v22_05
from slurm.directives import script_directives
from slurm.errors import (
    AccessDenied,
    InvalidAccount,
    InvalidPartition,
    InvalidQos,
    JobNotFound,
    NodeConfigUnavailable,
    SlurmError,
    SlurmUnavailable,
    SubmitRejected,
)
from slurm.records import Association, JobState
from slurm.rest import (
    DIRECTIVES,
    MAPPED,
    RestSlurmClient,
    SubmitHost,
    default_client,
    job_description,
    rest_error,
    sbatch_job_env,
    sbatch_options,
    submit_environment,
)
from slurm.tokens import ScontrolTokens, SignedTokens, TokenCache

SAMPLES = Path(__file__).parent / "samples"
HOST = SubmitHost(hostname="gw", priority=0, umask=0o022, rlimits={"CORE": 0, "NOFILE": 2**64 - 1})


def submission(script: str = "#!/bin/bash\ntrue\n", **options: str | None) -> Submission:
    return Submission(user="root", account="ws1", script=script, work_dir="/home/u", options=options)


def with_option(name: str, value: str | None) -> Submission:
    return Submission(
        user="root", account="ws1", script="#!/bin/bash\ntrue\n", work_dir="/home/u", options={name: value}
    )


def describe(sub: Submission) -> dict[str, Any]:
    return job_description(sbatch_options(sub), {"PATH": "/bin"})


# --- options -> job description ---------------------------------------------------------------------------


def test_every_option_a_submission_may_set_is_passed_on() -> None:
    assert SBATCH_OPTIONS <= MAPPED
    plain = describe(submission())
    for name in sorted(SBATCH_OPTIONS - {"export"}):
        value = None if name in ("hold", "exclusive") else "x1"
        assert describe(with_option(name, value)) != plain, name


def test_the_command_line_wins_over_the_scripts_directives() -> None:
    script = (
        "#!/bin/bash\n#SBATCH --job-name=from-script -t 1-00:00\n#SBATCH -A other --chdir=/elsewhere\n"
        "#SBATCH --gpus-per-node=a100:2 -c 2 --mem-per-cpu=512M -o out-%j.log\n#SBATCH --hold\nsrun hostname\n"
    )
    job = describe(submission(script, **{"job-name": "from-options", "comment": "rgpu:1"}))
    assert job == {
        "name": "from-options",
        "environment": {"PATH": "/bin"},
        "time_limit": "1-00:00",
        "account": "ws1",
        "current_working_directory": "/home/u",
        "gpus_per_node": "a100:2",
        "cpus_per_task": "2",
        "memory_per_cpu": "512M",
        "standard_output": "out-%j.log",
        "hold": True,
        "comment": "rgpu:1",
    }


def test_an_unnamed_job_is_named_as_sbatch_names_a_script_on_stdin() -> None:
    assert describe(submission())["name"] == "sbatch"


def test_exclusive_with_and_without_a_value() -> None:
    assert describe(submission(exclusive=None))["exclusive"] == "exclusive"
    assert describe(submission("#!/bin/bash\n#SBATCH --exclusive=user\ntrue\n"))["exclusive"] == "user"
    assert describe(submission("#!/bin/bash\n#SBATCH --exclusive\ntrue\n"))["exclusive"] == "exclusive"


@pytest.mark.parametrize(
    ("options", "tasks"),
    [
        ({}, None),
        ({"nodes": "2"}, "2"),  # one task per node: slurmrestd alone makes a job of 1 CPU, sbatch one of 2
        ({"nodes": "2", "cpus-per-task": "2"}, "2"),
        ({"ntasks-per-node": "2"}, "2"),  # one node unless told
        ({"nodes": "3", "ntasks-per-node": "2"}, "6"),
        ({"nodes": "2-2", "ntasks-per-node": "2"}, "4"),
        ({"nodes": "1-3", "ntasks-per-node": "2"}, None),  # no fixed node count
        ({"nodes": "2", "ntasks": "5", "cpus-per-task": "2"}, "5"),  # given: passed on as it is
    ],
)
def test_the_task_count_sbatch_works_out(options: dict[str, str], tasks: str | None) -> None:
    assert describe(submission(**options)).get("tasks") == tasks


def test_submission_options_are_checked_as_the_cli_backend_does() -> None:
    with pytest.raises(ValueError, match="not allowed: uid"):
        sbatch_options(submission(uid="0"))


@pytest.mark.parametrize(
    ("script", "words"),
    [
        ("#!/bin/bash\n#SBATCH --bb=x --time=5\n#SBATCH -F n1\ntrue\n", "--bb, --nodefile"),
        ("#!/bin/bash\n#SBATCH --workspace=ml --dataset=/d\ntrue\n", "--dataset, --workspace"),
        ("#!/bin/bash\n#SBATCH --time=5 oops\ntrue\n", "invalid directive"),
        ("#!/bin/bash\n#SBATCH --hold=yes\ntrue\n", "takes no value"),
    ],
)
def test_directives_that_cannot_be_passed_on_are_refused_by_name(script: str, words: str) -> None:
    with pytest.raises(SubmitRejected, match=words):
        sbatch_options(submission(script))


def test_options_need_their_values() -> None:
    with pytest.raises(SubmitRejected, match="--time needs a value"):
        job_description({"time": None}, {})
    with pytest.raises(SubmitRejected, match="cannot pass on --bb"):
        job_description({"bb": "x"}, {})


def test_daily_options_reach_slurmrestd_under_its_names() -> None:
    job = job_description(
        {"exclude": "n2", "nodelist": "n1", "no-requeue": None, "kill-on-invalid-dep": "yes", "mem-per-gpu": "1G"}, {}
    )
    assert (job["exclude_nodes"], job["nodelist"], job["no_requeue"]) == ("n2", "n1", True)
    assert (job["kill_on_invalid_dependency"], job["memory_per_gpu"]) == (True, "1G")
    assert job_description({"gpus": "a100:3", "ntasks-per-gpu": "1"}, {})["tasks"] == "3"
    assert job_description({"nodes": "2", "ntasks": "1"}, {})["nodes"] == "1"  # as sbatch: no more nodes than tasks
    with pytest.raises(SubmitRejected, match="cannot signal the batch shell"):
        job_description({"signal": "B:USR1@60"}, {})


def test_get_user_env_and_all_of_a_nodes_memory_reach_slurmrestd_as_sbatch_text() -> None:
    """slurmrestd 22.05 refuses ``"get_user_environment": true`` ("Invalid get user environment
    specification"); it takes sbatch's text, ``""`` for the option without a value."""
    assert job_description({"get-user-env": None}, {})["get_user_environment"] == ""
    assert job_description({"get-user-env": "60L"}, {})["get_user_environment"] == "60L"
    assert job_description({"mem": "0"}, {})["memory_per_node"] == "0"
    script = "#!/bin/bash\n#SBATCH --get-user-env\n#SBATCH --mem=0\n"
    assert script_directives(script, DIRECTIVES) == ({"get-user-env": None, "mem": "0"}, [])


# --- the environment ---------------------------------------------------------------------------------------

BASE = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "SLURM_CONF": "/etc/slurm.conf", "HOME": "/home/u", "USER": "u"}
OWN = {
    "SLURM_PRIO_PROCESS": "0",
    "SLURM_SUBMIT_DIR": "/",
    "SLURM_SUBMIT_HOST": "gw",
    "SLURM_UMASK": "0022",
    "SLURM_RLIMIT_CORE": "0",
    "SLURM_RLIMIT_NOFILE": "18446744073709551615",
}


@pytest.mark.parametrize("export", [None, "ALL", "all"])
def test_export_all_sends_everything(export: str | None) -> None:
    assert submit_environment(BASE, export, HOST) == {**BASE, **OWN}


def test_export_none_sends_only_slurms_and_loads_the_login_environment() -> None:
    env = submit_environment(BASE, "NONE", HOST, {"SLURM_CPUS_PER_TASK": "2"})
    assert env == {
        "SLURM_CONF": "/etc/slurm.conf",
        **OWN,
        "SLURM_CPUS_PER_TASK": "2",
        "SLURM_EXPORT_ENV": "NONE",
        "SLURM_GET_USER_ENV": "1",
    }


def test_export_lists() -> None:
    env = submit_environment(BASE, "FOO=bar,HOME,MISSING", HOST)
    assert env == {
        "SLURM_CONF": "/etc/slurm.conf",
        "FOO": "bar",
        "HOME": "/home/u",
        **OWN,
        "SLURM_EXPORT_ENV": "FOO=bar,HOME,MISSING",
        "SLURM_GET_USER_ENV": "1",
    }
    assert submit_environment(BASE, "ALL,FOO=bar", HOST) == {
        **BASE,
        "FOO": "bar",
        **OWN,
        "SLURM_EXPORT_ENV": "ALL,FOO=bar",
        "SLURM_GET_USER_ENV": "1",
    }


def test_what_sbatch_exports_of_its_options() -> None:
    options = {"cpus-per-task": "02", "ntasks-per-node": "4", "gpus": "a100:2", "gpus-per-node": "1", "mem": "1G"}
    assert sbatch_job_env(options) == {
        "SLURM_CPUS_PER_TASK": "2",
        "SLURM_NTASKS_PER_NODE": "4",
        "SLURM_GPUS": "a100:2",
        "SLURM_GPUS_PER_NODE": "1",
    }


def test_this_process_as_sbatch_would_see_it() -> None:
    host = SubmitHost.of_this_process()
    assert host.hostname and set(host.rlimits) >= {"CORE", "NOFILE", "AS"}
    assert all(0 <= v < 2**64 for v in host.rlimits.values())
    assert host.umask is None or 0 <= host.umask <= 0o777


# --- errors ------------------------------------------------------------------------------------------------


def err(text: str, number: int = -1, description: str | None = None, key: str = "error_number") -> dict[str, Any]:
    error: dict[str, Any] = {"error": text, key: number}
    if description:
        error["description"] = description
    return error


@pytest.mark.parametrize(
    ("errors", "submit", "cls", "message"),
    [
        (
            [err("Invalid account or account/partition combination specified", 2045, key="error_code")],
            True,
            InvalidAccount,
            "Invalid account or account/partition combination specified",
        ),
        ([err("Invalid partition name specified", 2000, key="error_code")], True, InvalidPartition, None),
        (
            [err("Requested node configuration is not available", 2014, key="error_code")],
            True,
            NodeConfigUnavailable,
            None,
        ),
        ([err("Invalid qos specification", 2066, key="error_code")], True, InvalidQos, None),
        (
            [
                err("Invalid time specification", key="error_code"),
                err("Unspecified error", description='Unable to process key "time_limit"'),
                err("Failure during parsing", 9001, key="error_code"),
            ],
            True,
            SubmitRejected,
            'Invalid time specification; Unspecified error (Unable to process key "time_limit"); '
            "Failure during parsing",
        ),
        (
            [err("Access/permission denied", 2002, "unable to kill JobId=7 with signal 9: Access/permission denied")],
            False,
            AccessDenied,
            "unable to kill JobId=7 with signal 9: Access/permission denied",
        ),
        (
            [err("Invalid user id", 2010, "job update from [localhost]:4 failed")],
            False,
            AccessDenied,
            "Invalid user id (job update from [localhost]:4 failed)",
        ),
        ([err("Invalid job id specified", 2017)], False, JobNotFound, None),
        (
            [err("Job has already finished", 2084, "job update from [localhost]:4 failed")],
            False,
            SlurmError,
            "Job has already finished (job update from [localhost]:4 failed)",
        ),
        ([err("Unable to contact slurm controller (connect failure)", 1001)], False, SlurmUnavailable, None),
        ([err("Unable to connect to database", 7000)], False, SlurmUnavailable, None),
        ([err("Zero Bytes were transmitted or received", 1014, key="error_code")], True, SlurmUnavailable, None),
        ([{"error_number": 5}], False, SlurmError, "error 5"),
    ],
)
def test_slurmrestds_errors_are_typed_and_keep_slurms_words(
    errors: list[dict[str, Any]], submit: bool, cls: type[SlurmError], message: str | None
) -> None:
    error = rest_error(errors, submit=submit)
    assert type(error) is cls
    assert error.message == (message or errors[0]["error"])
    assert error.command == "slurmrestd"


# --- the client against a fake slurmrestd ------------------------------------------------------------------

Handler = Callable[[httpx.Request], httpx.Response]


def reply(status: int = 200, **body: Any) -> httpx.Response:
    return httpx.Response(status, json={"meta": {}, "errors": [], **body})


class FakeRestd:
    """Answers by (method, path); records every request."""

    def __init__(self, routes: Mapping[tuple[str, str], Handler | httpx.Response]) -> None:
        self.routes = dict(routes)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = self.routes[(request.method, request.url.path)]
        return route(request) if callable(route) else route

    def bodies(self, method: str, path: str) -> list[Any]:
        return [json.loads(r.content) for r in self.requests if (r.method, r.url.path) == (method, path)]


class CountingTokens:
    def __init__(self) -> None:
        self.issued = 0

    async def __call__(self, user: str, lifespan: int) -> str:
        self.issued += 1
        return f"{user}-token-{self.issued}"


def client_for(restd: FakeRestd, **kwargs: Any) -> RestSlurmClient:
    return RestSlurmClient(
        "http://restd.test/",
        tokens=TokenCache(CountingTokens()),
        submit_host=HOST,
        transport=httpx.MockTransport(restd),
        **kwargs,
    )


SUBMIT = ("POST", "/slurm/v0.0.38/job/submit")


async def test_submit_sends_the_job_as_the_user() -> None:
    restd = FakeRestd({SUBMIT: reply(job_id=42, step_id="BATCH")})
    async with client_for(restd, slurm_conf="/etc/slurm.conf") as client:
        script = "#!/bin/bash\n#SBATCH --cpus-per-task=2\ntrue\n"
        assert await client.submit(submission(script, comment="rgpu:1", export="NONE")) == 42
    [request] = restd.requests
    assert request.headers["X-SLURM-USER-NAME"] == "root"
    assert request.headers["X-SLURM-USER-TOKEN"] == "root-token-1"
    body = json.loads(request.content)
    assert body["script"] == script
    job = body["job"]
    assert (job["cpus_per_task"], job["comment"], job["account"]) == ("2", "rgpu:1", "ws1")
    assert job["environment"] == {
        "SLURM_CONF": "/etc/slurm.conf",
        **OWN,
        "SLURM_CPUS_PER_TASK": "2",
        "SLURM_EXPORT_ENV": "NONE",
        "SLURM_GET_USER_ENV": "1",
    }


async def test_a_held_submission_succeeds_with_slurms_note() -> None:
    held = reply(errors=[err("Job is in held state, pending scheduler release", 2042, key="error_code")], job_id=43)
    async with client_for(FakeRestd({SUBMIT: held})) as client:
        assert await client.submit(submission(hold=None)) == 43


async def test_a_refused_submission_is_typed() -> None:
    refused = reply(500, errors=[err("Invalid account or account/partition combination specified", 2045)])
    async with client_for(FakeRestd({SUBMIT: refused})) as client:
        with pytest.raises(InvalidAccount):
            await client.submit(submission())


async def test_submitting_as_someone_unknown_here_is_refused_before_asking() -> None:
    restd = FakeRestd({})
    async with client_for(restd) as client:
        with pytest.raises(SlurmError, match="no POSIX user"):
            await client.submit(Submission(user="no-such-user-xyz", account="a", script="#!/bin/sh\n", work_dir="/"))
    assert restd.requests == []


async def test_a_refused_token_is_replaced_once() -> None:
    answers = iter([httpx.Response(401, text="Authentication failure"), reply(jobs=[])])
    restd = FakeRestd({("GET", "/slurm/v0.0.38/jobs"): lambda _: next(answers)})
    async with client_for(restd) as client:
        assert await client.jobs() == []
    assert [r.headers["X-SLURM-USER-TOKEN"] for r in restd.requests] == ["root-token-1", "root-token-2"]

    restd = FakeRestd({("GET", "/slurm/v0.0.38/jobs"): httpx.Response(401, text="Authentication failure")})
    async with client_for(restd) as client:
        with pytest.raises(SlurmError, match="refused the credentials of 'root'"):
            await client.jobs()
    assert len(restd.requests) == 2


async def test_an_authentication_error_drops_the_token_for_the_next_call() -> None:
    denied = reply(500, errors=[err("Protocol authentication error", 1007)])
    answers = iter([denied, reply(associations=[])])
    restd = FakeRestd({("GET", "/slurmdb/v0.0.38/associations"): lambda _: next(answers)})
    async with client_for(restd) as client:
        with pytest.raises(SlurmError, match="Protocol authentication error"):
            await client.associations()
        assert await client.associations() == []
    assert [r.headers["X-SLURM-USER-TOKEN"] for r in restd.requests] == ["root-token-1", "root-token-2"]


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("Connection refused"), httpx.ReadTimeout("timed out"), httpx.RemoteProtocolError("x")],
)
async def test_slurmrestd_out_of_reach_is_slurm_unavailable(failure: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise failure

    async with client_for(FakeRestd({("GET", "/slurm/v0.0.38/jobs"): handler})) as client:
        with pytest.raises(SlurmUnavailable):
            await client.jobs()


@pytest.mark.parametrize(
    ("response", "cls"),
    [
        (httpx.Response(502, text="Bad Gateway"), SlurmUnavailable),
        (httpx.Response(404, text="Unable find requested URL."), SlurmError),
        (reply(500, errors=[err("Unable to contact slurm controller (connect failure)", 1001)]), SlurmUnavailable),
    ],
)
async def test_http_failures(response: httpx.Response, cls: type[SlurmError]) -> None:
    async with client_for(FakeRestd({("GET", "/slurm/v0.0.38/jobs"): response})) as client:
        with pytest.raises(cls) as raised:
            await client.jobs()
    assert type(raised.value) is cls


async def test_cancel_hold_and_release_as_the_user() -> None:
    unknown = reply(500, errors=[err("Invalid job id specified", 2017, "unable to kill JobId=9 with signal 9")])
    restd = FakeRestd(
        {
            ("DELETE", "/slurm/v0.0.38/job/7"): reply(),
            ("DELETE", "/slurm/v0.0.38/job/9"): unknown,
            ("POST", "/slurm/v0.0.38/job/7"): reply(),
            ("POST", "/slurm/v0.0.38/job/9"): reply(500, errors=[err("Invalid job id specified", 2017)]),
        }
    )
    async with client_for(restd) as client:
        await client.cancel(7, user="alice")
        await client.cancel(9, user="alice")  # as scancel: nothing said about a job the controller does not know
        await client.hold(7, user="alice")
        await client.release(7, user="alice")
        with pytest.raises(JobNotFound):
            await client.hold(9, user="alice")
    assert {r.headers["X-SLURM-USER-NAME"] for r in restd.requests} == {"alice"}
    assert restd.bodies("POST", "/slurm/v0.0.38/job/7") == [{"hold": True}, {"hold": False}]


async def test_jobs_and_accounting_parse_as_the_cli_backends_do() -> None:
    restd = FakeRestd(
        {
            ("GET", "/slurm/v0.0.38/jobs"): httpx.Response(200, content=(SAMPLES / "rest_jobs.json").read_bytes()),
            ("GET", "/slurmdb/v0.0.38/jobs"): httpx.Response(
                200, content=(SAMPLES / "rest_slurmdb_jobs.json").read_bytes()
            ),
        }
    )
    async with client_for(restd, admin_user="slurm") as client:
        jobs = await client.jobs()
        records = await client.accounting(datetime.now(UTC) - timedelta(minutes=10))
    assert jobs == v22_05.parse_squeue((SAMPLES / "rest_jobs.json").read_bytes()) and len(jobs) == 19
    assert records == v22_05.parse_sacct((SAMPLES / "rest_slurmdb_jobs.json").read_bytes()) and records
    assert {r.headers["X-SLURM-USER-NAME"] for r in restd.requests} == {"slurm"}
    params = restd.requests[1].url.params
    assert params["end_time"] == "now"
    assert params["start_time"].startswith("now-") and 600 <= int(params["start_time"][4:]) <= 603


async def test_no_accounting_records_is_no_error() -> None:
    nothing = reply(500, errors=[err("Nothing found with query", 9003, "Nothing found")])
    async with client_for(FakeRestd({("GET", "/slurmdb/v0.0.38/jobs"): nothing})) as client:
        assert await client.accounting(datetime.now(UTC)) == []


def test_associations_from_slurmdbd() -> None:
    account, user = v22_05.parse_associations_json((SAMPLES / "rest_associations.json").read_bytes())
    assert account == Association(
        cluster="remotegpu",
        account="ws-sample",
        user=None,
        grp_tres={"cpu": 8, "gres/gpu": 2, "gres/gpu:a100": 1},
        qos=("normal",),
    )
    assert (user.account, user.user, user.grp_tres, user.partition) == ("ws-sample", "rgtexp1", {}, None)


ASSOCIATIONS = ("GET", "/slurmdb/v0.0.38/associations")


def _association(account: str, user: str | None = None, cluster: str = "c1") -> dict[str, Any]:
    return {"account": account, "cluster": cluster, "user": user, "partition": None, "qos": ["normal"], "max": {}}


async def test_ensure_account_creates_the_account_and_its_association_on_every_cluster() -> None:
    answers = iter(
        [
            reply(500, errors=[err("Nothing found with query", 9003)]),
            reply(associations=[_association("ws1"), _association("ws1", cluster="c2")]),
        ]
    )
    restd = FakeRestd(
        {
            ASSOCIATIONS: lambda _: next(answers),
            ("GET", "/slurmdb/v0.0.38/clusters"): reply(clusters=[{"name": "c1"}, {"name": "c2"}]),
            ("GET", "/slurmdb/v0.0.38/account/ws1"): reply(500, errors=[err("Nothing found", 9003)], accounts=[]),
            ("POST", "/slurmdb/v0.0.38/accounts"): reply(),
            ("POST", "/slurmdb/v0.0.38/associations"): reply(
                errors=[{"description": "Missing required field 'user'", "source": "_parser_run"}]
            ),
        }
    )
    async with client_for(restd) as client:
        await client.ensure_account("ws1", description="Workspace 1")
    assert restd.bodies("POST", "/slurmdb/v0.0.38/accounts") == [
        {"accounts": [{"name": "ws1", "description": "Workspace 1", "organization": "ws1"}]}
    ]
    assert restd.bodies("POST", "/slurmdb/v0.0.38/associations") == [
        {
            "associations": [
                {"account": "ws1", "cluster": "c1", "parent_account": "root"},
                {"account": "ws1", "cluster": "c2", "parent_account": "root"},
            ]
        }
    ]


async def test_ensure_account_and_association_do_nothing_when_there() -> None:
    restd = FakeRestd({ASSOCIATIONS: reply(associations=[_association("ws1"), _association("ws1", "alice")])})
    async with client_for(restd, clusters=["c1"]) as client:
        await client.ensure_account("ws1")
        await client.ensure_association("alice", "ws1")
    assert [r.method for r in restd.requests] == ["GET", "GET"]


async def test_ensure_association_adds_the_user_first_where_slurm_does_not_know_them() -> None:
    listed = [_association("ws1"), _association("ws1", "bob")]

    def added(request: httpx.Request) -> httpx.Response:
        listed.append(_association("ws1", "alice"))
        return reply()

    restd = FakeRestd(
        {
            ASSOCIATIONS: lambda _request: reply(associations=listed),
            ("GET", "/slurmdb/v0.0.38/user/alice"): reply(500, errors=[err("Nothing found", 9003)]),
            ("POST", "/slurmdb/v0.0.38/users"): reply(),
            ("POST", "/slurmdb/v0.0.38/associations"): added,
        }
    )
    async with client_for(restd) as client:
        await client.ensure_association("alice", "ws1")
    assert restd.bodies("POST", "/slurmdb/v0.0.38/users") == [{"users": [{"name": "alice"}]}]
    assert restd.bodies("POST", "/slurmdb/v0.0.38/associations") == [
        {"associations": [{"account": "ws1", "cluster": "c1", "user": "alice"}]}
    ]


async def test_an_association_slurmdbd_did_not_keep_is_added_again() -> None:
    """slurmdbd 22.05 answers success to concurrent adds and keeps only some: the add is made until it is listed."""
    listed = [_association("ws1")]
    posts = 0

    def added(request: httpx.Request) -> httpx.Response:
        nonlocal posts
        posts += 1
        if posts == 2:  # the first one answered as done, and lost
            listed.append(_association("ws1", "alice"))
        return reply()

    restd = FakeRestd(
        {
            ASSOCIATIONS: lambda _request: reply(associations=listed),
            ("GET", "/slurmdb/v0.0.38/user/alice"): reply(users=[{"name": "alice"}]),
            ("POST", "/slurmdb/v0.0.38/associations"): added,
        }
    )
    async with client_for(restd) as client:
        await client.ensure_association("alice", "ws1")
    assert posts == 2


async def test_an_association_needs_the_account() -> None:
    restd = FakeRestd({ASSOCIATIONS: reply(500, errors=[err("Nothing found with query", 9003)])})
    async with client_for(restd) as client:
        with pytest.raises(SlurmError, match="account 'ws9' does not exist"):
            await client.ensure_association("alice", "ws9")


async def test_removals_are_idempotent() -> None:
    restd = FakeRestd(
        {
            ("DELETE", "/slurmdb/v0.0.38/associations"): httpx.Response(304),
            ("DELETE", "/slurmdb/v0.0.38/account/ws1"): reply(
                errors=[err("Data has not changed since time specified", 1900)]
            ),
        }
    )
    async with client_for(restd) as client:
        await client.remove_association("alice", "ws1")
        await client.remove_account("ws1")
    assert dict(restd.requests[0].url.params) == {"account": "ws1", "user": "alice"}


class RecordingLimits:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, int | None]]] = []

    async def set_account_limits(self, account: str, grp_tres: Mapping[str, int | None]) -> None:
        self.calls.append((account, dict(grp_tres)))


async def test_account_limits_go_through_the_fallback() -> None:
    limits = RecordingLimits()
    async with client_for(FakeRestd({}), limits=limits) as client:
        await client.set_account_limits("ws1", {"gres/gpu": 2, "cpu": None})
        await client.set_account_limits("ws1", {})
    assert limits.calls == [("ws1", {"gres/gpu": 2, "cpu": None})]
    async with client_for(FakeRestd({})) as client:
        await client.set_account_limits("ws1", {})
        with pytest.raises(SlurmError, match="cannot change the GrpTRES"):
            await client.set_account_limits("ws1", {"gres/gpu": 2})


def test_job_states_from_rest_are_the_cli_ones() -> None:
    # the same schema as squeue --json: nothing REST-specific to parse
    jobs = v22_05.parse_squeue((SAMPLES / "rest_job_19.json").read_bytes())
    assert [j.state for j in jobs] == [JobState.COMPLETED]


def test_default_client_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("REMOTEGPU_SLURMRESTD_URL", raising=False)
    with pytest.raises(RuntimeError, match="REMOTEGPU_SLURMRESTD_URL"):
        default_client()
    key = tmp_path / "jwt_hs256.key"
    key.write_bytes(b"k" * 32)
    monkeypatch.setenv("REMOTEGPU_SLURMRESTD_URL", "http://127.0.0.1:7820/")
    monkeypatch.setenv("SLURM_CONF", "/etc/slurm/slurm.conf")
    monkeypatch.setenv("REMOTEGPU_SLURM_JWT_KEY", str(key))
    client = default_client()
    assert (client.url, client.slurm_conf, client.admin_user) == (
        "http://127.0.0.1:7820",
        "/etc/slurm/slurm.conf",
        "root",
    )
    assert isinstance(client.tokens.source, SignedTokens)
    monkeypatch.delenv("REMOTEGPU_SLURM_JWT_KEY")
    assert isinstance(default_client().tokens.source, ScontrolTokens)
