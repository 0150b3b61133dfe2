"""sbatch's options, from ``#SBATCH`` lines and from a command line, read the way sbatch 22.05 reads them.

Checked against ``sbatch -vv --test-only`` (which prints the options it understood): directives are lines
that start with ``#SBATCH`` in the first column, read until the first line that is neither blank nor a
comment; words split on whitespace, ``'`` and ``"`` quote, a backslash takes the next character literally
(but cannot join words), and an unquoted ``#`` or an empty word (``""``) ends the line; a word that is not
an option is an error; long options may be abbreviated to any unambiguous prefix; command-line options
override directives. Options we do not support are collected and reported together, skipping their values
so that none is mistaken for the script.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal

from slurm.units import duration_minutes, memory_mib

# long name -> (short flag, takes a value): what we understand
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
    "account": ("A", True),
    "array": ("a", True),
    "dependency": ("d", True),
    "output": ("o", True),
    "error": ("e", True),
    "export": (None, True),
    "export-file": (None, True),
    "chdir": ("D", True),
    "hold": ("H", False),
    "parsable": (None, False),
    "wait": ("W", False),
    "test-only": (None, False),
    "gpus-per-task": (None, True),
    "ntasks-per-socket": (None, True),
    "mincpus": (None, True),
    "cpus-per-gpu": (None, True),
    "mem-per-gpu": (None, True),
    "ntasks-per-gpu": (None, True),
    "gpu-bind": (None, True),
    "mail-type": (None, True),
    "mail-user": (None, True),
    "exclusive": (None, False),
    "constraint": ("C", True),
    "signal": (None, True),
    "requeue": (None, False),
    "no-requeue": (None, False),
    "open-mode": (None, True),
    "nodelist": ("w", True),
    "exclude": ("x", True),
    "begin": ("b", True),
    "deadline": (None, True),
    "time-min": (None, True),
    "reservation": (None, True),
    "nice": (None, False),
    "comment": (None, True),
    "wckey": (None, True),
    "distribution": ("m", True),
    "licenses": ("L", True),
    "kill-on-invalid-dep": (None, True),
    "get-user-env": (None, False),  # [=timeout][mode], inline only
    # ours, for `remotegpu submit` (sbatch itself would refuse them)
    "workspace": (None, True),
    "dataset": (None, True),
    "model": (None, True),
    "image": (None, True),
}
REPEATABLE = frozenset({"dataset", "model"})
PER_NODE_GPUS = frozenset({"gres", "gpus-per-node"})
"""Two spellings of GPUs per node (the same ``TresPerNode``): one on the command line replaces both in the
script. sbatch itself would keep both (``TresPerNode=gres:gpu:2,gres:gpu:1``), which nobody means."""

Arg = Literal["required", "none", "optional"]
_R: Arg = "required"
_N: Arg = "none"
_O: Arg = "optional"


def _kinds(names: str, kind: Arg) -> dict[str, Arg]:
    return dict.fromkeys(names.split(), kind)


# Every long option of sbatch 22.05 (from its getopt table), to skip the values of the ones we do not support
# and to resolve abbreviations exactly as sbatch would.
_SBATCH: dict[str, Arg] = {
    **_kinds(
        "account acctg-freq array batch bb bbf begin chdir cluster cluster-constraint clusters comment constraint "
        "container context core-spec cores-per-socket cpu-freq cpus-per-gpu cpus-per-task deadline delay-boot "
        "dependency distribution error exclude export export-file extra-node-info gid gpu-bind gpu-freq gpus "
        "gpus-per-node gpus-per-socket gpus-per-task gres gres-flags hint input job-name kill-on-invalid-dep "
        "licenses mail-type mail-user mcs-label mem mem-bind mem-per-cpu mem-per-gpu mincpus network nodefile "
        "nodelist nodes ntasks ntasks-per-core ntasks-per-gpu ntasks-per-node ntasks-per-socket ntasks-per-tres "
        "open-mode output partition power prefer priority profile qos reservation signal sockets-per-node "
        "switches tasks-per-node thread-spec threads-per-core time time-min tmp uid wait-all-nodes wckey "
        "wrap",
        _R,
    ),
    **_kinds(
        "contiguous help hold ignore-pbs no-requeue overcommit oversubscribe parsable quiet reboot requeue "
        "spread-job test-only usage use-min-nodes verbose version wait",
        _N,
    ),
    **_kinds("exclusive get-user-env nice no-kill propagate", _O),
}
_SBATCH_SHORT = {
    **_kinds(" ".join("aAbBcCdDeFGiJLmMnNopqStwx"), _R),
    **_kinds(" ".join("hHOQsvVW"), _N),
    "k": _O,
}
_SHORT_TO_LONG = {
    "a": "array", "A": "account", "b": "begin", "B": "extra-node-info", "c": "cpus-per-task", "C": "constraint",
    "d": "dependency", "D": "chdir", "e": "error", "F": "nodefile", "G": "gpus", "h": "help", "H": "hold",
    "i": "input", "J": "job-name", "k": "no-kill", "L": "licenses", "m": "distribution",
    "M": "clusters", "n": "ntasks", "N": "nodes", "o": "output", "O": "overcommit", "p": "partition", "q": "qos",
    "Q": "quiet", "s": "oversubscribe", "S": "core-spec", "t": "time", "v": "verbose", "V": "version",
    "W": "wait", "w": "nodelist", "x": "exclude",
}  # fmt: skip
_ALIASES = {"tasks-per-node": "ntasks-per-node"}
_LONG_NAMES = sorted(_SBATCH.keys() | OPTIONS.keys())


WHY_NOT: dict[str, str] = {
    "uid": "jobs run as the submitting user",
    "gid": "jobs run as the submitting user",
    "wrap": "give a script",
    "clusters": "the gateway drives one cluster",
    "cluster": "the gateway drives one cluster",
    "bb": "no burst buffers here",
    "bbf": "no burst buffers here",
    "batch": "no batch features here",
    "container": "use --image",
    "input": "a batch job's standard input is not read here",
    "nodefile": "the file is on your machine, not the gateway's: use -w",
    "priority": "set by the site",
    "reboot": "nodes are rebooted by the site",
}
"""Why an option of sbatch is not taken (the default: the gateway does not pass it on)."""


def _why(shown: str) -> str:
    name = shown.lstrip("-").split(" ", 1)[0]
    name = _SHORT_TO_LONG.get(name, name) if len(name) == 1 else name
    return f"{shown} ({WHY_NOT.get(name, 'not passed on by the gateway')})" if "(" not in shown else shown


class DirectiveError(ValueError):
    def __init__(self, message: str, unsupported: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.unsupported = list(unsupported)


Options = dict[str, str | list[str] | None]


def _resolve(name: str) -> tuple[str | None, str]:
    """A long option name, abbreviated or not -> (canonical name or None, how to report a failure)."""
    if name in _LONG_NAMES:
        return _ALIASES.get(name, name), f"--{name}"
    candidates = [n for n in _LONG_NAMES if n.startswith(name)] if name else []
    if len(candidates) == 1:
        return _ALIASES.get(candidates[0], candidates[0]), f"--{candidates[0]}"
    if candidates:
        return None, f"--{name} (ambiguous: {', '.join('--' + c for c in candidates)})"
    return None, f"--{name}"


class _Reader:
    """getopt over one list of words: options, then (for a command line) the script's arguments."""

    def __init__(self, tokens: Sequence[str], known: Mapping[str, tuple[str | None, bool]] = OPTIONS) -> None:
        self.tokens = tokens
        self.known = known
        self.i = 0
        self.options: Options = {}
        self.unsupported: list[str] = []

    def _value(self, inline: str | None) -> str | None:
        """The option's value: given inline, or the next word."""
        if inline is not None:
            return inline
        if self.i < len(self.tokens):
            self.i += 1
            return self.tokens[self.i - 1]
        return None

    def _option(self, name: str | None, shown: str, inline: str | None) -> None:
        if name is None or name not in self.known:
            self.unsupported.append(shown.split("=", 1)[0] if name is None else f"--{name}")
            if name is not None and _SBATCH.get(name) == _R:
                self._value(inline)  # skip its value, which must not be read as the script (optional ones are inline)
            return
        takes_value = self.known[name][1]
        if not takes_value:
            if inline is not None and _SBATCH.get(name) != _O:  # an optional value (--exclusive=user) is inline only
                raise DirectiveError(f"option --{name} takes no value")
            self.options[name] = inline
            return
        value = self._value(inline)
        if value is None:
            raise DirectiveError(f"option --{name} needs a value")
        if name in REPEATABLE:
            existing = self.options.setdefault(name, [])
            assert isinstance(existing, list)
            existing.append(value)
        else:
            self.options[name] = value

    def _shorts(self, token: str) -> None:
        """``-N2``, ``-N 2``, ``-HJname``: flags may be grouped, a value ends the group."""
        j = 1
        while j < len(token):
            letter, rest = token[j], token[j + 1 :]
            kind, name = _SBATCH_SHORT.get(letter), _SHORT_TO_LONG.get(letter)
            if kind is None or name is None:
                self.unsupported.append(f"-{letter}")
                return
            if kind == _N:
                self._option(name, f"-{letter}", None)
                j += 1
                continue
            if kind == _O and not rest:
                self._option(name, f"-{letter}", None)
                return
            self._option(name, f"-{letter}", rest or None)
            return

    def read(self) -> list[str]:
        """Read options up to the first non-option word; return that word and all after it."""
        while self.i < len(self.tokens):
            token = self.tokens[self.i]
            self.i += 1
            if token == "--":
                return list(self.tokens[self.i :])
            if not token.startswith("-") or token == "-":
                return list(self.tokens[self.i - 1 :])
            if token.startswith("--"):
                name, eq, value = token[2:].partition("=")
                canonical, shown = _resolve(name)
                self._option(canonical, shown, value if eq else None)
            else:
                self._shorts(token)
        return []


