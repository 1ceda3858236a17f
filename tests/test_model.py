"""GPT-2 parity with transformers, padding invariance, the KV cache, sampling, the scalar head."""

import json

import pytest
import torch

from nanoinstruct.cli import UserError
from nanoinstruct.model import GPT, GPTConfig, ScalarGPT, last_index, sample_token

transformers = pytest.importorskip("transformers")

CFG = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=300, block_size=64)


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**CFG, **kw})).eval()


def hf_tiny(seed=0):
    torch.manual_seed(seed)
    c = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=300, n_positions=64,
                                 bos_token_id=299, eos_token_id=299)
    m = transformers.GPT2LMHeadModel(c).eval()
    with torch.no_grad():  # HF zero-inits biases and LayerNorm: randomise everything
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m


def left_pad(seqs, pad=0):
    """List of 1-D id tensors -> (B, S) ids and mask, padded on the left."""
    S = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), S), pad, dtype=torch.long)
    mask = torch.zeros(len(seqs), S, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, S - len(s):], mask[b, S - len(s):] = s, 1
    return ids, mask


def test_from_hf_matches_transformers(tmp_path):
    hf = hf_tiny()
    hf.save_pretrained(tmp_path)                     # config.json + model.safetensors
    ours = GPT.from_hf(str(tmp_path)).eval()
    x = torch.randint(0, 300, (3, 40))
    with torch.no_grad():
        err = (ours(x) - hf(x).logits).abs().max().item()
    assert err < 1e-4, err


