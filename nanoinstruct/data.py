"""The JSONL formats and their validation with `file:line: field: problem` errors.

One JSON object per line; blank lines are skipped. Each reader takes the formats people
already have and returns records in one canonical shape (P is the prompt, below):

    text            {"text": "Words that are fruits: apple, pear, plum."}
    demonstrations  {"prompt": P, "response": "tac"}, read from that, TRL's prompt/completion
                    (completion a string or [assistant message]), or chat {"messages": [...]}
                    whose last message is the assistant's response and the ones before it P
    comparisons     {"prompt": P, "responses": ["6", "5", "7"], "ranking": [1, 0, 2]}, read from
                    that, a pair {"prompt": P, "chosen": str, "rejected": str} (TRL's conversational
                    pair: [assistant message] each), TRL's implicit-prompt pair (two conversations
                    whose shared start is P), or HH-RLHF's raw
                    {"chosen": "\n\nHuman: ...\n\nAssistant: ...", "rejected": "..."}
    prompts         {"prompt": P, "family": "parity", ...}: a prompt-only line, or P of any line
                    above, or of a chat ending with the user's turn or the assistant's

P is a string for a single user turn; a multi-turn dialogue (or one with a system message
first) is a list of {"role": "system"|"user"|"assistant", "content": str} ending with the
user's turn. tokenizer.format_prompt writes either in a template; `check_template` names the
lines a template cannot hold. A comparison ranks K >= 2 responses (K may vary by line; the
paper's labelers ranked 4..9): `ranking` lists their indices best to worst, so a pair is
responses [chosen, rejected], ranking [0, 1]. An HH-RLHF prompt is the dialogue before the
last "\n\nAssistant:", which chosen and rejected must share, and the response is what follows
less the space after the colon: under the dialogue template, format_prompt(P) + " " + response
is the original text. Other responses are taken as they are. Keys that are no format's (the
world puts its labelers' metadata there) are kept, in their order.

Reading checks every line and reports every bad one at once (one UserError listing
`file:line: field: problem`); a line of no known format names the nearest and what it lacks.
Hostile input (deep nesting, huge integers, NaN, a lone surrogate, a directory, a pipe, a
file we may not read) is a file:line or path error too. Each record is a `Record`, a dict
that remembers its line in `.line`. Writing is atomic and deterministic (the same records
give byte-identical files); `repair_tail` drops the torn last line a killed append leaves.

Batching (padding, masks, packing) lives in batch.py.
"""

import json
import math
import os
import re
import stat
import sys


from nanoinstruct.cli import UserError
from nanoinstruct.tokenizer import format_prompt

MAX_LISTED = 20  # bad lines listed in one error; the rest are counted
MAX_DEPTH = 100  # nesting a line may have: deeper ones could not be written back (RecursionError)


class Record(dict):
    """A record as read: a plain dict (equal to one) that also knows its line in the file."""
    line = None


class Bad(Exception):
    """One problem on one line: Bad(field, problem); field is None for the whole line."""


# ----------------------------------------------------------------------------------------
# one value: obj -> its canonical form, or Bad

KINDS = {str: "a string", bool: "true/false", int: "a number", float: "a number",
         list: "a list", dict: "an object", type(None): "null"}


def _kind(v):
    return KINDS.get(type(v), type(v).__name__)


def _show(v, n=60):
    """v as JSON on one line, cut to about n characters (a message never floods a terminal)."""
    s = json.dumps(v, ensure_ascii=False)
    return s if len(s) <= n else s[:n - 3] + "..."


def _string(field, v, empty_ok=False):
    if not isinstance(v, str):
        raise Bad(field, f"expected a string, got {_kind(v)}")
    if not v.strip() and not empty_ok:
        raise Bad(field, "empty string")
    return v


