"""The command line: flags into a config dataclass, checked against the ranges its comments
state; --help from the same comments; user errors without tracebacks.

Each entry point declares its knobs as one dataclass at the top (cleanrl's `Args`);
`parse_flags(Config, argv)` overrides any field with `--name=value` or `--name value`
(dashes and underscores are the same; a bare `--flag` sets a bool to true), then checks
every field before any work starts. A field's comment is `RANGE; help`:

    lr: float = 1e-3              # > 0; peak learning rate
    min_lr: float = 1e-4          # [0, lr]; cosine decay ends here
    dropout: float = 0.0          # [0, 1); residual, attention and embedding dropout
    minibatches: int = 1          # >= 1, divides batch_size; optimizer steps per epoch
    no_eos_penalty: float = -1.0  # any, nan; the score of a response without EOS (nan: keep r's)
    mode: str = "sft"             # sft | pretrain
    device: str = "auto"          # auto | cpu | cuda | cuda:N
    policy: str = ""              # required; the checkpoint to sample from

RANGE, for an int or float field (every entry point's numeric fields have one):
    any                           every finite value
    > a   >= a   < b   <= b       one bound
    [a, b]  [a, b)  (a, b]  (a, b)   an interval
  where a bound is a number (`2**31` too), or the name of an EARLIER field (its value);
  then, comma-separated, any of
    nan                           NaN is allowed too (the help says what it means)
    inf                           +inf is allowed too
    divides F                     the value divides the (earlier) field F
  A float is finite unless `inf` or `nan` is listed: NaN never passes a comparison silently;
  and finite means a float32 can hold it (|x| <= 3.4e38): every float flag ends up in one.
RANGE, for a str field: `a | b | c` (the value is one of them; `cuda:N` stands for cuda:0,
cuda:1, ...; a cuda value is checked against the GPUs this machine has), or `required`
(not empty). A str or bool field may have no RANGE: its whole comment is help.
A comment line under a field continues its help; a comment line at the fields' indent is
a heading that starts a group in --help. What no range can say goes in a `check(self)`
method of the Config, which raises UserError.

Anything a user can cause (a bad flag, a bad data line, a missing checkpoint, a full disk)
raises UserError with the place in the message: `file:line: field: problem`,
`--flag: problem`, or the path. Entry points wrap their main in `cli_main`, which prints
`error: ...` to stderr and exits with status 2 without a traceback; it also turns the
operating system's refusals (a missing or unwritable path, a full disk) and running out of
memory into one such line. Bugs (any other exception) keep their traceback.
"""

import ast
import dataclasses
import difflib
import errno
import functools
import inspect
import io
import math
import operator
import os
import re
import sys
import textwrap
import tokenize
import typing


class UserError(Exception):
    """A mistake in what the user gave us: the message says what and where."""


# ---------------------------------------------------------------------------------------
# failures at the top

OS_FIXES = {errno.ENOENT: "check the path", errno.ENOTDIR: "a directory in the path is a file",
            errno.EISDIR: "a directory where a file belongs", errno.EACCES: "check its permissions",
            errno.EPERM: "check its permissions", errno.EROFS: "a read-only file system; write elsewhere",
            errno.ENOSPC: "the disk is full; free some space or write elsewhere",
            errno.EDQUOT: "over the disk quota; free some space or write elsewhere",
            errno.EFBIG: "the file is too large for this file system; write elsewhere",
            errno.ENAMETOOLONG: "shorten the path", errno.ELOOP: "a symlink loop in the path",
            errno.EEXIST: "remove it or choose another path", errno.ENOTEMPTY: "choose another path"}


def _memory_message(e):
    """-> one line for running out of memory (naming the size asked for), or None."""
    text = str(e)
    if not (isinstance(e, MemoryError) or "can't allocate memory" in text or "out of memory" in text):
        return None
    size = re.search(r"allocate (\d+) bytes", text)
    if size:
        n, unit = float(size.group(1)), "B"
        for u in ("KiB", "MiB", "GiB", "TiB", "PiB"):
            if n < 1024:
                break
            n, unit = n / 1024, u
        what = f"a tensor of {n:.1f} {unit}"
    else:
        size = re.search(r"[Tt]ried to allocate ([\d.]+ ?[KMGTP]?i?B)", text)
        what = f"a tensor of {size.group(1)}" if size else "more"
    return f"out of memory: could not allocate {what}; lower --batch_size (or the model's size or block_size)"


def cli_main(main, *args, **kwargs):
    """Run main(); turn a UserError, an operating-system refusal or running out of memory
    into `error: msg` on stderr and exit status 2."""
    try:
        return main(*args, **kwargs)
    except UserError as e:
        msg = str(e)
    except OSError as e:
        if e.errno not in OS_FIXES:
            raise
        where = f"{e.filename}: " if e.filename is not None else ""
        msg = f"{where}{e.strerror or os.strerror(e.errno)} ({OS_FIXES[e.errno]})"
    except FloatingPointError as e:     # a diverged model (model.generate)
        msg = str(e)
    except (MemoryError, RuntimeError) as e:
        msg = _memory_message(e)
        if msg is None:
            raise
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