def test_to_hf_loads_in_transformers(tmp_path):
    ours = tiny(1)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.2)
    ours.to_hf(str(tmp_path / "hf"))
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    x = torch.randint(0, 300, (2, 33))
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() < 1e-4
    back = GPT.from_hf(str(tmp_path / "hf"))     # and the round trip is exact
    for (k, a), b in zip(ours.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(UserError, match="not empty"):  # never writes over a directory
        ours.to_hf(str(tmp_path / "hf"))


def test_from_hf_bad_dirs(tmp_path):
    with pytest.raises(UserError, match="config.json: not found"):
        GPT.from_hf(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"n_layer": 1}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(UserError, match="pickle"):
        GPT.from_hf(str(tmp_path))


def test_from_hf_pads_vocab(tmp_path):
    hf = hf_tiny()
    hf.save_pretrained(tmp_path)
    ours = GPT.from_hf(str(tmp_path), vocab_size=320).eval()
    x = torch.randint(0, 300, (2, 10))
    with torch.no_grad():
        logits = ours(x)                                 # the real vocabulary only
        assert logits.shape[-1] == 300 and ours.config.vocab_size == 320 and ours.config.n_real == 300
        assert (logits - hf(x).logits).abs().max() < 1e-4
    assert ours.lm_head.weight is ours.transformer.wte.weight


@pytest.mark.parametrize("garbage", [False, True])
def test_left_padding_invariance(garbage):
    m = tiny()
    seqs = [torch.randint(0, 300, (n,)) for n in (5, 17, 30)]
    ids, mask = left_pad(seqs)
    if garbage:  # whatever sits in padded slots must not matter
        ids = torch.where(mask.bool(), ids, torch.randint(0, 300, ids.shape))
    with torch.no_grad():
        padded = m(ids, mask)
        for b, s in enumerate(seqs):
            alone = m(s[None])[0]
            assert (padded[b, -len(s):] - alone).abs().max() < 1e-5


def test_kv_cache_logits_equal_full_recompute():
    m = tiny()
    ids, mask = left_pad([torch.randint(0, 300, (n,)) for n in (4, 9)])
    from nanoinstruct.model import KVCache
    cache = KVCache(m.config.n_layer, 20)
    with torch.no_grad():
        full = m(ids, mask)
        step = [m(ids[:, :6], mask[:, :6], cache)]
        for t in range(6, ids.shape[1]):
            step.append(m(ids[:, t:t + 1], mask[:, :t + 1], cache))
    real = mask.bool()
    assert (torch.cat(step, 1) - full)[real].abs().max() < 1e-5


def test_greedy_generate_equals_recompute():
    m = tiny(3)
    seqs = [torch.randint(0, 256, (n,)) for n in (3, 11, 7)]
    ids, mask = left_pad(seqs)
    pad = 257
    first, _ = m.generate(ids, mask, 25, eos_id=-1, pad_id=pad, n_vocab=258, temperature=0)
    eos = first[1, 4].item()     # a token row 1 emits greedily: rows now stop at different steps
    out, rmask = m.generate(ids, mask, 25, eos_id=eos, pad_id=pad, n_vocab=258, temperature=0)
    lengths = rmask.sum(1)
    assert lengths[1] <= 5 and lengths.max() > lengths.min()
    for b, s in enumerate(seqs):     # recompute the whole sequence each step, no cache, no padding
        seq = s.clone()
        for t in range(out.shape[1]):
            if t > 0 and out[b, t - 1] == eos:
                break
            logits = m(seq[None])[0, -1]
            logits[258:] = -float("inf")
            logits[pad] = -float("inf")
            nxt = logits.argmax()
            assert out[b, t] == nxt, (b, t)
            seq = torch.cat([seq, nxt[None]])


def test_sampling_stops_at_eos_and_masks():
    m = tiny(4)
    B, n_vocab, eos, pad = 32, 8, 6, 7     # tiny real vocab: EOS comes often
    ids, mask = left_pad([torch.randint(0, 6, (n,)) for n in torch.randint(2, 9, (B,)).tolist()])
    g = torch.Generator().manual_seed(0)
    out, rmask = m.generate(ids, mask, 30, eos, pad, n_vocab=n_vocab, temperature=2.0, generator=g)
    assert out.max() < n_vocab                      # nothing past the tokenizer's ids
    lengths = rmask.sum(1).long()
    assert len(set(lengths.tolist())) > 3           # rows stopped at different steps
    for b in range(B):
        row, n = out[b].tolist(), lengths[b].item()
        assert rmask[b, :n].eq(1).all() and rmask[b, n:].eq(0).all()    # a prefix
        assert all(t == pad for t in row[n:])                           # PAD after EOS
        assert eos not in row[:n - 1]                                   # first EOS ...
        if n < out.shape[1]:
            assert row[n - 1] == eos                                    # ... is the last real
    assert pad not in out[rmask.bool()].tolist()


def test_sample_token_filters():
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, 50.0, 60.0]]).repeat(4000, 1)
    # ids 4 (PAD) and 5 (past n_vocab) have the largest logits and are never drawn
    s = sample_token(logits, 1.0, 0, 1.0, n_vocab=5, pad_id=4)
    assert s.max() <= 3 and set(s.tolist()) == {0, 1, 2, 3}
    assert torch.all(sample_token(logits, 0, 0, 1.0, 5, 4) == 1)             # greedy
    assert torch.all(sample_token(logits, 1.0, 1, 1.0, 5, 4) == 1)           # top-k 1
    s = sample_token(logits, 1.0, 2, 1.0, 5, 4)
    assert set(s.tolist()) == {1, 3}                                         # top-k 2
    p = torch.tensor([3.0, 2.0, 1.0, 0.0]).softmax(0)                        # ids 1, 3, 2, 0
    s = sample_token(logits, 1.0, 0, float(p[0] + 0.01), 5, 4)
    assert set(s.tolist()) == {1, 3}                                         # nucleus: 2 tokens
    frac = (s == 1).float().mean().item()
    assert abs(frac - p[0] / (p[0] + p[1])) < 0.03                           # renormalised


def test_scalar_head_reads_last_real_token():
    torch.manual_seed(0)
    rm = ScalarGPT(GPTConfig(**CFG)).eval()
    # [pad pad p p r r EOS pad]: left-padded prompt + right-padded response
    ids = torch.randint(0, 300, (2, 8))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    assert last_index(mask).tolist() == [6, 7]
    assert last_index(torch.zeros(1, 5)).tolist() == [0]
    with torch.no_grad():
        values = rm(ids, mask)                         # (B, T)
        scores = rm.score(ids, mask)
        assert values.shape == (2, 8) and torch.equal(scores, values[[0, 1], [6, 7]])
        ids2 = ids.clone()
        ids2[0, 7] = (ids2[0, 7] + 1) % 300            # trailing padding does not matter
        assert torch.allclose(rm.score(ids2, mask), scores, atol=1e-6)
        ids2[0, 5] = (ids2[0, 5] + 1) % 300            # a real token does
        assert not torch.allclose(rm.score(ids2, mask), scores, atol=1e-6)