def _messages(field, v):
    """[{"role": ..., "content": str}, ...] -> the same messages with only those two keys."""
    if not isinstance(v, list) or not v:
        raise Bad(field, f"expected a list of messages, got {_kind(v) if v != [] else 'an empty list'}")
    out = []
    for i, m in enumerate(v):
        if not isinstance(m, dict):
            raise Bad(f"{field}[{i}]", f'expected {{"role": ..., "content": ...}}, got {_kind(m)}')
        role = m.get("role")
        if role not in ("user", "assistant") and (role != "system" or i > 0):
            raise Bad(f"{field}[{i}].role", f"{_show(role)}: expected user or assistant (or system, first)")
        if "content" not in m:
            raise Bad(f"{field}[{i}].content", "missing")
        out.append({"role": role, "content": _string(f"{field}[{i}].content", m["content"], empty_ok=True)})
    return out


def _prompt(field, v):
    """A string, or messages ending with the user's turn -> P (module docstring)."""
    if isinstance(v, str):
        return _string(field, v)
    if not isinstance(v, list):
        raise Bad(field, f"expected a string or a list of messages, got {_kind(v)}")
    m = _messages(field, v)
    if m[-1]["role"] != "user":
        raise Bad(field, f"the last message should be the user's, got the {m[-1]['role']}'s")
    _string(f"{field}[{len(m) - 1}].content", m[-1]["content"])
    return m[0]["content"] if len(m) == 1 else m


def _last_reply(field, v):
    """A conversation ending with the assistant's reply -> (the messages before it, the reply)."""
    m = _messages(field, v)
    if m[-1]["role"] != "assistant":
        raise Bad(field, f"the last message should be the assistant's reply, got the {m[-1]['role']}'s")
    return m[:-1], m[-1]["content"]


def _split(field, v):
    """A conversation ending with the assistant's reply -> (P, reply)."""
    before, reply = _last_reply(field, v)
    if not before:
        raise Bad(field, "no user turn before the assistant's reply")
    return _prompt(field, before), reply