# ---------------------------------------------------------------------------------------
# the Config block, read from its source

@dataclasses.dataclass
class Field:
    name: str
    kind: type            # int, float, bool, str (Optional[X] read as X)
    default: object
    range: str = ""       # the RANGE text, "" if none
    help: str = ""
    group: str = ""       # the heading above it


NUMBER = r"-?(?:\d+\.?\d*(?:e-?\d+)?|\.\d+(?:e-?\d+)?|inf|2\*\*\d+)"
BOUND = rf"(?:{NUMBER}|[A-Za-z_]\w*)"
RANGE = re.compile(rf"""^(?:(?P<any>any)
    |(?P<op>>=|<=|>|<)\s*(?P<v>{BOUND})
    |(?P<lb>[\[(])\s*(?P<lo>{BOUND})\s*,\s*(?P<hi>{BOUND})\s*(?P<rb>[\])]))
    (?P<extras>(?:\s*,\s*(?:nan|inf|divides\s+\w+))*)$""", re.X)
CHOICES = re.compile(r"^[\w.:-]+(?:\s*\|\s*[\w.:-]+)+$")


def _split(comment, kind):
    """A field's comment -> (RANGE, help)."""
    head, sep, rest = comment.partition(";")
    head = head.strip()
    if kind in (int, float) and (sep or RANGE.match(head)):
        return head, rest.strip()
    if kind is str and (CHOICES.match(head) or head == "required"):
        return head, rest.strip()
    return "", comment.strip()


@functools.lru_cache(maxsize=None)
def fields_of(config_cls):
    """The Config's fields with their RANGE, help and group, read from its source once."""
    hints = typing.get_type_hints(config_cls)
    kinds = {}
    for name, hint in hints.items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        kinds[name] = args[0] if args else hint
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(config_cls)}
    src = textwrap.dedent(inspect.getsource(config_cls))
    cls = ast.parse(src).body[0]
    fields = [n for n in cls.body if isinstance(n, ast.AnnAssign)]
    starts = {n.lineno: n.target.id for n in fields}
    indent = fields[0].col_offset
    stop = min([n.lineno for n in cls.body if isinstance(n, ast.FunctionDef)], default=cls.end_lineno + 1)
    comments = {t.start[0]: (t.start[1], t.string.lstrip("#").strip())
                for t in tokenize.generate_tokens(io.StringIO(src).readline) if t.type == tokenize.COMMENT}
    lines = src.splitlines()
    out, current, group = {}, None, ""
    for lineno in range(cls.lineno + 1, stop):
        line = lines[lineno - 1].strip()
        if lineno in starts:
            name = starts[lineno]
            rng, help_ = _split(comments.get(lineno, (0, ""))[1], kinds[name])
            current = out[name] = Field(name, kinds[name], defaults[name], rng, help_, group)
        elif line.startswith("#"):
            col, text = comments[lineno]
            if col <= indent:
                group, current = text, None
            elif current is not None:
                current.help = f"{current.help} {text}".strip()
        elif not line:
            current = None
    for i, f in enumerate(out.values()):
        if not f.range or f.kind not in (int, float):
            continue
        m = RANGE.match(f.range)
        named = [t for t in (m and (m["v"], m["lo"], m["hi"]) or ()) if t and not re.fullmatch(NUMBER, t)]
        named += re.findall(r"divides\s+(\w+)", m["extras"]) if m else []
        if not m or not set(named) <= set(list(out)[:i]):
            raise ValueError(f"{config_cls.__qualname__}.{f.name}: range {f.range!r} does not follow the "
                             f"grammar in nanoinstruct/cli.py (a name in it must be an earlier field)")
    return out


# ---------------------------------------------------------------------------------------
# checking a value against its RANGE

OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
FLOAT32_MAX = 3.4028234663852886e38


def _finite(x):
    return math.isfinite(x) and abs(x) <= FLOAT32_MAX


def _bound(token, cfg):
    if re.fullmatch(r"2\*\*\d+", token):
        return 2 ** int(token[3:])
    if re.fullmatch(NUMBER, token):
        return float(token)
    return getattr(cfg, token)


def _shown(token, cfg):
    """A bound as the user reads it: `lr` becomes `lr (--lr=0.001)`."""
    return token if re.fullmatch(NUMBER, token) else f"--{token}={getattr(cfg, token)}"


def _describe(m, cfg):
    """The range's bound as the user reads it: "> 0", "in [0, --lr=0.001]", "" for any."""
    if m["op"]:
        return f"{m['op']} {_shown(m['v'], cfg)}"
    if m["lb"]:
        return f"in {m['lb']}{_shown(m['lo'], cfg)}, {_shown(m['hi'], cfg)}{m['rb']}"
    return ""