def test_scalar_from_gpt_copies_trunk():
    gpt = tiny(5)
    rm = ScalarGPT.from_gpt(gpt).eval()
    x = torch.randint(0, 300, (2, 9))
    with torch.no_grad():
        assert torch.equal(rm.gpt.hidden(x), gpt.hidden(x))
    rm.gpt.transformer.wte.weight.data.zero_()          # a copy, not shared
    assert gpt.transformer.wte.weight.abs().sum() > 0


def test_dropout_only_in_training():
    m = tiny(dropout=0.5)
    x = torch.randint(0, 300, (2, 9))
    m.train()
    assert not torch.equal(m(x), m(x))
    m.eval()
    assert torch.equal(m(x), m(x))


def test_bf16_autocast_scalar_head_in_fp32_and_sampling():
    torch.manual_seed(0)
    rm = ScalarGPT(GPTConfig(**CFG)).eval()
    ids = torch.randint(0, 300, (2, 12))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        values = rm(ids)
        h = rm.gpt.hidden(ids)
    assert values.dtype == torch.float32
    with torch.no_grad():   # the head ran in fp32: bf16 would be off by ~1e-2 here
        assert torch.allclose(values, rm.head(h.float()).squeeze(-1), atol=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, rmask = tiny().generate(ids[:, :5], torch.ones(2, 5), 8, 1, 2, n_vocab=290)
    assert out.max() < 290 and (out[rmask.bool()] != 2).all()


def test_generate_rejects_bad_settings():
    m = tiny()
    x = torch.zeros(1, 4, dtype=torch.long)
    for kw in (dict(top_p=0.0), dict(temperature=-1.0)):
        with pytest.raises(ValueError, match="top_p"):
            m.generate(x, torch.ones(1, 4), 3, 1, 2, **kw)
    with pytest.raises(ValueError, match="PAD id 300 has no embedding row"):
        m.generate(x, torch.ones(1, 4), 3, 1, 300)


def test_from_hf_refuses_untied(tmp_path):
    hf = hf_tiny()
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": False}))
    with pytest.raises(UserError, match="tie_word_embeddings"):
        GPT.from_hf(str(tmp_path))


def test_block_size_enforced():
    m = tiny()
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="block_size"):
        m.generate(torch.zeros(1, 60, dtype=torch.long), torch.ones(1, 60), 10, 1, 2)


def test_activation_checkpointing_gives_equal_gradients():
    """Recomputing each block in the backward (with dropout, left padding, both the LM and
    the scalar head) gives exactly the gradients of the plain backward (float64 for the LM;
    the scalar head computes in float32 by design)."""
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=3, n_head=2, n_embd=32, vocab_size=80, block_size=32, dropout=0.2, n_real=70)
    ids = torch.randint(0, 70, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[0, :7] = 0                                          # a left-padded row
    for make in (GPT, ScalarGPT):
        grads = []
        for ckpt in (False, True):
            torch.manual_seed(1)
            m = (make(cfg).double() if make is GPT else make(cfg)).train()
            (m if make is GPT else m.gpt).checkpointing = ckpt
            torch.manual_seed(2)                             # the same dropout masks
            out = m(ids, mask, targets=ids)[0] if make is GPT else m(ids, mask)
            (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
            grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
        assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0]), make


def test_sampling_follows_the_distribution_and_never_draws_a_zero():
    """Inverse-CDF sampling: frequencies match softmax(logits / T) (chi-square-sized error on
    40k draws), and ids with probability 0 (masked, PAD, past n_vocab) never come up, even
    right after the last real id or when the cumulative sum rounds below 1."""
    torch.manual_seed(0)
    logits = torch.tensor([[1.0, -2.0, 0.5, 3.0, -float("inf"), 2.0, 0.0, 9.0]]).repeat(40000, 1)
    g = torch.Generator().manual_seed(1)
    s = sample_token(logits, 0.7, 0, 1.0, n_vocab=7, pad_id=6, generator=g)
    want = torch.softmax(logits[0, :6] / 0.7, 0)
    got = torch.bincount(s, minlength=8).float() / len(s)
    assert got[4] == got[6] == got[7] == 0
    assert torch.all((got[:6] - want).abs() < 4 * torch.sqrt(want * (1 - want) / len(s)) + 1e-4), (got, want)
    tiny = torch.full((5000, 3), -float("inf"))
    tiny[:, 0] = 0.0                                     # all mass on id 0, the rest impossible
    assert torch.all(sample_token(tiny, 1.0, 0, 1.0, 3, 2, generator=g) == 0)
