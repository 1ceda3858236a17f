"""Checkpoints: a directory of safetensors and JSON, written atomically, never unpickled.

    CKPT/
      model.safetensors   the weights (the tied embedding stored once)
      config.json         {"kind": "gpt" | "scalar", "model": GPTConfig, "tokenizer": name,
                           "run": the stage's full run config, ...anything else the stage adds}
      NAME.tiktoken       the tokenizer's ranks, when it is not `bytes`; config's "tokenizer"
                          is then this file's name, read relative to CKPT, so a checkpoint
                          moved to another machine (or one with no network) still loads it
      resume.pt           optional: optimizer state, RNG states, step, data position.
                          Tensors, numbers, strings, lists, tuples and dicts only: it is read
                          with torch.load(weights_only=True), which refuses anything else.

Atomic writes: a checkpoint is written to a fresh temporary directory beside CKPT, which
is renamed into place. Replacing an existing CKPT takes two renames (CKPT -> CKPT.old,
tmp -> CKPT); at every instant one of CKPT or CKPT.old is a complete checkpoint. Readers
(and --resume, and --init) take CKPT.old while CKPT is missing; the next save finishes the
job and clears the temporaries it can tell are its own (they hold a marker file), never a
directory someone else made. A run killed mid-save keeps its previous checkpoint.

Nothing non-finite is saved: save() checks every tensor first and stops the run with a
line saying which checkpoint is intact.
"""

import contextlib
import json
import math
import os
import random
import shutil
import typing
from dataclasses import MISSING, fields

import torch
from safetensors.torch import load_model, save_model

from nanoinstruct.cli import UserError
from nanoinstruct.model import GPT, GPTConfig, ScalarGPT, config_from_dict
from nanoinstruct.tokenizer import NAMED, get_tokenizer, write_ranks

KINDS = {"gpt": GPT, "scalar": ScalarGPT}
CKPT = "ckpt"  # a stage's checkpoint directory inside its out dir
PARTIAL = ".partial"  # inside a temporary checkpoint directory: ours to delete if a save died


def _ours(tmp):
    """A temporary left by a save of ours that died: it holds our marker (or nothing), and
    the process named in it is gone."""
    pid = tmp.rpartition(".tmp-")[2]
    if not pid.isdigit() or not os.path.isdir(tmp) or os.path.islink(tmp):
        return False
    if int(pid) != os.getpid():
        try:
            os.kill(int(pid), 0)
            return False                  # a live process: not ours to clear
        except ProcessLookupError:
            pass
        except PermissionError:
            return False
    names = os.listdir(tmp)
    return not names or PARTIAL in names


def recover(path):
    """Writer side (a run that holds the out dir): finish a save killed between or after
    its renames, and remove the temporaries a killed save left."""
    old = path + ".old"
    if os.path.isdir(old):
        if os.path.isdir(path):
            shutil.rmtree(old)            # killed after the swap: the old copy is stale
        else:
            os.rename(old, path)          # killed between the renames: put the old one back
    if os.path.isfile(os.path.join(path, PARTIAL)):
        os.remove(os.path.join(path, PARTIAL))   # killed just after the swap: complete all the same
    parent, base = os.path.dirname(path) or ".", os.path.basename(path)
    for name in os.listdir(parent):
        if name.startswith(base + ".tmp-") and _ours(os.path.join(parent, name)):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def ckpt_path(path):
    """A stage's out dir (which keeps its checkpoint in ckpt/) or a checkpoint dir -> the
    checkpoint dir. So `--init=out/sft` and `--init=out/sft/ckpt` mean the same."""
    inner = os.path.join(path, CKPT)
    return inner if os.path.isdir(inner) or os.path.isdir(inner + ".old") else path


