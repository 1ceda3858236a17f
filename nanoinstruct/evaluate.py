"""The paper's evaluations, on the world: who wins, and what the labelers' metadata says.

Each named policy answers the held-out evaluation prompts (`samples` responses per prompt,
the same seed for every policy) and is measured by a labeler it never trained on, as the
paper used held-out labelers:

- win rate against the baseline: response i of the policy and response i of the baseline
  to the same prompt, ranked by the labeler (gold score + its noise, world.Labeler);
  identical responses are ties and count half. The baseline against itself is 0.5;
- the length-controlled win rate: the same labeler and noise with its brevity term removed
  (per_char = 0), so a win on brevity alone is a coin toss;
- correct: the fraction of responses that are right (world.judge, in the labeler's reading),
  overall and per task family (correct_by_family): substance, whatever the style;
- mean gold score under the labeler's weights;
- the metadata of the paper's Table 3, as rates over the prompts where the question applies
  (world.judge):
      follows_instruction      on task (not a continuation of the document, not rambling)
                               over the prompts that are not unsafe requests
      constraint_ok            the explicit constraint met (exact count, no repeats)
      hallucination            closed-domain content not in the source, or going along
                               with a false premise
      false_premise_corrected  over the false-premise prompts
      unsafe_refused           over the unsafe requests
      over_refusal             refusals of safe requests
- the alignment tax: the mean loss per token (nats) on a held-out slice of the pretraining
  corpus, which RLHF raises and PPO-ptx is meant to hold down;
- parameter count and mean response length (characters).

`--prompted=NAME,...` gives those policies a few-shot prefix of demonstrations (the paper's
"GPT-3 prompted") and keeps the first non-empty line of the response: the examples answer
on one line, so the newline after an answer is the stop sequence, as the API's `stop` is.
`--terse=NAME,...` adds a control row NAME_terse: NAME's own samples with the demonstrators'
padding removed (world.strip_style, "Sure! It is white. Hope that helps!" -> "white"), a
change of style only. A policy that does not beat it has learned style, not substance.
`--reward` scores a reward model's pairwise accuracy on held-out comparisons beside the
agreement of the world's two labelers on the same pairs (inter-labeler agreement, the
paper's yardstick: a reward model fitted to one labeler may exceed it), and how often it
prefers the right response of a pair of which the world's judge finds exactly one right.
A policy trained by PPO on the world's prompts brings its run's over-optimisation curve
(ppo_curves, from its metrics.jsonl): gold and reward-model score against the KL from SFT.

Writes report.json (schema below), report.md (the tables) and report.png (the bars and the
over-optimisation curves).

    python -m nanoinstruct.evaluate --policies=base=out/base,base_prompted=out/base,sft=out/sft,\\
        ppo_ptx=out/ppo_ptx --prompted=base_prompted --baseline=sft --terse=sft --reward=out/rm --out_dir=out/eval

    {"baseline": "sft", "labeler": "heldout",
     "models": {NAME: {"winrate", "winrate_length_controlled", "gold_score", "correct",
                       "correct_by_family": {FAMILY: fraction}, "follows_instruction",
                       "constraint_ok", "hallucination", "false_premise_corrected",
                       "unsafe_refused", "over_refusal", "pretrain_loss", "n_params",
                       "mean_length"}},
     "reward_model": {"accuracy", "labeler_agreement", "right_over_wrong", "right_over_wrong_pairs",
                      "right_over_wrong_by_family": {FAMILY: fraction},
                      "right_over_wrong_pairs_by_family": {FAMILY: pairs}},
     "ppo_curves": {NAME: {"iter", "kl", "score", "gold": [per logged iteration]}},
     "seconds": {STAGE: wall seconds}}

plus, where asked for, "labelers" (every judge's win rates and gold scores), "versus"
(head-to-head win rates, --versus=A:B) and "examples" (a few prompts with each response).

`--aggregate=a/report.json,b/report.json` instead merges reports of several seeds into one
whose numbers are the means, with the spread (the standard deviation over seeds) under
"spread" (make paper).
"""

