"""Export a checkpoint as a Hugging Face directory.

    python -m nanoinstruct.export --ckpt=out/sft --out=hf/sft    # policy: GPT2LMHeadModel
    python -m nanoinstruct.export --ckpt=out/rm --out=hf/rm      # reward model

The kind comes from the checkpoint. A policy loads with AutoModelForCausalLM,
AutoTokenizer and pipeline("text-generation"); its tokenizer_config.json carries a chat
template that renders a user turn in the prompt template the model was trained with. A
reward model loads with AutoModelForSequenceClassification (GPT2ForSequenceClassification,
num_labels=1): its logit is our reward, read at the last token that is not PAD (pass
position_ids = cumsum(attention_mask) - 1 with left padding, as our model computes them;
transformers counts positions from the first column). --out must be new or empty.
"""

from dataclasses import dataclass

from nanoinstruct import checkpoint, hf
from nanoinstruct.cli import UserError, cli_main, parse_flags
from nanoinstruct.model import GPT


@dataclass
class Config:
    ckpt: str = ""     # required; a checkpoint directory (or a stage's out dir)
    out: str = ""      # required; the Hugging Face directory to write; must be new or empty


def main(argv=None):
    cfg = parse_flags(Config, argv)
    model, meta = checkpoint.load(cfg.ckpt)
    tok = checkpoint.load_tokenizer(cfg.ckpt, meta)
    if isinstance(model, GPT):
        hf.export_policy(model, cfg.out, tok, hf.chat_template(tok.template))
        print(f"wrote {cfg.out}: GPT2LMHeadModel, {tok.pad_id} ids, tokenizer {tok.name}, "
              f"chat template {tok.template}")
    else:
        hf.export_reward(model, tok, cfg.out)
        print(f"wrote {cfg.out}: GPT2ForSequenceClassification (num_labels=1), {tok.pad_id + 1} "
              f"ids, pad_token_id {tok.pad_id}, tokenizer {tok.name}")


if __name__ == "__main__":
    cli_main(main)
