"""The ranking loss (InstructGPT eq. 1) and pairwise accuracy, against their formulas."""

import itertools
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nanoinstruct.losses import ranking_accuracy, ranking_loss


def formula(rows):
    """rows: per prompt, its rewards best to worst (K varies). The paper's eq. 1, in Python
    floats: mean over prompts of 1/C(K,2) * sum_{i<j} -log sigma(r_i - r_j)."""
    per_prompt = []
    for r in rows:
        pairs = list(itertools.combinations(range(len(r)), 2))
        per_prompt.append(sum(math.log1p(math.exp(-(r[i] - r[j]))) for i, j in pairs) / len(pairs))
    return sum(per_prompt) / len(per_prompt)


def padded(rows, fill=0.0):
    K = max(map(len, rows))
    rewards = torch.tensor([r + [fill] * (K - len(r)) for r in rows], dtype=torch.float64)
    valid = torch.tensor([[True] * len(r) + [False] * (K - len(r)) for r in rows])
    return rewards, valid


reward = st.floats(-8, 8, allow_nan=False)
ranked = st.lists(reward, min_size=2, max_size=9)          # one prompt, K = 2..9
batches = st.lists(ranked, min_size=1, max_size=5)


def test_equals_formula_for_prompts_with_different_k():
    rows = [[2.0, 1.0, -0.5, 0.3], [0.1, 0.7], [3.0, -1.0, 2.5, 0.0, 0.0, -4.0, 1.5, 0.2, 0.9]]
    rewards, valid = padded(rows)
    assert abs(ranking_loss(rewards, valid).item() - formula(rows)) < 1e-12
    # each prompt weighs the same, whatever its K: not the mean over all pairs of the batch
    pairs = [math.log1p(math.exp(-(r[i] - r[j]))) for r in rows for i, j in itertools.combinations(range(len(r)), 2)]
    assert abs(ranking_loss(rewards, valid).item() - sum(pairs) / len(pairs)) > 1e-3


@settings(max_examples=60, deadline=None)
@given(batches)
def test_matches_formula_nonnegative(rows):
    rewards, valid = padded(rows)
    loss = ranking_loss(rewards, valid).item()
    assert loss >= 0
    assert abs(loss - formula(rows)) < 1e-10 * max(1.0, formula(rows))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(2, 9), min_size=1, max_size=5), reward)
def test_log2_when_all_rewards_equal(ks, r):
    rewards, valid = padded([[r] * k for k in ks])
    assert abs(ranking_loss(rewards, valid).item() - math.log(2)) < 1e-12


@settings(max_examples=60, deadline=None)
@given(batches, st.floats(-100, 100))
def test_unchanged_by_a_constant(rows, c):
    rewards, valid = padded(rows)
    a, b = ranking_loss(rewards, valid).item(), ranking_loss(rewards + c, valid).item()
    assert abs(a - b) < 1e-9 * max(1.0, a)


@settings(max_examples=60, deadline=None)
@given(batches, st.floats(0.5, 5), st.data())
def test_falls_when_the_best_reward_rises(rows, delta, draw):
    rewards, valid = padded(rows)
    p = draw.draw(st.integers(0, len(rows) - 1))
    higher = rewards.clone()
    higher[p, 0] += delta
    assert ranking_loss(higher, valid).item() < ranking_loss(rewards, valid).item()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.sampled_from([-1e4, 1e4, 0.0, -3e3]), min_size=2, max_size=6), min_size=1, max_size=4),
       st.sampled_from([torch.float32, torch.bfloat16, torch.float64]))
def test_gradients_finite_for_extreme_rewards(rows, dtype):
    rewards, valid = padded(rows)
    rewards = rewards.to(dtype).requires_grad_()
    loss = ranking_loss(rewards, valid)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(rewards.grad).all()
    assert (rewards.grad[~valid] == 0).all()


@settings(max_examples=40, deadline=None)
@given(batches, st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e30]))
def test_padding_slots_never_matter(rows, garbage):
    clean, valid = padded(rows)
    dirty, _ = padded(rows, fill=garbage)
    clean.requires_grad_(), dirty.requires_grad_()
    a, b = ranking_loss(clean, valid), ranking_loss(dirty, valid)
    a.backward(), b.backward()
    assert a.item() == b.item()
    assert torch.equal(clean.grad, dirty.grad) and (dirty.grad[~valid] == 0).all()


def test_gradient_matches_the_formula():
    rewards, valid = padded([[1.0, 0.5, 2.0], [0.0, -1.0]])
    rewards.requires_grad_()
    ranking_loss(rewards, valid).backward()
    # d/dr_i of -log sigma(r_i - r_j) = -(1 - sigma(r_i - r_j)) = -sigma(r_j - r_i)
    s = torch.sigmoid
    r = rewards.detach()
    g0 = [(-s(r[0, 1] - r[0, 0]) - s(r[0, 2] - r[0, 0])) / 3,
          (s(r[0, 1] - r[0, 0]) - s(r[0, 2] - r[0, 1])) / 3,
          (s(r[0, 2] - r[0, 0]) + s(r[0, 2] - r[0, 1])) / 3]
    g1 = [-s(r[1, 1] - r[1, 0]), s(r[1, 1] - r[1, 0]), 0.0]
    expected = torch.tensor([[x.item() if torch.is_tensor(x) else x for x in g] for g in (g0, g1)]) / 2
    assert torch.allclose(rewards.grad, expected.double(), atol=1e-12)