import dataclasses
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm
from torch.nn.utils.rnn import pad_sequence

from nanoinstruct import batching, checkpoint, collect, data, losses, plot
from nanoinstruct.cli import UserError, cli_main, parse_flags
from nanoinstruct.model import GPT
from nanoinstruct.report import aggregate, markdown, write_report
from nanoinstruct.tokenizer import format_prompt
from nanoinstruct.world import LABELERS, Labeler, gold_score, judge, strip_style


@dataclass
class Config:
    # what is compared
    policies: str = ""           # name=CKPT,name=CKPT,...  (a checkpoint may appear under two names)
    prompted: str = ""           # names that get the few-shot prefix (the paper's "GPT prompted")
    terse: str = ""              # names whose samples, padding stripped, add a row NAME_terse (style control)
    baseline: str = "sft"        # the name win rates are measured against
    versus: str = ""             # extra head-to-head win rates, A:B,... (e.g. ppo_ptx:sft_large)
    labeler: str = "heldout"     # the judge; a comma list adds the others' win rates and gold scores
    prompts: str = "data/world/eval_prompts.jsonl"  # required; the world's evaluation prompts
    heldout: str = "data/world/corpus_heldout.jsonl"   # pretraining text no model trained on ("": no alignment tax)
    heldout_tokens: int = 50_000  # >= 0; at most this many tokens of it (0: all)
    demos: str = "data/world/sft.jsonl"     # where the few-shot examples come from
    shots: int = 2               # >= 0
    reward: str = ""             # a reward model checkpoint, to score on --comparisons
    comparisons: str = "data/world/comparisons_val.jsonl"
    seconds: str = ""            # a file of "STAGE SECONDS" lines to copy into the report
    # the report
    out_dir: str = "out/eval"    # required; report.json, report.md, report.png go here
    overwrite: bool = False
    aggregate: str = ""          # report.json files of several seeds to merge (instead of evaluating)
    # sampling, machine
    samples: int = 4             # [1, 1000]; responses per prompt and policy
    max_new_tokens: int = 48     # >= 1
    temperature: float = 1.0     # >= 0; 0: greedy
    batch_size: int = 128        # [1, 4096]; rows sampled together
    seed: int = 0                # [0, 2**32)
    device: str = "cpu"          # cpu | cuda | cuda:N
    threads: int = 0             # [0, 1024]; torch CPU threads (0: torch's default)

    def check(self):
        for name in filter(None, self.labeler.split(",")):
            if name not in LABELERS and not os.path.isdir(name):
                raise UserError(f"--labeler={name!r}: neither a world labeler ({', '.join(LABELERS)}) nor a reward "
                                f"model checkpoint")
        if self.aggregate and len(self.aggregate.split(",")) < 2:
            raise UserError(f"--aggregate={self.aggregate}: give the report.json files of two or more seeds, "
                            f"comma-separated")


RATES = ("follows_instruction", "constraint_ok", "hallucination", "false_premise_corrected",
         "unsafe_refused", "over_refusal")


# ---------------------------------------------------------------------------------------
# the measurements, on prompts (world records) and response strings

def metadata(prompts, responses, strict=False):
    """prompts: world records; responses: one string per record (a prompt repeats once per
    sample) -> the six Table 3 rates, each over the records where it applies (None if none),
    in the labeler's reading (strict: world.judge)."""
    counts = {k: [0, 0] for k in RATES}

    def add(key, value):
        counts[key][0] += bool(value)
        counts[key][1] += 1

    for rec, y in zip(prompts, responses, strict=True):
        j = judge(rec, y, strict)
        unsafe = rec["family"] == "howto" and rec["unsafe"]
        if unsafe:
            add("unsafe_refused", j["refused"])
        else:
            add("follows_instruction", j["follows"])
            add("over_refusal", j["refused"])
        if j["constraint"] is not None:
            add("constraint_ok", j["constraint"])
        if j["hallucination"] is not None:
            add("hallucination", j["hallucination"])
        if rec["family"] == "premise":
            add("false_premise_corrected", j["corrected"])
    return {k: hit / n if n else None for k, (hit, n) in counts.items()}


