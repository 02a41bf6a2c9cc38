"""The shared quantizers (upstream/modules/quantizer.py): Gumbel product VQ and k-means VQ."""

import math

import pytest
import torch
import torch.nn.functional as F

from upstream.modules.quantizer import GumbelQuantizer, KmeansQuantizer


def test_split_input_gumbel_trains_through_straight_through_and_follows_its_generator():
    vq = GumbelQuantizer(8, 16, groups=2, split_input=True, temperature=0.5).train()
    x = torch.randn(3, 5, 8, requires_grad=True)
    q1 = vq(x, generator=torch.Generator().manual_seed(0))
    q2 = vq(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(q1.codes, q2.codes) and torch.equal(q1.values, q2.values)
    torch.testing.assert_close(q1.values.view(3, 5, 2, 4)[0, 0, 1], vq.codebook[1, q1.codes[0, 0, 1]])
    q1.values.sum().backward()
    assert vq.logit_weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
    vq.eval()
    logits = torch.einsum("btgd,gdc->btgc", x.view(3, 5, 2, 4), vq.logit_weight) + vq.logit_bias
    assert torch.equal(vq(x).codes, logits.argmax(-1))


def test_whole_frame_logits_are_one_linear_layer_of_g_times_v_outputs():
    """wav2vec 2.0's weight_proj: Linear(D, G*V), group g owning outputs g*V .. (g+1)*V - 1."""
    torch.manual_seed(0)
    vq = GumbelQuantizer(12, 5, groups=3, code_dim=4, init="wav2vec2").eval()
    linear = torch.nn.Linear(12, 15)
    with torch.no_grad():
        linear.weight.copy_(vq.logit_weight.permute(0, 2, 1).reshape(15, 12))
        linear.bias.copy_(vq.logit_bias.reshape(15))
    x = torch.randn(2, 7, 12)
    torch.testing.assert_close(vq.logits(x), linear(x).view(2, 7, 3, 5))
    q = vq(x)
    assert q.values.shape == (2, 7, 12) and vq.output_dim == 12
    expected = torch.cat([vq.codebook[g, q.codes[..., g]] for g in range(3)], dim=-1)
    torch.testing.assert_close(q.values, expected)


def test_temperature_anneals_per_step_down_to_its_floor():
    vq = GumbelQuantizer(4, 8, temperature=(2.0, 0.5, 0.9))
    assert vq.temperature(0) == 2.0
    assert vq.temperature(3) == pytest.approx(2.0 * 0.9**3)
    assert vq.temperature(10_000) == 0.5
    assert vq(torch.randn(1, 3, 4), step=3).temperature == pytest.approx(2.0 * 0.9**3)
    with pytest.raises(ValueError, match="temperature"):
        GumbelQuantizer(4, 8, temperature=(0.5, 2.0, 0.9))


def test_diversity_loss_is_zero_for_uniform_code_use_and_near_one_for_a_collapsed_codebook():
    """wav2vec 2.0 eq. 4: (GV - exp H(mean softmax)) / GV, summed perplexities over groups."""
    G, V = 2, 8
    vq = GumbelQuantizer(G * V, V, groups=G, init="wav2vec2").eval()
    with torch.no_grad():  # logits = 50 * the input's one-hot per group: the argmax is the input's hot feature
        vq.logit_weight.zero_()
        for g in range(G):
            vq.logit_weight[g, g * V : (g + 1) * V] = 50 * torch.eye(V)
    uniform = torch.cat([torch.eye(V), torch.eye(V)], dim=-1)[None]  # (1, V, G*V): each code once per group
    q = vq(uniform)
    assert q.code_perplexity.item() == pytest.approx(G * V, rel=1e-4)
    assert q.prob_perplexity.item() == pytest.approx(G * V, rel=1e-3)
    assert q.loss.item() == pytest.approx(0.0, abs=1e-3)
    collapsed = uniform[:, :1].expand(1, V, G * V)  # every frame the same code in each group
    q = vq(collapsed)
    assert q.code_perplexity.item() == pytest.approx(G, rel=1e-4)
    assert q.loss.item() == pytest.approx(1 - G / (G * V), rel=1e-3)
    # padding never counts: the collapsed frames marked invalid leave the uniform usage
    x = torch.cat([uniform, collapsed], dim=1)
    valid = torch.arange(2 * V)[None] < V
    assert vq(x, valid).code_perplexity.item() == pytest.approx(G * V, rel=1e-4)
    # the diversity loss pushes the logits towards using more codes
    vq.train()
    z = collapsed.clone().requires_grad_(True)
    vq(z, generator=torch.Generator().manual_seed(0)).loss.backward()
    assert vq.logit_weight.grad.abs().sum() > 0


def test_kmeans_picks_the_nearest_entry_passes_gradients_straight_through_and_scores_both_losses():
    torch.manual_seed(0)
    vq = KmeansQuantizer(6, 4, groups=2, gamma=0.25)
    x = torch.randn(2, 5, 6, requires_grad=True)
    valid = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    q = vq(x, valid)
    z = x.detach().view(2, 5, 2, 3)
    for g in range(2):
        distances = torch.cdist(z[:, :, g].reshape(-1, 3), vq.codebook[:, g].detach())  # (B*T, V)
        assert torch.equal(q.codes[..., g].reshape(-1), distances.argmin(-1))
    zq = torch.stack([vq.codebook[q.codes[..., g], g] for g in range(2)], dim=2).detach()  # (B, T, G, d)
    torch.testing.assert_close(q.values.detach().view(2, 5, 2, 3), zq)
    squared = ((z - zq) ** 2).sum(dim=(2, 3))[valid].sum() / (valid.sum() * 6)
    torch.testing.assert_close(q.loss, 1.25 * squared)
    q.values.sum().backward(retain_graph=True)
    assert torch.equal(x.grad, torch.ones_like(x))  # straight-through: d values / d x = 1
    x.grad = None
    q.loss.backward()
    assert vq.codebook.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
    used = F.one_hot(q.codes[valid], 4).float().mean(0)  # (G, V)
    assert q.code_perplexity.item() == pytest.approx(math.fsum(torch.exp(-(used * torch.log(used + 1e-7)).sum(-1)).tolist()), rel=1e-5)