def readable(path):
    """Reader side: the checkpoint at path (or in the out dir path), or CKPT.old while a
    save is between renames. Readers never rename: a writer may be mid-save."""
    path = os.path.normpath(ckpt_path(path))
    return path if os.path.isdir(path) or not os.path.isdir(path + ".old") else path + ".old"


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary directory; on success it replaces `path` in one step."""
    path = os.path.normpath(path)
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    recover(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    os.makedirs(tmp)                      # (not mkdtemp: that makes it 0700)
    open(os.path.join(tmp, PARTIAL), "w").close()
    try:
        yield tmp
        for name in os.listdir(tmp):      # data on disk before the rename makes it visible
            with open(os.path.join(tmp, name), "rb") as f:
                os.fsync(f.fileno())
        if os.path.isdir(path):
            os.rename(path, path + ".old")
        os.rename(tmp, path)
        _fsync_dir(parent)                # the renames on disk
        os.remove(os.path.join(path, PARTIAL))
        shutil.rmtree(path + ".old", ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def intact(path):
    """Which checkpoint a stopped run leaves at path, in words."""
    try:
        it = read_config(path).get("iter")
    except UserError:
        return f"No checkpoint was saved to {path}."
    return f"The last good checkpoint is {readable(path)}" + (f" (iteration {it})" if it is not None else "") \
        + ", untouched."


def _nonfinite(tree, name=""):
    """-> the name of the first floating tensor or float in tree that is not finite, or None."""
    if isinstance(tree, torch.Tensor):
        return name if tree.is_floating_point() and not torch.isfinite(tree).all() else None
    if isinstance(tree, float):
        return name if not math.isfinite(tree) else None
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    for k, v in items:
        bad = _nonfinite(v, f"{name}.{k}" if name else str(k))
        if bad:
            return bad
    return None


def save(path, model, config, resume=None, tokenizer=None):
    """Write model + config (a JSON-able dict; "kind" and "model" are filled in) + resume.
    With tokenizer, its ranks file goes into the checkpoint and config["tokenizer"] names it.
    A non-finite weight or optimizer state stops with a UserError and writes nothing."""
    model = getattr(model, "module", model)         # unwrap DDP
    model = getattr(model, "_orig_mod", model)      # and torch.compile
    kind = {cls: k for k, cls in KINDS.items()}[type(model)]
    bad = _nonfinite(model.state_dict()) or _nonfinite({"resume": resume or {}})
    if bad:
        raise UserError(f"{bad} is not finite" + (f" at iteration {config['iter']}" if "iter" in config else "")
                        + f"; stopped without saving (is --lr too high?). {intact(path)}")
    config = {**config, "kind": kind, "model": vars(model.config).copy()}
    with atomic_dir(path) as tmp:
        if tokenizer is not None:
            config["tokenizer"] = save_tokenizer(tokenizer, tmp)
            config["template"] = tokenizer.template
        save_model(model, os.path.join(tmp, "model.safetensors"))
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        if resume is not None:
            torch.save(resume, os.path.join(tmp, "resume.pt"))


def _check_model(file, m):
    """config.json's "model": every GPTConfig field there, of its type, in its range."""
    if not isinstance(m, dict):
        raise UserError(f"{file}: model: expected an object of GPTConfig fields, got {json.dumps(m)[:40]}")
    kinds = typing.get_type_hints(GPTConfig)
    for f in fields(GPTConfig):
        if f.name not in m:
            if f.default is MISSING:
                raise UserError(f"{file}: model.{f.name}: missing")
            continue
        v, kind = m[f.name], kinds[f.name]
        ok = isinstance(v, bool) if kind is bool else not isinstance(v, bool) and (
            isinstance(v, int) if kind is int else isinstance(v, (int, float)) and math.isfinite(v))
        if not ok:
            want = {bool: "true or false", int: "an integer", float: "a number"}[kind]
            raise UserError(f"{file}: model.{f.name} is {json.dumps(v)}, expected {want}")
        if kind is int and v < 1:
            raise UserError(f"{file}: model.{f.name} is {v}, expected at least 1")
    if m["n_embd"] % m["n_head"]:
        raise UserError(f"{file}: model.n_embd {m['n_embd']} is not a multiple of n_head {m['n_head']}")
    if not 0 <= m.get("dropout", 0.0) < 1:
        raise UserError(f"{file}: model.dropout is {m['dropout']}, expected [0, 1)")


def read_json(file):
    """A JSON file (a config.json, a report.json); a UserError at file:line if it is not JSON."""
    try:
        with open(file) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{file}:{getattr(e, 'lineno', 1)}: not valid JSON: {getattr(e, 'msg', e)}") from None