def _words(text: str, line_number: int) -> list[str]:
    """Split one directive's text as sbatch does (its ``_get_argument``), not as a shell would."""
    words: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return words
        word: list[str] = []
        quote, escaped, comment = "", False, False
        while i < n and (quote or not text[i].isspace()):
            ch = text[i]
            i += 1
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
                continue
            elif quote:
                if ch == quote:
                    quote = ""
                    continue
            elif ch in "\"'":
                quote = ch
                continue
            elif ch == "#":
                comment = True
                break
            word.append(ch)
        if quote:
            raise DirectiveError(f"line {line_number}: unmatched {quote} in #SBATCH{text}")
        if not word:  # sbatch stops reading a line at an empty word: '""', or a '#' starting one
            return words
        words.append("".join(word))
        if comment:
            return words


def directive_words(script: str) -> list[str]:
    """The words of a script's ``#SBATCH`` lines, in order."""
    words: list[str] = []
    for number, line in enumerate(script.splitlines(), 1):
        if line.startswith("#SBATCH"):
            words += _words(line[len("#SBATCH") :], number)
            continue
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
    return words


def script_directives(script: str, known: Mapping[str, tuple[str | None, bool]] = OPTIONS) -> tuple[Options, list[str]]:
    """``#SBATCH`` options of a script, and the unsupported ones (a stray word is an error, as in sbatch).

    ``known``: the options to read (long name -> short flag, takes a value), by default :data:`OPTIONS`.
    """
    reader = _Reader(directive_words(script), known)
    stray = reader.read()
    if stray:
        raise DirectiveError(f"invalid directive in the batch script: {stray[0]!r}")
    return reader.options, reader.unsupported