def _reply(field, v, prompt):
    """A response: a string, or TRL's [assistant message] (or a whole conversation, whose
    start must then be the prompt) -> the string."""
    if isinstance(v, str):
        return v
    before, reply = _last_reply(field, v)
    if before and before != ([{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt):
        raise Bad(field, "the messages before the reply are not the prompt")
    return reply


HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
TURN = re.compile(r"\n\n(Human|Assistant):")


def _unspace(s):
    return s[1:] if s.startswith(" ") else s


def _hh(field, text):
    """An HH-RLHF dialogue -> (the text before its last "\n\nAssistant:", the response)."""
    _string(field, text)
    text = "\n\n" + text if text.startswith("Human:") else text
    cut = text.rfind(ASSISTANT)
    if not text.startswith(HUMAN) or cut < 0:
        raise Bad(field, r'not an HH-RLHF dialogue ("\n\nHuman: ...\n\nAssistant: ..."); '
                         "give the prompt in a prompt field")
    return text[:cut], _unspace(text[cut + len(ASSISTANT):])


def _implicit(r):
    """A pair without a prompt: HH-RLHF dialogues, or TRL conversations -> (P, chosen, rejected).
    The prompt is what chosen and rejected share before their last assistant turn."""
    chosen, rejected = r["chosen"], r["rejected"]
    if isinstance(chosen, list):
        (p, c), (q, j) = _split("chosen", chosen), _split("rejected", rejected)
        if p != q:
            raise Bad("rejected", "its conversation before the reply differs from chosen's "
                                  "(the implicit prompt is their shared start)")
        return p, c, j
    (p, c), (q, j) = _hh("chosen", chosen), _hh("rejected", rejected)
    if p != q:
        at = len(os.path.commonprefix([p, q]))
        raise Bad("rejected", f"chosen and rejected differ at character {at}, before their last "
                              r'"\n\nAssistant:" (an HH-RLHF pair shares the dialogue up to it)')
    turns = TURN.split(p)            # ["", "Human", " hi", "Assistant", " hello", "Human", ...]
    m = [{"role": "user" if who == "Human" else "assistant", "content": _unspace(said)}
         for who, said in zip(turns[1::2], turns[2::2])]
    return _prompt("chosen", m), c, j


# ----------------------------------------------------------------------------------------
# one line: obj (a dict) -> the record in canonical shape, or Bad

FORMAT_KEYS = {"prompt", "response", "completion", "messages", "chosen", "rejected", "responses",
               "ranking"}  # read as a format's fields, never kept as metadata


def _name(key):
    return _show(key, 40)[1:-1] if isinstance(key, str) else _show(key, 40)


def _match(r, formats):
    """The first format (a tuple of keys) that r has all the keys of; else Bad naming the
    nearest (the largest share of its keys present; the first on ties) and what it lacks."""
    for keys in formats:
        if all(k in r for k in keys):
            return keys
    near = max(formats, key=lambda keys: sum(k in r for k in keys) / len(keys))
    missing = [k for k in near if k not in r]
    other = [_name(k) for k in r if k not in FORMAT_KEYS]
    if len(other) > 6:
        other = other[:5] + [f"... ({len(other) - 5} more)"]
    raise Bad(", ".join(missing), f"missing (no known format; nearest is {'/'.join(near)}"
                                  + (f"; unknown keys: {', '.join(other)})" if other else ")"))


def _canonical(r, **fields):
    """r with its format's keys replaced by `fields` (where the first of them was), and its
    other keys, the metadata, kept in their order."""
    out, pending = {}, dict(fields)
    for k, v in r.items():
        if k in pending:
            out[k] = pending.pop(k)
        elif k in FORMAT_KEYS:          # a format's own key: the canonical fields go here
            out.update(pending)
            pending = {}
        else:
            out[k] = v
    out.update(pending)
    return out


def check_text(r):
    """{"text": str}"""
    _match(r, [("text",)])
    _string("text", r["text"])
    return r


def check_demo(r):
    """{"prompt": str, "response": str}, {"prompt": str, "completion": str} or {"messages":
    [{"role": "user", "content": str}, ..., {"role": "assistant", "content": str}]}"""
    keys = _match(r, [("prompt", "response"), ("prompt", "completion"), ("messages",)])
    if keys == ("messages",):
        prompt, response = _split("messages", r["messages"])
    else:
        prompt = _prompt("prompt", r["prompt"])
        response = r["response"] if keys[1] == "response" else _reply("completion", r["completion"], prompt)
    return _canonical(r, prompt=prompt, response=_string(keys[-1], response))


def check_comparison(r):
    """{"prompt": str, "responses": [str, ...], "ranking": [best, ..., worst]}, a pair
    {"prompt": str, "chosen": str, "rejected": str}, or HH-RLHF's {"chosen": "\\n\\nHuman:
    ...\\n\\nAssistant: ...", "rejected": ...}"""
    keys = _match(r, [("prompt", "responses", "ranking"), ("prompt", "chosen", "rejected"),
                      ("chosen", "rejected")])
    if keys == ("chosen", "rejected"):
        prompt, chosen, rejected = _implicit(r)
        return _canonical(r, prompt=prompt, responses=[chosen, rejected], ranking=[0, 1])
    prompt = _prompt("prompt", r["prompt"])
    if keys == ("prompt", "chosen", "rejected"):
        chosen, rejected = _reply("chosen", r["chosen"], prompt), _reply("rejected", r["rejected"], prompt)
        return _canonical(r, prompt=prompt, responses=[chosen, rejected], ranking=[0, 1])
    responses = r["responses"]
    if not isinstance(responses, list):
        raise Bad("responses", f"expected a list of strings, got {_kind(responses)}")
    K = len(responses)
    if K < 2:
        raise Bad("responses", f"needs at least 2 responses to rank, got {K}")
    for i, s in enumerate(responses):  # a sampled response may be empty (EOS at once): still ranked
        _string(f"responses[{i}]", s, empty_ok=True)
    ranking = r["ranking"]
    if not isinstance(ranking, list) or any(type(i) is not int for i in ranking):
        raise Bad("ranking", f"expected a list of integers, got {_show(ranking)}")
    if sorted(ranking) != list(range(K)):
        raise Bad("ranking", f"{_show(ranking)} is not a permutation of 0..{K - 1} ({K} responses)")
    return _canonical(r, prompt=prompt, responses=responses, ranking=ranking)


def check_prompt(r):
    """{"prompt": str, ...metadata}, or a demonstration, comparison or chat (messages) whose
    prompt is read"""
    keys = _match(r, [("prompt",), ("messages",), ("chosen", "rejected")])
    if keys == ("prompt",):
        prompt = _prompt("prompt", r["prompt"])
    elif keys == ("messages",):
        m = _messages("messages", r["messages"])
        prompt = _split("messages", m)[0] if m[-1]["role"] == "assistant" else _prompt("messages", m)
    else:
        prompt = _implicit(r)[0]
    return _canonical(r, prompt=prompt)


# ----------------------------------------------------------------------------------------
# reading and writing

def _no_constant(name):
    raise Bad(None, f"not JSON ({name} is not a JSON number)")


def _finite(s):
    x = float(s)
    if math.isinf(x):
        raise Bad(None, f"not JSON we can read (the number {s[:20]} overflows a float)")
    return x


def _depth(obj):
    deepest, todo = 0, [(obj, 1)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            todo += [(x, d + 1) for x in (v.values() if isinstance(v, dict) else v)]
    return deepest


def _parse(raw, first):
    """One line's bytes -> a JSON object, or Bad."""
    try:
        text = raw.rstrip(b"\r\n").decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError:
        raise Bad(None, "not UTF-8 text") from None
    deep = Bad(None, f"not JSON we can read (nested deeper than {MAX_DEPTH} levels)")
    try:
        obj = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except json.JSONDecodeError as e:
        raise Bad(None, f"not JSON ({e.msg} at column {e.colno})") from None
    except ValueError:              # int(): more digits than Python converts (CVE-2020-10735)
        limit = getattr(sys, "get_int_max_str_digits", lambda: 4300)()
        raise Bad(None, f"not JSON we can read (an integer of more than {limit} digits)") from None
    except RecursionError:
        raise deep from None
    if text.count("[") + text.count("{") > MAX_DEPTH and _depth(obj) > MAX_DEPTH:
        raise deep
    if "\\u" in text:              # an escape may leave half a surrogate pair: not text
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise Bad(None, r"a \ud800-\udfff escape that is not half of a surrogate pair "
                            "(not text)") from None
    if not isinstance(obj, dict):
        raise Bad(None, f"expected a JSON object, got {_kind(obj)}")
    return obj


def open_file(path, mode="rb"):
    """Open a regular file, or raise a UserError naming the path (missing, a directory, a
    pipe or device, no permission)."""
    try:
        kind = os.stat(path).st_mode
        if stat.S_ISDIR(kind):
            raise UserError(f"{path}: is a directory, not a file")
        if not stat.S_ISREG(kind):
            raise UserError(f"{path}: not a regular file (a pipe or a device); save it to a file")
        return open(path, mode)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as e:
        raise UserError(f"{path}: cannot open ({e.strerror})") from None


def _listing(path, errors, what):
    listed = errors[:MAX_LISTED]
    if len(errors) > MAX_LISTED:
        listed.append(f"... and {len(errors) - MAX_LISTED} more")
    n = len(errors)
    return UserError(f"{path}: {n} bad line{'s' * (n > 1)}; {what}\n" + "\n".join(listed))


def read_jsonl(path, check):
    """Read a JSONL file, every line through check(); raise one UserError for all bad lines."""
    records, errors = [], []
    with open_file(path) as f:     # binary: only b"\n" ends a line (not U+2028 in a string)
        try:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    rec = Record(check(_parse(raw, lineno == 1)))
                    rec.line = lineno
                    records.append(rec)
                except Bad as e:
                    field, problem = e.args
                    errors.append(f"{path}:{lineno}: " + (f"{field}: " if field else "") + problem)
        except OSError as e:
            raise UserError(f"{path}: read failed ({e.strerror})") from None
    shape = " ".join(check.__doc__.split())        # the check's docstring: the line's shape
    if errors:
        raise _listing(path, errors, f"each line should be {shape}")
    if not records:
        raise UserError(f"{path}: empty file; each line should be {shape}")
    return records


def read_text(path):
    return read_jsonl(path, check_text)


def read_demos(path):
    return read_jsonl(path, check_demo)


def read_comparisons(path):
    return read_jsonl(path, check_comparison)


def read_prompts(path):
    return read_jsonl(path, check_prompt)


def require(records, path, fields, why=""):
    """Check every record, not only the first, for `fields`: a tuple of keys, or a function
    record -> keys (what a record needs may depend on it, as the world's families do), which
    may also raise Bad(field, problem). One UserError lists `file:line: field: problem` for
    each record that fails, and says why the fields are needed. -> the records."""
    errors = []
    for i, r in enumerate(records):
        where = f"{path}:{r.line}" if getattr(r, "line", None) else f"{path}: record {i + 1}"
        try:
            errors += [f"{where}: {k}: missing" for k in (fields(r) if callable(fields) else fields)
                       if k not in r][:1]
        except Bad as e:
            errors.append(f"{where}: {e.args[0]}: {e.args[1]}")
    if errors:
        raise _listing(path, errors, why)
    return records


def check_template(records, path, template):
    """Every record's prompt can be written in the template (tokenizer.format_prompt): a
    multi-turn prompt under the instruction template is a file:line error that says to pass
    --template=dialogue. Call it after reading, once the template is known. -> the records."""
    def fits(r):
        try:
            format_prompt(r["prompt"], template)
        except UserError as e:
            raise Bad("prompt", str(e)) from None
        return ()
    return require(records, path, fits, f"the {template} template cannot hold these prompts")


def _dumps(record):
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_jsonl(path, records):
    """Write records, one per line, atomically: a temporary file beside path, then a rename."""
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            for r in records:
                f.write(_dumps(r))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):          # a full disk, no permission: path left as it was
            raise UserError(f"{path}: cannot write ({e.strerror})") from None
        raise


def append_jsonl(path, record):
    """Append one record and flush it to disk now (a labeling session killed loses nothing)."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "a", encoding="utf-8", newline="\n") as f:
            f.write(_dumps(record))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:                    # a torn line left behind is dropped by repair_tail
        raise UserError(f"{path}: cannot append ({e.strerror})") from None


def repair_tail(path):
    """Make an append-only JSONL file whole again before reading or appending to it.

    A kill or a full disk mid-append leaves a last line without its newline. If that line
    is not a complete JSON object, it is cut off (one line on stderr says so); if it is one
    (a file written by hand), it gets its newline, so that the next append starts a line.
    A missing or empty file, or one that ends with a newline, is left alone."""
    if not os.path.exists(path):
        return
    with open_file(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        start = end                            # back to the byte after the last newline
        while start > 0:
            n = min(start, 1 << 16)
            f.seek(start - n)
            cut = f.read(n).rfind(b"\n")
            start -= n if cut < 0 else n - cut - 1
            if cut >= 0:
                break
        if start == end:                       # empty, or ends with a newline
            return
        f.seek(start)
        tail = f.read()
        try:
            whole = not tail.strip() or isinstance(json.loads(tail.decode("utf-8")), dict)
        except (ValueError, RecursionError):
            whole = False
        if whole:
            f.write(b"\n")
        else:
            f.seek(0)
            lineno = 1 + sum(f.read(1 << 20).count(b"\n") for _ in range(0, start, 1 << 20))
            f.truncate(start)
            print(f"{path}:{lineno}: dropped an incomplete last line ({len(tail)} bytes), left by a "
                  f"write that was cut short", file=sys.stderr, flush=True)
        f.flush()
        os.fsync(f.fileno())
