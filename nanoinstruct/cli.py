"""The command line: flags into a config dataclass, and user errors without tracebacks.

Each stage script declares its knobs as one dataclass at the top (cleanrl's `Args`);
`parse_flags(Config, argv)` overrides any field with `--name=value` or `--name value`
(dashes and underscores are the same; a bare `--flag` sets a bool to true).

Anything a user can cause (a bad flag, a bad data line, a missing checkpoint, an encoding
that cannot be fetched) raises UserError with the place in the message:
`file:line: field: problem`, `--flag: problem`, or the path. Entry points wrap their main
in `cli_main`, which prints `error: ...` to stderr and exits with status 2 without a
traceback. Bugs (any other exception) keep their traceback.
"""

import dataclasses
import difflib
import sys
import typing


class UserError(Exception):
    """A mistake in what the user gave us: the message says what and where."""


def cli_main(main, *args, **kwargs):
    """Run main(); turn a UserError into `error: msg` on stderr and exit status 2."""
    try:
        return main(*args, **kwargs)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)


def _convert(flag, value, kind):
    if kind is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise UserError(f"{flag}={value!r}: expected true or false")
    if kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            raise UserError(f"{flag}={value!r}: expected {'an integer' if kind is int else 'a number'}") from None
    return value  # str, and fields whose default is None


def parse_flags(config_cls, argv=None):
    """Build config_cls() with defaults overridden by --name=value flags from argv."""
    argv = sys.argv[1:] if argv is None else list(argv)
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(config_cls)}
    kinds = {}  # the declared type, with Optional[X] read as X
    for name, hint in typing.get_type_hints(config_cls).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        kinds[name] = args[0] if args else hint
    values, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print("flags (default):")
            for name, value in defaults.items():
                print(f"  --{name}={value}")
            sys.exit(0)
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}: flags look like --name=value")
        name, eq, value = arg[2:].partition("=")
        name = name.replace("-", "_")
        flag = f"--{name}"
        if name not in defaults:
            near = difflib.get_close_matches(name, defaults, n=1)
            raise UserError(f"{flag}: unknown flag" + (f"; did you mean --{near[0]}?" if near else
                                                       "; see --help"))
        if not eq:  # --name value, or a bare boolean --name
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if kinds[name] is bool and (nxt is None or nxt.startswith("--")):
                value = "true"
            elif nxt is None:
                raise UserError(f"{flag}: needs a value")
            else:
                value, i = nxt, i + 1
        values[name] = _convert(flag, value, kinds[name])
        i += 1
    return config_cls(**{**defaults, **values})