def correctness(prompts, responses, strict=False):
    """-> {"correct": the fraction of responses world.judge finds right, "correct_by_family":
    {family: that fraction over the family's records}}."""
    right = {}
    for rec, y in zip(prompts, responses, strict=True):
        right.setdefault(rec["family"], []).append(judge(rec, y, strict)["correct"])
    return {"correct": sum(map(sum, right.values())) / len(prompts),
            "correct_by_family": {f: sum(v) / len(v) for f, v in sorted(right.items())}}


def length_controlled(labeler):
    """The same labeler (name, seed, so the same noise) without its preference for brevity."""
    return dataclasses.replace(labeler, weights=dataclasses.replace(labeler.weights, per_char=0.0))


def win_rate(prompts, responses, baseline_responses, labeler):
    """The fraction of records on which the labeler prefers `responses` to the baseline's
    (aligned one to one); identical responses are ties and count half. The pair goes to the
    labeler in a fixed order (sorted), so that its noise does not depend on which side is
    the baseline: win_rate(a, b) + win_rate(b, a) == 1."""
    wins = 0.0
    for rec, y, b in zip(prompts, responses, baseline_responses, strict=True):
        if y.strip() == b.strip():
            wins += 0.5
            continue
        pair = sorted([y, b])
        wins += float(pair[labeler.rank(rec, pair)[0]] == y)
    return wins / len(prompts)


class RewardJudge:
    """A reward model as the judge: the paper's proxy for a labeler, for prompts no world
    labeler can read (a user's own). It ranks responses by its score (a labeler without
    noise), so win_rate takes it as it takes a world labeler. Scores are cached per (prompt,
    response) and computed in batches (`score`)."""

    def __init__(self, path, device="cpu", batch_size=32):
        self.rm, meta = checkpoint.load(path, device)
        if isinstance(self.rm, GPT):
            raise UserError(f"--labeler={path}: a language model, not a reward model")
        self.rm.eval()
        self.tok, self.path, self.device, self.batch_size = checkpoint.load_tokenizer(path, meta), path, device, batch_size
        self.cache = {}

    @torch.no_grad()
    def score(self, prompts, responses):
        """prompts (records) and responses, aligned -> the reward of each (a list of floats)."""
        keys = [(json.dumps(p["prompt"]), y) for p, y in zip(prompts, responses, strict=True)]
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i:i + self.batch_size]
            ids, mask = batching.pack_sequences(self.tok, [json.loads(p) for p, _ in chunk], [y for _, y in chunk])
            if ids.shape[1] > self.rm.config.block_size:
                raise UserError(f"--labeler={self.path}: a prompt and response of {ids.shape[1]} tokens exceed the "
                                f"reward model's block_size {self.rm.config.block_size}; lower --max_new_tokens")
            for k, s in zip(chunk, self.rm.score(ids.to(self.device), mask.to(self.device)).tolist()):
                self.cache[k] = s
        return [self.cache[k] for k in keys]

    def rank(self, rec, responses):
        """-> indices of responses, best first (ties keep their order)."""
        s = self.score([rec] * len(responses), responses)
        return sorted(range(len(responses)), key=lambda i: -s[i])


def mean_gold(prompts, responses, labeler):
    return sum(gold_score(rec, y, labeler.weights) for rec, y in zip(prompts, responses, strict=True)) / len(prompts)


def fewshot_prefix(demos, shots, template="instruction"):
    """The few-shot prefix: the shortest demonstration of each of `shots` task families
    (the shortest first), in the prompt template, one per line. Deterministic in demos."""
    best = {}
    for r in demos:
        text = format_prompt(r["prompt"], template) + " " + r["response"]
        f = r.get("family", text)
        if f not in best or len(text) < len(best[f]):
            best[f] = text
    return "".join(t + "\n" for t in sorted(best.values(), key=len)[:shots])


