"""sbatch's options, from ``#SBATCH`` lines and from a command line, the way sbatch reads them.

Directives are read until the first line that is neither blank nor a comment; command-line options override
them. Unsupported options are collected and reported together.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

# long name -> (short flag, takes a value)
OPTIONS: dict[str, tuple[str | None, bool]] = {
    "job-name": ("J", True),
    "nodes": ("N", True),
    "ntasks": ("n", True),
    "cpus-per-task": ("c", True),
    "ntasks-per-node": (None, True),
    "gres": (None, True),
    "gpus": ("G", True),
    "gpus-per-node": (None, True),
    "mem": (None, True),
    "mem-per-cpu": (None, True),
    "time": ("t", True),
    "partition": ("p", True),
    "qos": ("q", True),
    "array": ("a", True),
    "dependency": ("d", True),
    "output": ("o", True),
    "error": ("e", True),
    "export": (None, True),
    "chdir": ("D", True),
    "hold": ("H", False),
    # ours
    "workspace": (None, True),
    "dataset": (None, True),
    "model": (None, True),
    "image": (None, True),
}
REPEATABLE = frozenset({"dataset", "model"})
_SHORT = {short: long for long, (short, _) in OPTIONS.items() if short}


class DirectiveError(ValueError):
    def __init__(self, message: str, unsupported: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.unsupported = list(unsupported)


Options = dict[str, str | list[str] | None]


def _parse_tokens(tokens: Sequence[str]) -> tuple[Options, list[str], list[str]]:
    """Options, the remaining positional arguments, and the unsupported option names seen."""
    options: Options = {}
    unsupported: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--" or not token.startswith("-") or token == "-":
            return options, list(tokens[i + 1 :] if token == "--" else tokens[i:]), unsupported
        if token.startswith("--"):
            name, eq, value = token[2:].partition("=")
            inline: str | None = value if eq else None
        else:
            short, rest = token[1:2], token[2:]
            name, inline = _SHORT.get(short, f"-{short}"), rest or None
        if name not in OPTIONS:
            unsupported.append(token.split("=", 1)[0])
            i += 1
            continue
        takes_value = OPTIONS[name][1]
        if takes_value and inline is None:
            if i + 1 >= len(tokens):
                raise DirectiveError(f"option --{name} needs a value")
            inline = tokens[i + 1]
            i += 1
        if not takes_value and inline is not None:
            raise DirectiveError(f"option --{name} takes no value")
        if name in REPEATABLE:
            existing = options.setdefault(name, [])
            assert isinstance(existing, list)
            existing.append(inline or "")
        else:
            options[name] = inline
        i += 1
    return options, [], unsupported


def script_directives(script: str) -> tuple[Options, list[str]]:
    """``#SBATCH`` options of a script, and the unsupported ones."""
    tokens: list[str] = []
    for number, line in enumerate(script.splitlines()):
        stripped = line.strip()
        if number == 0 and stripped.startswith("#!"):
            continue
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break
        if stripped.startswith("#SBATCH"):
            body = stripped[len("#SBATCH") :].split(" #", 1)[0]
            tokens += shlex.split(body)
    options, _, unsupported = _parse_tokens(tokens)
    return options, unsupported


def parse(script: str, argv: Sequence[str]) -> tuple[Options, list[str]]:
    """Options (command line over directives) and the script's own arguments; raises on unsupported ones."""
    from_script, bad_script = script_directives(script)
    from_cli, script_args, bad_cli = _parse_tokens(argv)
    unsupported = sorted(set(bad_script + bad_cli))
    if unsupported:
        raise DirectiveError("unsupported sbatch options: " + ", ".join(unsupported), unsupported)
    merged: Options = {**from_script, **from_cli}
    for name in REPEATABLE & from_script.keys() & from_cli.keys():
        merged[name] = from_cli[name]
    return merged, script_args


def minutes(value: str) -> int:
    """sbatch time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S -> whole minutes (rounded up)."""
    days = 0
    if "-" in value:
        day_part, value = value.split("-", 1)
        days = int(day_part)
        parts = [int(p) for p in value.split(":")]
        hours, mins, secs = [*parts, 0, 0][:3]
    else:
        parts = [int(p) for p in value.split(":")]
        if len(parts) == 1:
            hours, mins, secs = 0, parts[0], 0
        elif len(parts) == 2:
            hours, mins, secs = 0, parts[0], parts[1]
        else:
            hours, mins, secs = parts[:3]
    total = days * 1440 + hours * 60 + mins + (1 if secs else 0)
    return total