def test_prompts_without_a_pair_are_left_out():
    rewards, valid = padded([[1.0, 0.0], [5.0]])         # the second has one response: no pair
    assert abs(ranking_loss(rewards, valid).item() - formula([[1.0, 0.0]])) < 1e-12
    none = torch.zeros(2, 3, requires_grad=True)
    loss = ranking_loss(none, torch.zeros(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0 and (none.grad == 0).all()


def test_accuracy_counts_pairs_and_half_ties():
    # prompt 0 (best first): 3 > 1 right, 3 > 2 right, 1 < 2 wrong; prompt 1: a tie; padding ignored
    rewards = torch.tensor([[3.0, 1.0, 2.0], [0.5, 0.5, 9.0]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    assert ranking_accuracy(rewards, valid) == (2.5, 4)
    assert ranking_accuracy(rewards) == (2.5 + 0 + 0, 6)   # with 9.0 real: two more pairs, both wrong


@settings(max_examples=40, deadline=None)
@given(batches)
def test_accuracy_matches_a_loop(rows):
    rewards, valid = padded(rows)
    agree = n = 0
    for r in rows:
        for i, j in itertools.combinations(range(len(r)), 2):
            agree += 1.0 if r[i] > r[j] else 0.5 if r[i] == r[j] else 0.0
            n += 1
    assert ranking_accuracy(rewards, valid) == (agree, n)


# ---- PPO: the clipped policy and value losses ---------------------------------------------

from nanoinstruct.losses import ppo_policy_loss, ppo_value_loss  # noqa: E402


@st.composite
def rollouts(draw, B=st.integers(1, 4), T=st.integers(1, 6)):
    """Per-token tensors (B, T) float64 and a mask that is a prefix of each row (>= 0 long)."""
    b, t = draw(B), draw(T)
    vals = st.floats(-3, 3, allow_nan=False)

    def tensor():
        return torch.tensor(draw(st.lists(st.lists(vals, min_size=t, max_size=t), min_size=b, max_size=b)),
                            dtype=torch.float64)
    lengths = draw(st.lists(st.integers(0, t), min_size=b, max_size=b))
    mask = (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]).double()
    return tensor(), tensor(), tensor(), mask


def masked_mean(x, m):
    return (x * m).sum() / m.sum().clamp(min=1)


@settings(max_examples=60, deadline=None)
@given(rollouts(), st.floats(0.05, 0.5))
def test_policy_loss_at_ratio_one_is_minus_mean_advantage(r, clip):
    logp, _, adv, mask = r
    loss, stats = ppo_policy_loss(logp, logp.clone(), adv, mask, clip)
    assert abs(loss.item() + masked_mean(adv, mask).item()) < 1e-12
    assert stats["approx_kl"].item() == 0 and stats["clipfrac"].item() == 0
    assert stats["ratio"].item() == (1.0 if mask.sum() > 0 else 0.0)


@settings(max_examples=80, deadline=None)
@given(rollouts(), st.floats(0.05, 0.5))
def test_tokens_clipped_in_their_advantage_direction_get_no_gradient(r, clip):
    logp, old_logp, adv, mask = r
    logp = (old_logp + logp).requires_grad_()     # ratios exp(-3) .. exp(3): many clipped
    loss, _ = ppo_policy_loss(logp, old_logp, adv, mask, clip)
    loss.backward()
    ratio = torch.exp(logp.detach() - old_logp)
    clipped = ((adv > 0) & (ratio > 1 + clip)) | ((adv < 0) & (ratio < 1 - clip))
    assert (logp.grad[clipped.bool() & (mask > 0)] == 0).all()
    # and the others do get one: d/dlogp of -A * ratio, over the real-token count
    free = ~clipped & (mask > 0) & (adv != 0)
    expected = -adv * ratio / mask.sum().clamp(min=1)
    assert torch.allclose(logp.grad[free], expected[free], rtol=1e-10, atol=1e-14)


@settings(max_examples=80, deadline=None)
@given(rollouts(), st.floats(0.05, 1.0))
def test_value_loss_nonnegative_and_unclipped_within_the_clip(r, clip):
    values, old_values, returns, mask = r
    loss, _ = ppo_value_loss(values, old_values, returns, mask, clip)
    assert loss.item() >= 0
    near = old_values + (values - old_values).clamp(-clip, clip)       # |near - old| <= clip
    loss, stats = ppo_value_loss(near, old_values, returns, mask, clip)
    unclipped = 0.5 * masked_mean((near - returns) ** 2, mask)
    assert abs(loss.item() - unclipped.item()) < 1e-12 and stats["clipfrac"].item() == 0


def test_value_loss_clips_far_moves():
    # old value 0, return 1, clip 0.2: predicting 1.5 is scored as if it were 0.2 (0.64 > 0.25)
    loss, stats = ppo_value_loss(torch.tensor([[1.5]]), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2)
    assert abs(loss.item() - 0.5 * 0.8 ** 2) < 1e-6 and stats["clipfrac"].item() == 1


@settings(max_examples=60, deadline=None)
@given(rollouts(), st.sampled_from([float("nan"), float("inf"), -1e30]))
def test_masked_tokens_never_matter(r, garbage):
    a, b, c, mask = r
    pad = mask == 0
    for fn in (ppo_policy_loss, ppo_value_loss):
        clean = [x.clone().requires_grad_() for x in (a, b, c)]
        dirty = [x.masked_fill(pad, garbage).requires_grad_() for x in (a, b, c)]
        l1, s1 = fn(*clean, mask, 0.2)
        l2, s2 = fn(*dirty, mask, 0.2)
        l1.backward(), l2.backward()
        assert l1.item() == l2.item() and all(s1[k].item() == s2[k].item() for k in s1)
        assert torch.equal(clean[0].grad, dirty[0].grad) and (dirty[0].grad[pad] == 0).all()