@torch.no_grad()
def sample(model, tok, prompts, cfg, prefix=""):
    """-> one response string per (prompt, sample), prompt-major: prompts[i]'s s-th sample
    at i * samples + s. With a prefix, the response is its first non-empty line: the
    examples put each answer on one line, so a newline after it is the stop sequence."""
    rows = [tok.encode(prefix) + tok.encode_prompt(p["prompt"]) for p in prompts for _ in range(cfg.samples)]
    n_new = min(cfg.max_new_tokens, model.config.block_size - max(map(len, rows)))
    if n_new < 1:
        raise UserError(f"--prompts={cfg.prompts}: the longest prompt (with its few-shot prefix) "
                        f"leaves no room in block_size {model.config.block_size}; lower --shots")
    g = torch.Generator(cfg.device).manual_seed(cfg.seed)
    out = []
    for i in tqdm(range(0, len(rows), cfg.batch_size), desc="sample", unit="batch", leave=False, disable=None):
        ids, mask = batching.left_pad(rows[i:i + cfg.batch_size], tok.pad_id)
        y, _ = model.generate(ids.to(cfg.device), mask.to(cfg.device), n_new, tok.eos_id, tok.pad_id,
                              tok.n_vocab, cfg.temperature, generator=g)
        out += [tok.decode_response(row) for row in y.tolist()]
    return [y.lstrip("\n").split("\n")[0] for y in out] if prefix else out


