#!/bin/bash
# The README's "GPT-2 on real data" walk-through on CPU, a few steps per stage, with each
# stage's wall time and peak RSS in DIR/times.txt:
#     bench/gpt2_walkthrough.sh DIR path/to/gpt2.tiktoken
set -e
PY=${PY:-.venv/bin/python}; D=$1
[ $# -eq 2 ] || { echo "usage: $0 DIR path/to/gpt2.tiktoken" >&2; exit 2; }
# DIR must be new, empty, or an earlier walk-through's (its marker): what it replaces is its own
[ ! -e "$D" ] || [ -d "$D" ] || { echo "error: $D: not a directory" >&2; exit 2; }
if [ -e "$D" ] && [ -n "$(ls -A "$D")" ] && [ ! -e "$D/.gpt2_walkthrough" ]; then
  echo "error: $D: not empty and not a walk-through's directory; choose another DIR" >&2; exit 2
fi
mkdir -p "$D" && touch "$D/.gpt2_walkthrough"
$PY bench/gpt2_data.py "$D" "$2"
rm -rf "$D/out" && mkdir -p "$D/out" && rm -f "$D/times.txt"
t() { name=$1; shift; /usr/bin/time -f "$name %e s, peak RSS %M KB" -a -o "$D/times.txt" "$@"; }
t sft $PY train_sft.py --init="$D/gpt2" --tokenizer="$2" --template=dialogue --data="$D/sft.jsonl" \
    --val_data="$D/sft_val.jsonl" --out_dir="$D/out/sft" --batch_size=8 --max_iters=10 --eval_interval=10 \
    --log_interval=1 --warmup_iters=2 --lr=3e-5 --min_lr=3e-6 --threads=2
t rm $PY train_rm.py --init="$D/out/sft" --data="$D/hh_train.jsonl" --val_data="$D/hh_test.jsonl" \
    --out_dir="$D/out/rm" --batch_size=4 --epochs=0.2 --eval_interval=100 --lr=1e-5 --min_lr=1e-6 --threads=2
t ppo_ptx $PY train_ppo.py --init="$D/out/sft" --reward="$D/out/rm" --prompts="$D/hh_train.jsonl" \
    --ptx_data="$D/text.jsonl" --ptx_coef=0.1 --out_dir="$D/out/ppo_ptx" --batch_size=8 --max_new_tokens=32 \
    --max_iters=2 --lr=1e-6 --threads=2
t evaluate $PY -m nanoinstruct.evaluate --policies=sft="$D/out/sft",ppo_ptx="$D/out/ppo_ptx" --baseline=sft \
    --labeler="$D/out/rm" --prompts="$D/hh_test.jsonl" --heldout="$D/text.jsonl" --samples=1 \
    --max_new_tokens=32 --out_dir="$D/out/eval" --threads=2
t export $PY -m nanoinstruct.export --ckpt="$D/out/ppo_ptx" --out="$D/out/hf-ppo_ptx"
$PY -c "
import sys
from transformers import pipeline
p = pipeline('text-generation', model=sys.argv[1])
chat = [{'role': 'user', 'content': 'How do I boil an egg?'}]
print(p(p.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True), max_new_tokens=8)[0])" \
    "$D/out/hf-ppo_ptx"
cat "$D/times.txt"
