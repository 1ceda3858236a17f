"""Labeling, the paper's data step for the reward model: sample K responses per prompt
from a policy and have a labeler rank them, best to worst.

    python -m nanoinstruct.collect --policy=out/sft --prompts=data/world/rm_prompts.jsonl \\
        --k=4 --labeler=train --out=data/world/comparisons.jsonl

Labelers: `train` and `heldout` are the world's programs (they need the world's prompt
metadata); `human` shows a person the prompt and the K responses in the terminal and reads
a ranking such as `2 1 4 3` (best first), asking again on invalid input.

Each ranking is appended to --out as soon as it is made (comparisons format, data.py), so
Ctrl-C loses nothing, and a rerun with the same --out resumes after the prompts already
there (a last line torn by a kill or a full disk is dropped first: data.repair_tail). The
world labelers read each prompt's metadata: `world_fields` says which fields each family
needs, and every record is checked before any sampling. With a world labeler, the
agreement of the two world labelers on all pairs of the collected responses is reported at
the end: inter-labeler agreement, the paper's yardstick for a reward model's accuracy
(72.6 % between training labelers). It is not a ceiling: a model of one labeler can agree
with that labeler more often than another labeler does.
"""

import itertools
import json
import os
import sys
from dataclasses import dataclass

import torch
from tqdm import tqdm

from nanoinstruct import batching, checkpoint, data
from nanoinstruct.cli import UserError, cli_main, parse_flags
from nanoinstruct.model import GPT
from nanoinstruct.world import CATEGORIES, LABELERS, MIX


@dataclass
class Config:
    policy: str = ""              # required; checkpoint to sample from (e.g. out/sft)
    prompts: str = ""             # required; prompts JSONL
    out: str = ""                 # required; comparisons JSONL, appended to (a rerun resumes)
    k: int = 4                    # [2, 100]; responses per prompt (the paper: 4 to 9)
    labeler: str = "train"        # train | heldout | human
    max_new_tokens: int = 48      # >= 1
    temperature: float = 1.0      # > 0; sampling temperature (the K responses must differ)
    batch_size: int = 32          # [1, 4096]; prompts sampled together (x k rows)
    limit: int = 0                # >= 0; label at most this many prompts (0: all)
    seed: int = 0                 # [0, 2**32)
    device: str = "cpu"           # cpu | cuda | cuda:N


# What world.judge reads in a record of each family beside its answer (a string; a safe
# howto also needs key), and of what kind: a type, or the world's own table it must name.
FAMILY_FIELDS = {"repeat": {"word": str, "n": int}, "color": {"thing": str},
                 "list": {"category": CATEGORIES, "n": int}, "reverse": {"word": str}, "upper": {"word": str},
                 "parity": {"n": int}, "add": {"a": int, "b": int}, "digits": {"text": str},
                 "closed": {"colors": list}, "premise": {"subject": str, "wrong": str}, "howto": {"unsafe": bool}}
KINDS = {str: "a string", int: "an integer", bool: "true or false", list: "a list of strings"}


def fits(value, kind):
    if isinstance(kind, dict):
        return isinstance(value, str) and value in kind
    if kind is list:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def world_fields(rec):
    """The fields the world's labelers read in this record (for data.require); data.Bad for
    a record that is not the world's (no family, or one the world does not have) or a field
    of the wrong kind ("n": "five"), which would fail or mislead the judge later."""
    family = rec.get("family")
    if not (isinstance(family, str) and family in MIX):
        raise data.Bad("family", "missing" if family is None else
                       f"{json.dumps(family)[:40]} is not one of the world's ({', '.join(MIX)})")
    if not isinstance(rec["prompt"], str):
        raise data.Bad("prompt", "a world prompt is a single turn (a string)")
    safe_howto = family == "howto" and rec.get("unsafe") is False
    fields = {"answer": str, **FAMILY_FIELDS[family], **({"key": str} if safe_howto else {})}
    for k, kind in fields.items():
        if k in rec and not fits(rec[k], kind):
            raise data.Bad(k, f"{json.dumps(rec[k])[:40]} is not " + (
                f"one of the world's ({', '.join(kind)})" if isinstance(kind, dict) else KINDS[kind]))
    return tuple(fields)


def is_world(records):
    """Prompts are the world's when any of them carries a `family`; then every one must carry
    what the labelers read (require_world), so a typo or a mixed file is an error, not a
    silent switch to unlabelled prompts."""
    return any("family" in r for r in records)


def require_world(records, path, why="the world's labelers need its prompt metadata"):
    """Every record has what the world's labelers read (world_fields): a file:line error otherwise."""
    data.require(records, path, world_fields, why)


def ask_human(rec, responses, stdin=sys.stdin):
    """Show the prompt and responses; read a ranking (1-based, best first). None at EOF."""
    k = len(responses)
    prompt = rec["prompt"] if isinstance(rec["prompt"], str) else \
        "\n".join(f"{m['role']}: {m['content']}" for m in rec["prompt"])
    print(f"\n=== {prompt}")
    for i, y in enumerate(responses, 1):
        print(f"  [{i}] {y!r}")
    while True:
        print(f"rank all {k} (best first, e.g. {' '.join(map(str, range(1, k + 1)))}): ", end="", flush=True)
        line = stdin.readline()
        if not line:
            return None
        try:
            ranking = [int(t) - 1 for t in line.replace(",", " ").split()]
        except ValueError:
            ranking = []
        if sorted(ranking) == list(range(k)):
            return ranking
        print(f"  not a ranking of 1..{k}; try again")