@torch.no_grad()
def pretrain_loss(model, tok, texts, max_tokens, device="cpu", batch_size=16):
    """Mean -log p per token (nats) on pretraining text, in rows of block_size as
    pretraining saw them."""
    rows = batching.pack_documents(tok, texts, model.config.block_size)       # (N, T+1)
    if max_tokens:
        rows = rows[:max(1, max_tokens // model.config.block_size)]
    total = 0.0
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size].to(device)
        x, y = chunk[:, :-1], chunk[:, 1:]
        total += losses.lm_nll_sum(model(x, targets=y)[0], 1.0).item()
    return total / rows[:, 1:].numel()


@torch.no_grad()
def reward_scores(rm, tok, comparisons, device="cpu", batch_size=16):
    """-> the reward model's score of every response: one list per comparison, best first
    (batching.pack_rankings' layout, the one train_rm.py scores)."""
    out = []
    for i in range(0, len(comparisons), batch_size):
        batch = batching.pack_rankings(tok, comparisons[i:i + batch_size])
        if batch.ids.shape[1] > rm.config.block_size:
            raise UserError(f"--comparisons: a prompt and response of {batch.ids.shape[1]} tokens exceed the reward "
                            f"model's block_size {rm.config.block_size}")
        scores = rm.score(batch.ids.to(device), batch.attention_mask.to(device)).cpu()  # (R,)
        out += [row[valid].tolist() for row, valid in zip(scores[batch.rank], batch.valid)]
    return out


def reward_accuracy(scores):
    """Best-first scores per comparison -> the pairwise accuracy (ties half), as in training."""
    r = pad_sequence([torch.tensor(s) for s in scores], batch_first=True)              # (P, Kmax)
    valid = pad_sequence([torch.ones(len(s), dtype=torch.bool) for s in scores], batch_first=True)
    agree, pairs = losses.ranking_accuracy(r, valid)
    return agree / pairs


def correctness_pairs(scores, comparisons):
    """Best-first scores per comparison -> {family: (right, pairs)}: over the response pairs of
    which the world's judge finds exactly one right, how often the scores put the right one
    higher (ties half). Does the reward model see right from wrong, or only shape and length?
    {} without the world's metadata."""
    if not comparisons or any("family" not in c for c in comparisons):
        return {}
    out = {}
    for s, c in zip(scores, comparisons):
        ok = [judge(c, c["responses"][i])["correct"] for i in c["ranking"]]           # best first, as s
        right, pairs = out.get(c["family"], (0.0, 0))
        for i, j in itertools.combinations(range(len(s)), 2):
            if ok[i] != ok[j]:
                good, bad = (s[i], s[j]) if ok[i] else (s[j], s[i])
                right, pairs = right + (1.0 if good > bad else 0.5 if good == bad else 0.0), pairs + 1
        out[c["family"]] = (right, pairs)
    return {f: rp for f, rp in sorted(out.items()) if rp[1]}


def overall(by_family):
    """correctness_pairs' {family: (right, pairs)} -> (fraction, pairs) over all families;
    (None, 0) without pairs."""
    right, pairs = sum(r for r, _ in by_family.values()), sum(n for _, n in by_family.values())
    return (right / pairs if pairs else None), int(pairs)


def correctness_accuracy(scores, comparisons):
    """-> (fraction, pairs): correctness_pairs over all families; (None, 0) without the world's
    metadata or without such pairs."""
    return overall(correctness_pairs(scores, comparisons))


# ---------------------------------------------------------------------------------------

def parse_policies(spec):
    out = {}
    for item in filter(None, spec.split(",")):
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--policies: {item!r} is not NAME=CHECKPOINT")
        if name in out:
            raise UserError(f"--policies: the name {name!r} appears twice")
        out[name] = path
    if not out:
        raise UserError("--policies is required: NAME=CHECKPOINT,... (e.g. sft=out/sft,ppo_ptx=out/ppo_ptx)")
    return out


def read_seconds(path):
    out = {}
    for i, line in enumerate(open(path), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            out[parts[0]] = out.get(parts[0], 0.0) + float(parts[1])
        except (IndexError, ValueError):
            raise UserError(f"{path}:{i}: expected 'STAGE SECONDS', got {line.strip()!r}") from None
    return out


def read_report(path):
    """A report.json of evaluate's, for --aggregate."""
    if not os.path.isfile(path):
        raise UserError(f"--aggregate: {path}: no such file")
    report = checkpoint.read_json(path)
    if not isinstance(report, dict) or not {"models", "baseline", "labeler"} <= set(report) \
            or not isinstance(report["models"], dict):
        raise UserError(f"--aggregate: {path}: not a report.json of evaluate (needs models, baseline, labeler)")
    curves = report.get("ppo_curves", {})
    if not isinstance(curves, dict) or not all(
            isinstance(c, dict) and all(isinstance(c.get(k), list) and all(map(plot.number, c[k])) for k in plot.CURVE)
            and len({len(c[k]) for k in plot.CURVE}) == 1 for c in curves.values()):
        raise UserError(f"--aggregate: {path}: ppo_curves must give each policy {', '.join(plot.CURVE)} as lists of "
                        f"numbers of one length")
    return report


def main(argv=None):
    cfg = parse_flags(Config, argv)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    report_path = os.path.join(cfg.out_dir, "report.json")
    if os.path.lexists(cfg.out_dir) and not os.path.isdir(cfg.out_dir):
        raise UserError(f"--out_dir={cfg.out_dir}: not a directory")
    there = [n for n in ("report.json", "report.md", "report.png") if os.path.lexists(os.path.join(cfg.out_dir, n))]
    if there and not cfg.overwrite:
        raise UserError(f"--out_dir={cfg.out_dir} already holds {', '.join(there)}; pass --overwrite to replace")
    if cfg.aggregate:
        report = aggregate([read_report(p) for p in cfg.aggregate.split(",")])
        write_report(report, cfg.out_dir)
        print(markdown(report))
        return
    t0 = time.perf_counter()
    policies = parse_policies(cfg.policies) if cfg.policies or not cfg.reward else {}   # --reward alone: its accuracy
    if policies and cfg.baseline not in policies:
        raise UserError(f"--baseline={cfg.baseline!r} is not one of --policies ({', '.join(policies)})")
    prompted = set(filter(None, cfg.prompted.split(",")))
    if prompted - set(policies):
        raise UserError(f"--prompted: {', '.join(sorted(prompted - set(policies)))} not in --policies")
    terse = list(dict.fromkeys(filter(None, cfg.terse.split(","))))
    for name in terse:
        if name not in policies:
            raise UserError(f"--terse: {name!r} is not one of --policies ({', '.join(policies)})")
        if f"{name}_terse" in policies:
            raise UserError(f"--terse={name}: its row {name}_terse is already a --policies name; rename that one")
    rows = [row for n in policies for row in (n, f"{n}_terse") if row == n or n in terse]   # report order
    versus = [tuple(v.split(":")) for v in filter(None, cfg.versus.split(","))]
    for v in versus:
        if len(v) != 2 or not set(v) <= set(rows):
            raise UserError(f"--versus: {':'.join(v)!r} is not A:B with both in --policies (or --terse rows)")
    for flag in (*(["prompts"] if policies else []), *(["heldout"] if policies and cfg.heldout else []),
                 *(["demos"] if prompted else []), *(["comparisons"] if cfg.reward else []),
                 *(["seconds"] if cfg.seconds else [])):
        if not os.path.isfile(getattr(cfg, flag)):
            raise UserError(f"--{flag}={getattr(cfg, flag)}: no such file")
    curves = {}                                   # each PPO run's gold and score against KL
    for name, path in policies.items():
        curve = None if name in prompted else plot.ppo_curve(path)
        if curve:
            curves[name] = curve
    prompts = data.read_prompts(cfg.prompts) if policies else []
    world = collect.is_world(prompts)             # the world's prompts: its labelers can read them
    if world:
        collect.require_world(prompts, cfg.prompts)
    judges = {}                                   # name -> a world labeler, or a reward model judging
    for name in filter(None, cfg.labeler.split(",")) if policies else []:
        if name in LABELERS and not world:
            raise UserError(f"--labeler={name}: the world's labelers read the world's prompt metadata, which "
                            f"{cfg.prompts} lacks; judge with a reward model instead: --labeler=out/rm")
        judges[name] = LABELERS[name] if name in LABELERS else RewardJudge(name, cfg.device)
    if policies and not judges:
        raise UserError("--labeler: give a judge (heldout, train, or a reward model checkpoint)")
    held = [r["text"] for r in data.read_text(cfg.heldout)] if policies and cfg.heldout else None
    prefix = fewshot_prefix(data.read_demos(cfg.demos), cfg.shots) if prompted else ""
    if cfg.reward:  # read before the sampling, so that a bad path costs nothing
        rm, rm_tok, meta = checkpoint.load_with_tokenizer(cfg.reward, cfg.device)
        if isinstance(rm, GPT):
            raise UserError(f"--reward={cfg.reward}: a language model, not a reward model")
        comps = data.read_comparisons(cfg.comparisons)

    # ---- every policy answers the same prompts with the same seed ----------------------
    records = [p for p in prompts for _ in range(cfg.samples)]
    responses, info, loaded = {}, {}, {}
    for name, path in policies.items():
        if path not in loaded:
            model, tok, meta = checkpoint.load_with_tokenizer(path, cfg.device)
            if not isinstance(model, GPT):
                raise UserError(f"--policies: {name}={path} is a {meta['kind']} checkpoint, not a language model")
            if cfg.max_new_tokens >= model.config.block_size:
                raise UserError(f"--max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt in {name}'s "
                                f"block_size {model.config.block_size}; lower it")
            model.eval()
            data.check_template(prompts, cfg.prompts, tok.template)
            loaded[path] = (model, tok, held and pretrain_loss(model, tok, held, cfg.heldout_tokens, cfg.device))
        model, tok, ploss = loaded[path]
        room = model.config.block_size - cfg.max_new_tokens - len(tok.encode(prefix if name in prompted else ""))
        if room < 1:  # only a prefix can do this: --max_new_tokens alone was checked at loading
            raise UserError(f"--shots={cfg.shots}: the few-shot prefix with --max_new_tokens={cfg.max_new_tokens} "
                            f"fills {name}'s block_size {model.config.block_size}; lower --shots")
        fitting = batching.fit_prompts(prompts, tok, room, cfg.prompts)
        if len(fitting) < len(prompts):
            raise UserError(f"--prompts={cfg.prompts}: {len(prompts) - len(fitting)} prompts do not fit "
                            f"{name}'s block_size with --max_new_tokens={cfg.max_new_tokens}; lower it")
        responses[name] = sample(model, tok, prompts, cfg, prefix if name in prompted else "")
        info[name] = {**({"pretrain_loss": ploss} if held else {}), "n_params": model.num_params(),
                      "mean_length": sum(len(y.strip()) for y in responses[name]) / len(responses[name])}
        print(f"{name}: {len(responses[name])} responses from {path}", file=sys.stderr, flush=True)
    for name in terse:  # the style control: the same samples, the demonstrators' padding removed
        responses[f"{name}_terse"] = [strip_style(rec, y) for rec, y in zip(records, responses[name])]
        info[f"{name}_terse"] = {**info[name], "mean_length": sum(
            len(y) for y in responses[f"{name}_terse"]) / len(records)}
    responses = {row: responses[row] for row in rows}

    # ---- judged by each labeler (or reward model); the first is the report's -------------
    by_labeler = {}
    for judge_name, lab in judges.items():
        base = responses[cfg.baseline]
        if isinstance(lab, RewardJudge):  # the proxy: win rates and mean score by the reward model
            by_labeler[judge_name] = {name: {"winrate": win_rate(records, ys, base, lab),
                                             "reward_score": sum(lab.score(records, ys)) / len(ys)}
                                      for name, ys in responses.items()}
            continue
        by_labeler[judge_name] = {
            name: {"winrate": win_rate(records, ys, base, lab),
                   "winrate_length_controlled": win_rate(records, ys, base, length_controlled(lab)),
                   "gold_score": mean_gold(records, ys, lab)} for name, ys in responses.items()}
    first = next(iter(judges.values()), None)
    strict = isinstance(first, Labeler) and first.weights.strict   # the report's labeler reads the metadata
    models = {name: {**by_labeler[next(iter(judges))][name],
                     **(correctness(records, ys, strict) if world else {}),
                     **(metadata(records, ys, strict) if world else {}), **info[name]}
              for name, ys in responses.items()}

    report = {"baseline": cfg.baseline, "labeler": next(iter(judges), None), "models": models}
    if len(judges) > 1:
        report["labelers"] = by_labeler
    if versus:  # {"A vs B": {labeler: A's win rate against B}}
        report["versus"] = {f"{a} vs {b}": {j: win_rate(records, responses[a], responses[b], lab)
                                             for j, lab in judges.items()} for a, b in versus}
    if cfg.reward:
        second = collect.second_labeler(comps, cfg.comparisons)
        scores = reward_scores(rm.eval(), rm_tok, data.check_template(comps, cfg.comparisons, rm_tok.template), cfg.device)
        by_family = correctness_pairs(scores, comps)                  # each response judged once
        right, n_right = overall(by_family)
        report["reward_model"] = {
            "accuracy": reward_accuracy(scores),
            "labeler_agreement": collect.agreement(comps, LABELERS[second])[0] if second else None,
            "right_over_wrong": right, "right_over_wrong_pairs": n_right,
            "right_over_wrong_by_family": {f: r / n for f, (r, n) in by_family.items()},
            "right_over_wrong_pairs_by_family": {f: n for f, (_, n) in by_family.items()}}
    if curves:
        report["ppo_curves"] = curves
    seconds = read_seconds(cfg.seconds) if cfg.seconds else {}
    report["seconds"] = {**seconds, "evaluate": time.perf_counter() - t0}
    if responses:
        report["examples"] = [{"prompt": p["prompt"], **{n: responses[n][i * cfg.samples] for n in responses}}
                              for i, p in enumerate(prompts[:8])]
    write_report(report, cfg.out_dir)
    print(markdown(report))
    print(f"-> {report_path}, report.md, report.png")


if __name__ == "__main__":
    cli_main(main)
