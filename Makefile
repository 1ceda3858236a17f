# nanoinstruct runbook. `make demo` and `make test` set up everything they need.
PY     := .venv/bin/python
STAMP  := .venv/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)
PIP    := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: install test demo bench clean
install: $(STAMP)

# torch is pinned here: any other spec makes pip fetch gigabytes of CUDA wheels on a CPU box.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv .venv
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	rm -f .venv/.installed-* && touch $@

# Two runs: the Triton kernels run on CPU only under the interpreter, which must be
# switched on before triton is imported, so they get a process of their own.
test: install
	$(PY) -m pytest tests --ignore=tests/triton
	TRITON_INTERPRET=1 NANOINSTRUCT_KERNELS=triton $(PY) -m pytest tests/triton

# The embedded default, end to end as far as the stages exist: the world, step 0
# (pretraining), step 1 (SFT), samples from both, labeling (K = 4 SFT samples per prompt,
# ranked by the world's training labeler), step 2 (the reward model) and step 3 (PPO-ptx).
# Outputs in out/demo/ (started over on each run). The evaluation lands in issue 8.
DEMO := out/demo
demo: install
	$(PY) -m nanoinstruct.world --out=$(DEMO)/data --seed=0
	$(PY) train_sft.py --mode=pretrain --init=tiny --data=$(DEMO)/data/corpus.jsonl \
	    --val_data=$(DEMO)/data/corpus_heldout.jsonl --out_dir=$(DEMO)/base --overwrite \
	    --max_iters=400 --batch_size=16 --dropout=0 --log_interval=50 --eval_interval=200
	$(PY) train_sft.py --init=$(DEMO)/base --data=$(DEMO)/data/sft.jsonl \
	    --val_data=$(DEMO)/data/sft_val.jsonl --out_dir=$(DEMO)/sft --overwrite \
	    --max_iters=300 --batch_size=32 --log_interval=50 --eval_interval=150
	$(PY) -m nanoinstruct.sample --ckpt=$(DEMO)/base --prompt="Is 14 odd or even?" --n=2
	$(PY) -m nanoinstruct.sample --ckpt=$(DEMO)/sft --prompt="Is 14 odd or even?" --n=2
	rm -f $(DEMO)/data/comparisons.jsonl $(DEMO)/data/comparisons_val.jsonl
	$(PY) -m nanoinstruct.collect --policy=$(DEMO)/sft --prompts=$(DEMO)/data/rm_prompts.jsonl \
	    --out=$(DEMO)/data/comparisons.jsonl --k=4 --labeler=train --seed=0
	$(PY) -m nanoinstruct.collect --policy=$(DEMO)/sft --prompts=$(DEMO)/data/rm_val_prompts.jsonl \
	    --out=$(DEMO)/data/comparisons_val.jsonl --k=4 --labeler=train --seed=1
	$(PY) train_rm.py --init=$(DEMO)/sft --data=$(DEMO)/data/comparisons.jsonl \
	    --val_data=$(DEMO)/data/comparisons_val.jsonl --demos=$(DEMO)/data/sft.jsonl \
	    --out_dir=$(DEMO)/rm --overwrite
	$(PY) train_ppo.py --init=$(DEMO)/sft --reward=$(DEMO)/rm --prompts=$(DEMO)/data/ppo_prompts.jsonl \
	    --ptx_data=$(DEMO)/data/corpus.jsonl --ptx_coef=1 --kl_coef=0.2 --lr=3e-5 --max_iters=60 \
	    --log_interval=10 --sample_interval=30 --out_dir=$(DEMO)/ppo_ptx --overwrite

# The PPO loop's speed on the CPU (issue 7's tiny configuration: 2 layers, 2 heads, 64 wide,
# vocab 512, 16-token prompts, 32-token responses, batch 8, 4 epochs, 1 minibatch), then the
# kernels on a GPU (skipped without one).
bench: install
	$(PY) train_ppo.py --bench --batch_size=8 --max_new_tokens=32 --ppo_epochs=4 --minibatches=1 \
	    --max_iters=30 --log_interval=10
	if $(PY) -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then $(PY) -m kernels.bench; \
	else echo "kernels.bench: no CUDA GPU here; skipped"; fi

clean:
	rm -rf out .pytest_cache .hypothesis