def read_config(path):
    path = readable(path)
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise UserError(f"{path}: not a checkpoint (no config.json)")
    config = read_json(file)
    if not isinstance(config, dict) or config.get("kind") not in KINDS or "model" not in config:
        raise UserError(f"{file}: not a nanoinstruct checkpoint config (needs kind and model)")
    _check_model(file, config["model"])
    if not isinstance(config.get("tokenizer", ""), str):
        raise UserError(f"{file}: tokenizer is {json.dumps(config['tokenizer'])}, expected a name")
    return config


def load(path, device="cpu"):
    """-> (model, config dict). The model class (GPT or ScalarGPT) comes from config["kind"]."""
    config = read_config(path)
    path = readable(path)
    model = KINDS[config["kind"]](config_from_dict(config["model"]))
    file = os.path.join(path, "model.safetensors")
    if not os.path.isfile(file):
        raise UserError(f"{path}: checkpoint has no model.safetensors")
    try:
        load_model(model, file, strict=True)
    except Exception as e:  # wrong shapes or names: a different model than config.json says
        what = "not a readable safetensors file" if type(e).__name__ == "SafetensorError" else \
            "does not match its config.json"
        raise UserError(f"{file}: {what} ({str(e).splitlines()[0][:200]})") from None
    return model.to(device), config


def save_tokenizer(tok, directory):
    """Write tok's ranks into directory -> the name that load_tokenizer reads back.

    The file's stem picks the split regex and special tokens when it is read back
    (tokenizer._local_encoding), so it is named after the encoding: `cl100k_base.tiktoken`,
    a local file's own name, and `gpt2.tiktoken` for a vocabulary read from a Hugging Face
    directory (GPT-2's regex, EOS after the last rank)."""
    if tok.name == "bytes":
        return "bytes"
    base = os.path.basename(tok.name)
    file = base if base.endswith(".tiktoken") else f"{tok.name}.tiktoken" if tok.name in NAMED \
        else "gpt2.tiktoken"
    write_ranks(tok.enc._mergeable_ranks, os.path.join(directory, file))
    if get_tokenizer(os.path.join(directory, file), tok.template) != tok:
        raise ValueError(f"tokenizer {tok.name}: {file} would not rebuild it")
    return file


def load_tokenizer(path, config, template=""):
    """The tokenizer of the checkpoint at path whose config.json is config: a ranks file
    inside it, `bytes`, or (older checkpoints) a named encoding or an absolute path; with its
    prompt template, unless `template` replaces it."""
    name = config.get("tokenizer", "bytes")
    template = template or config.get("template", "instruction")
    if name.endswith(".tiktoken") and not os.path.isabs(name):
        file = os.path.join(readable(path), name)
        if not os.path.isfile(file):
            raise UserError(f"{file}: missing; the checkpoint's config.json names it as its tokenizer")
        return get_tokenizer(file, template)
    return get_tokenizer(name, template)


def load_with_tokenizer(path, device="cpu", template=""):
    """-> (model, tokenizer, config): the checkpoint and the tokenizer it carries, checked to
    fit: the model predicts exactly the tokenizer's real ids and has a row for every id."""
    model, config = load(path, device)
    tok = load_tokenizer(path, config, template)
    check_vocab(model, tok, path)
    return model, tok, config


def check_vocab(model, tok, where):
    """A model and a tokenizer fit when the model predicts exactly the tokenizer's real ids
    (n_real) and has an embedding row for every id, PAD included."""
    c = getattr(model, "gpt", model).config
    if c.n_real != tok.n_real or c.vocab_size <= tok.pad_id:
        raise UserError(f"{where}: the model predicts {c.n_real} token ids ({c.vocab_size} embedding rows); "
                        f"its tokenizer {tok.name} has {tok.n_real} (+ PAD): they do not belong together")


def load_resume(path, keys=()):
    """The resume state saved with the checkpoint. Never executes pickled code. With keys:
    a UserError unless the state exists and holds them (a run of the same stage)."""
    file = os.path.join(readable(path), "resume.pt")
    if not os.path.isfile(file):
        if keys:
            raise UserError(f"--resume: {readable(path)} has no resume state (resume.pt); start a new run "
                            f"from it with --init instead")
        return None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{file}: refused to load ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]})") from None
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise UserError(f"--resume: {file} lacks {', '.join(missing)}: a checkpoint of another stage?")
    return state


def rng_state():
    """Every RNG a run draws from: Python's, torch's CPU and CUDA generators."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
