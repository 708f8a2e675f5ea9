"""Commands from drivers: the `edge_agent.commands` entry points, listed without importing.

`LazyGroup` is a click group whose own commands are the core's and whose other commands
are entry points of `edge_agent.commands` (`edge_agent.sdk.commands`): the name `simulate`
adds `edge-agent simulate`, the dotted name `discover.cameras` adds `cameras` to the core
group `discover`. The help lists an entry point by its name and where it comes from
(module, distribution) and imports nothing; a command is imported when it is run or its
own --help is asked. An entry point that cannot be used (its import fails, it is not a
click command, two packages claim the name, the name is a core command's) is an error of
that command alone, naming the entry point; the other commands are not affected.
"""

from __future__ import annotations

import difflib
import traceback
from collections.abc import Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import click

from edge_agent.sdk.commands import GROUP

__all__ = ["LazyGroup"]

_META_KEY = "edge_agent.cli.entry_points"


def _installed(ctx: click.Context) -> dict[tuple[str, ...], list[EntryPoint]]:
    """The entry points of GROUP by command path (`discover.cameras` -> (discover,
    cameras)), read once per invocation (ctx.meta is shared by the whole command line)."""
    found: dict[tuple[str, ...], list[EntryPoint]] | None = ctx.meta.get(_META_KEY)
    if found is None:
        found = {}
        for point in entry_points(group=GROUP):
            path = tuple(part.strip() for part in point.name.split("."))
            found.setdefault(path, []).append(point)
        ctx.meta[_META_KEY] = found
    return found


def _origin(point: EntryPoint) -> str:
    """`drivers.modbus.commands (community-data 0.1.0)`: where a command comes from."""
    dist = point.dist
    where = f"{dist.name} {dist.version}" if dist is not None else "no distribution"
    return f"{point.module} ({where})"


def _entry(point: EntryPoint) -> str:
    """The entry point as its package declares it, for error messages."""
    dist = point.dist
    owner = f", distribution {dist.name} {dist.version}" if dist is not None else ""
    return f"`{point.name} = {point.value}` (group {GROUP}{owner})"


def _problem(root: click.Group, path: tuple[str, ...],
             points: Sequence[EntryPoint]) -> tuple[str, str] | None:
    """Why the command an entry point names cannot be used, in a few words and in full;
    None if it can be (once imported)."""
    shown = " ".join(path)
    if len(points) > 1:
        return (f"claimed by {len(points)} packages",
                f"`{shown}` is claimed by {len(points)} entry points: "
                f"{', '.join(_entry(p) for p in points)}; uninstall all but one")
    group: click.Command = root
    for depth, part in enumerate(path[:-1]):
        sub = group.commands.get(part) if isinstance(group, click.Group) else None
        if not isinstance(sub, LazyGroup):
            where = " ".join(path[:depth + 1])
            return (f"`{where}` is not a group",
                    f"entry point {_entry(points[0])} adds `{shown}`, but `{where}` is not "
                    "a group of the core commands (the groups drivers may add to: "
                    f"{', '.join(_groups(root)) or 'none'}); rename it")
        group = sub
    assert isinstance(group, click.Group)
    if path[-1] in group.commands:
        return ("a core command has this name",
                f"`{shown}` is a core command; entry point {_entry(points[0])} is ignored: "
                "rename it")
    return None


def _groups(group: click.Group, above: tuple[str, ...] = ()) -> list[str]:
    """The core groups drivers may add commands to, as dotted entry-point prefixes."""
    found = []
    for name, sub in sorted(group.commands.items()):
        if isinstance(sub, LazyGroup):
            found.append(".".join((*above, name)))
            found += _groups(sub, (*above, name))
    return found


def _where_it_failed(exc: BaseException) -> str:
    """` at FILE:LINE` of the innermost frame outside importlib, if there is one."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<") and "importlib" not in f.filename]
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def _load(path: tuple[str, ...], point: EntryPoint) -> click.Command:
    shown = " ".join(path)
    dist = point.dist
    fix = (f"reinstall {dist.name}, or uninstall it" if dist is not None
           else "reinstall the package that declares it")
    hint = f"\nhint: {fix}; the other commands are not affected (--help lists them)"
    try:
        command = point.load()
    except Exception as exc:
        raise click.ClickException(
            f"`{shown}` cannot be loaded: entry point {_entry(point)} raised "
            f"{type(exc).__name__}: {exc}{_where_it_failed(exc)}{hint}") from None
    if not isinstance(command, click.Command):
        raise click.ClickException(
            f"`{shown}` cannot be loaded: entry point {_entry(point)} names a "
            f"{type(command).__name__}, not a click command{hint}")
    return command


class LazyGroup(click.Group):
    """A group of core commands plus the `edge_agent.commands` entry points below it.

    `prefix` is the group's path from the root (`()` for `edge-agent` itself,
    `("discover",)` for `edge-agent discover`)."""

    def __init__(self, *args: Any, prefix: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prefix = tuple(prefix)

    def _root(self, ctx: click.Context) -> click.Group:
        root = ctx.find_root().command
        return root if isinstance(root, click.Group) else self

    def _below(self, ctx: click.Context) -> dict[tuple[str, ...], list[EntryPoint]]:
        """The entry points below this group (at any depth), by path relative to it."""
        level = len(self.prefix)
        return {path[level:]: points for path, points in _installed(ctx).items()
                if path[:level] == self.prefix and len(path) > level}

    def _plugins(self, ctx: click.Context) -> dict[str, list[EntryPoint]]:
        """The entry points that are commands of this group itself, by name."""
        return {rel[0]: points for rel, points in self._below(ctx).items() if len(rel) == 1}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self._plugins(ctx)))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        core = self.commands.get(cmd_name)
        if core is not None:
            return core
        points = self._plugins(ctx).get(cmd_name)
        if not points:
            return None
        path = (*self.prefix, cmd_name)
        problem = _problem(self._root(ctx), path, points)
        if problem is not None:
            raise click.ClickException(problem[1])
        return _load(path, points[0])

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if (name and not name.startswith("-") and not ctx.resilient_parsing
                and self.get_command(ctx, name) is None):
            for rel, points in sorted(self._below(ctx).items()):
                problem = _problem(self._root(ctx), (*self.prefix, *rel), points)
                if rel[0] == name and problem is not None:
                    raise click.ClickException(problem[1])
            close = difflib.get_close_matches(name, self.list_commands(ctx))
            hint = f" Did you mean {close[0]!r}?" if close else ""
            if not _installed(ctx):
                hint += (f" No command from drivers is installed: they come from the "
                         f"`{GROUP}` entry points of installed packages (pip install -e . "
                         "in a checkout).")
            raise click.UsageError(f"No such command {name!r}.{hint}", ctx)
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The core commands with their short help, then the entry points with where they
        come from (none of them imported)."""
        core = [(name, cmd) for name, cmd in sorted(self.commands.items()) if not cmd.hidden]
        plugins: list[tuple[str, str]] = []
        root = self._root(ctx)
        for rel, points in sorted(self._below(ctx).items()):
            name = " ".join(rel)
            text = ", ".join(_origin(p) for p in points)
            problem = _problem(root, (*self.prefix, *rel), points)
            if problem is not None:
                text += f"; ignored: {problem[0]}"
            plugins.append((name, text))
        limit = formatter.width - 6 - max((len(name) for name, _ in core), default=0)
        if core:
            with formatter.section("Commands"):
                formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in core])
        if plugins:
            with formatter.section("Commands from drivers (imported when run; "
                                   "COMMAND --help tells more)"):
                formatter.write_dl(plugins)