def split_command_line(argv: Sequence[str]) -> tuple[list[str], str | None, list[str]]:
    """sbatch's command line as sbatch reads it: its options, the script (None if there is none), and the
    script's own arguments, which may look like options (``train.sbatch --epochs 3``)."""
    rest = _Reader(argv).read()
    options = list(argv[: len(argv) - len(rest)])
    if options and options[-1] == "--":
        options.pop()
    return options, (rest[0] if rest else None), rest[1:]


def parse(script: str, argv: Sequence[str]) -> tuple[Options, list[str]]:
    """Options (command line over directives) and the script's own arguments; raises on unsupported ones.

    ``argv`` is sbatch's command line without the script's path: options, then the script's arguments (after
    a ``--`` where they could be read as options; see :func:`split_command_line`).
    """
    from_script, bad_script = script_directives(script)
    reader = _Reader(argv)
    script_args = reader.read()
    unsupported = sorted(set(bad_script + reader.unsupported))
    if unsupported:
        raise DirectiveError("unsupported sbatch options: " + ", ".join(map(_why, unsupported)), unsupported)
    if reader.options.keys() & PER_NODE_GPUS:  # one request however it is spelled: the command line's
        from_script = {k: v for k, v in from_script.items() if k not in PER_NODE_GPUS}
    if {"requeue", "no-requeue"} & reader.options.keys():
        from_script = {k: v for k, v in from_script.items() if k not in ("requeue", "no-requeue")}
    merged: Options = {**from_script, **reader.options}
    return merged, script_args


_SBATCH_SIZE = re.compile(r"(\d+(?:\.\d+)?)([kmgtpKMGTP])[bB]?")


def minutes(value: str) -> int:
    """sbatch time formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) -> whole minutes, rounded up as Slurm does."""
    try:
        result = duration_minutes(value)
    except ValueError as exc:
        raise DirectiveError(f"--time={value}: {exc}") from None
    if not result:  # None (UNLIMITED) or 0, which Slurm also reads as no limit
        raise DirectiveError(f"--time={value}: give a finite time limit")
    return result


def memory(value: str, option: str = "mem") -> int:
    """sbatch memory sizes (default unit M; K, M, G, T) -> MiB.

    ``--mem=0`` is 0: all of each node's memory, as sbatch takes it (gateway.jobs.quota checks it against a
    quota). A 0 for ``--mem-per-cpu`` or ``--mem-per-gpu`` is refused.
    """
    sized = _SBATCH_SIZE.fullmatch(value)  # sbatch also takes 7GB, 1000mb, 7Gb
    try:
        result = memory_mib(f"{sized[1]}{sized[2].upper()}" if sized else value)
    except ValueError as exc:
        raise DirectiveError(f"--{option}={value}: {exc}") from None
    if result == 0 and option != "mem":
        raise DirectiveError(f"--{option}=0 is not supported: give a size")
    return result