def _check_number(f, value, cfg):
    """-> what is wrong with value, or None."""
    m = RANGE.match(f.range)
    extras = [e.strip() for e in m["extras"].split(",") if e.strip()]
    desc = _describe(m, cfg)
    if isinstance(value, float) and math.isnan(value):
        return None if "nan" in extras else f"must be a number {desc}, not nan".replace("  ", " ")
    if isinstance(value, float) and not _finite(value):
        if value == math.inf and "inf" in extras:
            return None
        return f"must be a finite number {desc}".rstrip() + (" (a float32 holds at most 3.4e38)"
                                                            if math.isfinite(value) else "")
    if m["op"]:
        ok = OPS[m["op"]](value, _bound(m["v"], cfg))
    elif m["lb"]:
        lo, hi = _bound(m["lo"], cfg), _bound(m["hi"], cfg)
        ok = ((value >= lo) if m["lb"] == "[" else (value > lo)) and \
             ((value <= hi) if m["rb"] == "]" else (value < hi))
    else:
        ok = True
    if not ok:
        return f"must be {desc}"
    for e in extras:
        if e.startswith("divides"):
            other = e.split()[1]
            n = getattr(cfg, other)
            if value == 0 or n % value:
                return f"does not divide --{other}={n}"
    return None


def _check_device(flag, value):
    if not value.startswith("cuda"):
        return
    import torch
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        raise UserError(f"{flag}={value}: no CUDA GPU is visible on this machine; use --device=cpu")
    index = int(value.partition(":")[2] or 0)
    if index >= n:
        raise UserError(f"{flag}={value}: this machine has {n} GPU{'s' * (n > 1)} "
                        f"(cuda:0 .. cuda:{n - 1})")


def _check_choice(flag, f, value):
    choices = [c.strip() for c in f.range.split("|")]
    ok = value in choices or ("cuda:N" in choices and re.fullmatch(r"cuda:\d+", value))
    if not ok:
        raise UserError(f"{flag}={value!r}: choose one of {' | '.join(choices)}")
    if "cuda" in choices or "cuda:N" in choices:
        _check_device(flag, value)


def validate(cfg):
    """Check every field of cfg against the RANGE in its comment, then cfg.check() if the
    Config has one. Raises UserError naming the first bad flag."""
    for f in fields_of(type(cfg)).values():
        value, flag = getattr(cfg, f.name), f"--{f.name}"
        if not f.range or value is None:
            if f.kind is float and isinstance(value, float) and not _finite(value):
                raise UserError(f"{flag}={value}: must be a finite number (a float32 holds at most 3.4e38)")
            continue
        if f.kind in (int, float):
            problem = _check_number(f, value, cfg)
            if problem:
                sep = " " if problem.startswith("does not") else ": "
                raise UserError(f"{flag}={value!r}{sep}{problem}" + (f"; {f.help}" if f.help else ""))
        elif f.range == "required":
            if not value:
                raise UserError(f"{flag} is required: {f.help}")
        else:
            _check_choice(flag, f, value)
    if hasattr(cfg, "check"):
        cfg.check()
    return cfg


# ---------------------------------------------------------------------------------------
# flags

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


def help_text(config_cls):
    """--help: the entry point's docstring's first paragraph, then each flag with its
    default, range and help, grouped as the Config block is."""
    doc = (sys.modules[config_cls.__module__].__doc__ or "").strip().split("\n\n")[0]
    lines = [doc, "", "flags (--name=value; default, range, meaning):"]
    group = ""
    for f in fields_of(config_cls).values():
        if f.group != group:
            group = f.group
            lines += [""] + ([f"  {group}:"] if group else [])
        flag = f"  --{f.name}={f.default}"
        text = "; ".join(filter(None, [f.range, f.help]))
        lines.append(f"{flag:34s} {text}" if len(flag) < 34 else f"{flag}\n{'':34s} {text}")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def parse_flags(config_cls, argv=None):
    """Build config_cls() with defaults overridden by --name=value flags from argv, checked
    against the ranges of its comments (validate)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    fields = fields_of(config_cls)
    values, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(help_text(config_cls), end="")
            sys.exit(0)
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}: flags look like --name=value")
        name, eq, value = arg[2:].partition("=")
        name = name.replace("-", "_")
        flag = f"--{name}"
        if name not in fields:
            near = difflib.get_close_matches(name, fields, n=1)
            raise UserError(f"{flag}: unknown flag" + (f"; did you mean --{near[0]}?" if near else
                                                       "; see --help"))
        kind = fields[name].kind
        if not eq:  # --name value, or a bare boolean --name
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if kind is bool and (nxt is None or nxt.startswith("--")):
                value = "true"
            elif nxt is None:
                raise UserError(f"{flag}: needs a value")
            else:
                value, i = nxt, i + 1
        values[name] = _convert(flag, value, kind)
        i += 1
    return validate(config_cls(**{**{n: f.default for n, f in fields.items()}, **values}))