def second_labeler(comparisons, path=None):
    """The world labeler that did not make these rankings: the one whose agreement with
    them is the yardstick for a reward model trained on them. None where there is none:
    rankings by a person, a mix, or prompts without the world's metadata. With the file's
    path, comparisons that are the world's (some have a family) are checked to have every
    field the labelers read (a file:line error, not a KeyError later)."""
    if path is not None:
        require_world([c for c in comparisons if "family" in c], path)
    if not comparisons or any("family" not in c for c in comparisons):
        return None
    made_by = {c.get("labeler") for c in comparisons}
    return {frozenset({"train"}): "heldout", frozenset({"heldout"}): "train"}.get(frozenset(made_by))


def agreement(comparisons, labeler):
    """-> (fraction, pairs): of all response pairs in the comparisons, the fraction that
    `labeler` orders the way the comparisons' own rankings do."""
    agree = n = 0
    for c in comparisons:
        mine = {y: i for i, y in enumerate(c["ranking"])}
        theirs = {y: i for i, y in enumerate(labeler.rank(c, c["responses"]))}
        for i, j in itertools.combinations(range(len(c["responses"])), 2):
            agree += (mine[i] < mine[j]) == (theirs[i] < theirs[j])
            n += 1
    return agree / max(n, 1), n


@torch.no_grad()
def main(argv=None):
    cfg = parse_flags(Config, argv)
    if os.path.isdir(cfg.out):
        raise UserError(f"--out={cfg.out}: a directory; --out names the comparisons file (JSONL) to append to")
    policy, tok, meta = checkpoint.load_with_tokenizer(cfg.policy, cfg.device)
    if not isinstance(policy, GPT):
        raise UserError(f"--policy={cfg.policy}: a {meta['kind']} checkpoint cannot generate")
    if cfg.max_new_tokens >= policy.config.block_size:
        raise UserError(f"--max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt in --policy's "
                        f"block_size {policy.config.block_size}; lower it")
    policy.eval()
    prompts = data.read_prompts(cfg.prompts)
    if cfg.labeler != "human":
        require_world(prompts, cfg.prompts, f"the {cfg.labeler} labeler needs the world's prompt "
                                            f"metadata; use --labeler=human for other prompts")
    data.check_template(prompts, cfg.prompts, tok.template)
    prompts = batching.fit_prompts(prompts, tok, policy.config.block_size - cfg.max_new_tokens, cfg.prompts)
    data.repair_tail(cfg.out)                  # a torn last line from a killed run
    done = data.read_comparisons(cfg.out) if os.path.exists(cfg.out) and os.path.getsize(cfg.out) else []
    second_labeler(done, cfg.out)              # checks the world's records already there
    seen = {json.dumps(c["prompt"]) for c in done}    # a prompt may be a list of messages
    todo = [p for p in prompts if json.dumps(p["prompt"]) not in seen]
    if cfg.limit:
        todo = todo[:max(0, cfg.limit - len(done))]
    print(f"{cfg.out}: {len(done)} prompts already labeled, {len(todo)} to go", file=sys.stderr)
    labeler = LABELERS.get(cfg.labeler)
    # a progress bar on a terminal for the world's labelers (a person labeling sees the prompts)
    for start in tqdm(range(0, len(todo), cfg.batch_size), desc="label", unit="batch", leave=False,
                      disable=None if labeler else True):
        batch = todo[start:start + cfg.batch_size]
        ids, mask = batching.left_pad([tok.encode_prompt(p["prompt"]) for p in batch for _ in range(cfg.k)],
                                  tok.pad_id)
        g = torch.Generator(cfg.device).manual_seed(cfg.seed * 1_000_003 + len(done) + start)
        out, _ = policy.generate(ids.to(cfg.device), mask.to(cfg.device), cfg.max_new_tokens,
                                 tok.eos_id, tok.pad_id, tok.n_vocab, cfg.temperature, generator=g)
        texts = [tok.decode_response(row) for row in out.tolist()]
        for i, rec in enumerate(batch):
            responses = texts[i * cfg.k:(i + 1) * cfg.k]
            ranking = labeler.rank(rec, responses) if labeler else ask_human(rec, responses)
            if ranking is None:  # end of input: stop, keeping what is labeled
                print(f"\nstopped: {len(done)} labeled; rerun the same command to resume",
                      file=sys.stderr)
                return
            c = {**rec, "responses": responses, "ranking": ranking, "labeler": cfg.labeler}
            data.append_jsonl(cfg.out, c)
            done.append(c)
    print(f"{cfg.out}: {len(done)} comparisons (k={cfg.k})", file=sys.stderr)
    other = second_labeler(done)
    if other:
        frac, n = agreement(done, LABELERS[other])
        print(f"labeler agreement ({cfg.labeler} vs {other}) on {n} pairs: {100 * frac:.1f}%")


if __name__ == "__main__":
    cli_main(main)
