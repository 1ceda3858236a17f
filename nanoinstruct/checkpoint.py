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
take CKPT.old while CKPT is missing; the next save finishes the job and clears temporaries.
A run killed mid-save keeps its previous checkpoint.
"""

import contextlib
import json
import os
import random
import shutil

import torch
from safetensors.torch import load_model, save_model

from nanoinstruct.cli import UserError
from nanoinstruct.model import GPT, ScalarGPT, config_from_dict
from nanoinstruct.tokenizer import NAMED, get_tokenizer, write_ranks

KINDS = {"gpt": GPT, "scalar": ScalarGPT}
CKPT = "ckpt"  # a stage's checkpoint directory inside its out dir


def _recover(path):
    """Writer side: finish a replacement interrupted between its two renames, and remove
    temporaries left by a killed save."""
    old = path + ".old"
    if os.path.isdir(old):
        if os.path.isdir(path):
            shutil.rmtree(old)            # killed after the swap: the old copy is stale
        else:
            os.rename(old, path)          # killed between the renames: put the old one back
    parent, base = os.path.dirname(path) or ".", os.path.basename(path)
    for name in os.listdir(parent):
        if name.startswith(base + ".tmp-"):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def ckpt_path(path):
    """A stage's out dir (which keeps its checkpoint in ckpt/) or a checkpoint dir -> the
    checkpoint dir. So `--init=out/sft` and `--init=out/sft/ckpt` mean the same."""
    inner = os.path.join(path, CKPT)
    return inner if os.path.isdir(inner) or os.path.isdir(inner + ".old") else path


def _readable(path):
    """Reader side: the checkpoint at path (or in the out dir path), or CKPT.old while a
    save is between renames. Readers never rename: a writer may be mid-save."""
    path = os.path.normpath(ckpt_path(path))
    return path if os.path.isdir(path) or not os.path.isdir(path + ".old") else path + ".old"


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary directory; on success it replaces `path` in one step."""
    path = os.path.normpath(path)
    parent = os.path.dirname(path) or "."
    os.makedirs(parent, exist_ok=True)
    _recover(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    os.makedirs(tmp)                      # (not mkdtemp: that makes it 0700)
    try:
        yield tmp
        for name in os.listdir(tmp):      # data on disk before the rename makes it visible
            with open(os.path.join(tmp, name), "rb") as f:
                os.fsync(f.fileno())
        if os.path.isdir(path):
            os.rename(path, path + ".old")
        os.rename(tmp, path)
        shutil.rmtree(path + ".old", ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save(path, model, config, resume=None, tokenizer=None):
    """Write model + config (a JSON-able dict; "kind" and "model" are filled in) + resume.
    With tokenizer, its ranks file goes into the checkpoint and config["tokenizer"] names it."""
    model = getattr(model, "module", model)         # unwrap DDP
    model = getattr(model, "_orig_mod", model)      # and torch.compile
    kind = {cls: k for k, cls in KINDS.items()}[type(model)]
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


def read_config(path):
    path = _readable(path)
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise UserError(f"{path}: not a checkpoint (no config.json)")
    try:
        with open(file) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{file}:{e.lineno}: not valid JSON: {e.msg}") from None
    if config.get("kind") not in KINDS or "model" not in config:
        raise UserError(f"{file}: not a nanoinstruct checkpoint config (needs kind and model)")
    return config


def load(path, device="cpu"):
    """-> (model, config dict). The model class (GPT or ScalarGPT) comes from config["kind"]."""
    config = read_config(path)
    path = _readable(path)
    model = KINDS[config["kind"]](config_from_dict(config["model"]))
    file = os.path.join(path, "model.safetensors")
    if not os.path.isfile(file):
        raise UserError(f"{path}: checkpoint has no model.safetensors")
    try:
        load_model(model, file, strict=True)
    except Exception as e:  # wrong shapes or names: a different model than config.json says
        raise UserError(f"{file}: does not match its config.json ({str(e).splitlines()[0]})") from None
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
    write_ranks(tok, os.path.join(directory, file))
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
        file = os.path.join(_readable(path), name)
        if not os.path.isfile(file):
            raise UserError(f"{file}: missing; the checkpoint's config.json names it as its tokenizer")
        return get_tokenizer(file, template)
    return get_tokenizer(name, template)


def load_resume(path):
    """The resume state saved with the checkpoint, or None. Never executes pickled code."""
    file = os.path.join(_readable(path), "resume.pt")
    if not os.path.isfile(file):
        return None
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{file}: refused to load ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]})") from None


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
