"""The trainer's additions of issue 15: the neuron model, per-feature densities, correlated
pairs, optimisers with weight decay and the initial scale, against independent references."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from capalloc.training import TrainConfig  # noqa: E402
from capalloc.training import torch_models as tm  # noqa: E402

F64 = torch.float64


def test_neuron_forward_matches_numpy():
    model = tm.build_model("neuron", np.ones(5), 3, 0.5, instances=2, dtype=F64)
    with torch.no_grad():
        model.b.copy_(torch.randn(2, 5, generator=torch.Generator().manual_seed(1), dtype=F64))
    x = model.sample(7, torch.Generator().manual_seed(2))
    W, b, xs = model.W.detach().numpy(), model.b.detach().numpy(), x.numpy()
    h = np.maximum(np.einsum("mkn,mbn->mbk", W, xs), 0)
    want = np.maximum(np.einsum("mkn,mbk->mbn", W, h) + b[:, None, :], 0)
    np.testing.assert_allclose(model(x).detach().numpy(), want, rtol=1e-12)
    loss = ((xs - want) ** 2).sum(-1).mean(-1)
    np.testing.assert_allclose(model.loss(x).detach().numpy(), loss, rtol=1e-12)


def test_neuron_hidden_bias_enters_before_the_relu():
    model = tm.build_model("neuron", np.ones(3), 2, 0.0, dtype=F64, hidden_bias=-10.0)
    x = model.sample(4, torch.Generator().manual_seed(0))
    assert float(model.hidden(x).detach().abs().max()) == 0.0  # |W x| << 10
    assert {name for name, _ in model.named_parameters()} == {"W", "b", "c"}
    with pytest.raises(ValueError, match="hidden_bias"):
        tm.build_model("relu-ae", np.ones(3), 2, 0.0, hidden_bias=-1.0)


@pytest.mark.parametrize("name", ["relu-ae", "neuron", "quadratic"])
def test_per_feature_density_monte_carlo(name):
    p = np.array([[0.1, 0.5, 1.0, 0.3], [0.9, 0.2, 0.05, 0.6]])
    model = tm.build_model(name, np.ones(4), 2, 0.0, density=p, dtype=F64)
    assert model.m == 2
    x = model.sample(200_000, torch.Generator().manual_seed(0)).numpy()
    freq = (x != 0).mean(axis=1)
    np.testing.assert_allclose(freq, p, atol=4 * np.sqrt(0.25 / 200_000))
    np.testing.assert_allclose(model.sparsity.numpy(), 1 - p.mean(1))
    # (n,) broadcasts over the instances
    shared = tm.build_model(name, np.ones(4), 2, 0.0, density=p[0], instances=3)
    assert tuple(shared.feature_sparsity.shape) == (3, 4)


def test_correlated_pairs_monte_carlo():
    batch = 200_000
    gen = torch.Generator().manual_seed(0)
    for c, p in ((1.0, 0.3), (0.5, 0.3), (-1.0, 0.3), (-0.5, 0.4), (0.0, 0.3)):
        model = tm.build_model("relu-ae", np.ones(5), 2, 1 - p, correlation=c, dtype=F64)
        on = (model.sample(batch, gen)[0].numpy() != 0).astype(float)
        np.testing.assert_allclose(on.mean(0), p, atol=0.005)  # marginals kept
        r = np.corrcoef(on[:, 0], on[:, 1])[0, 1]
        want = c if c >= 0 else c * p / (1 - p)
        assert abs(r - want) < 0.01, (c, p, r, want)
        assert abs(np.corrcoef(on[:, 1], on[:, 2])[0, 1]) < 0.01  # across pairs: independent
        assert abs(np.corrcoef(on[:, 3], on[:, 4])[0, 1]) < 0.01  # the odd one out
        if c == -1.0:
            assert not np.any(on[:, 0] * on[:, 1])  # anti-correlated: never together


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="density"):
        tm.build_model("relu-ae", np.ones(3), 2, 0.0, density=[0.5, 0.0, 0.2])
    with pytest.raises(ValueError, match="density"):
        tm.build_model("relu-ae", np.ones(3), 2, 0.0, density=1.5)
    with pytest.raises(ValueError, match="density"):
        tm.build_model("relu-ae", np.ones(3), 2, 0.0, density=[0.5, 0.5])
    with pytest.raises(ValueError, match="correlation"):
        tm.build_model("relu-ae", np.ones(3), 2, 0.5, correlation=1.5)
    with pytest.raises(ValueError, match="correlation"):
        tm.build_model("quadratic", np.ones(3), 2, 0.5, correlation=0.5)
    with pytest.raises(ValueError, match="weight_decay"):
        TrainConfig(weight_decay=-0.1)
    with pytest.raises(ValueError, match="bias_decay"):
        TrainConfig(optimizer="sgd", bias_decay=-0.1)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lion")
    TrainConfig(optimizer="adamw", weight_decay=-1.0)  # meaningful: negative decoupled decay


def test_init_std():
    model = tm.build_model("relu-ae", np.ones(400), 50, 0.5, init_std=0.3, dtype=F64)
    assert abs(float(model.W.detach().std()) - 0.3) < 0.01
    xavier = tm.build_model("relu-ae", np.ones(400), 50, 0.5, dtype=F64)
    assert abs(float(xavier.W.detach().std()) - np.sqrt(2 / 450)) < 0.002


def _twin(seed=0):
    return tm.build_model(
        "neuron",
        np.ones(4),
        2,
        0.5,
        instances=2,
        dtype=F64,
        generator=torch.Generator().manual_seed(seed),
    )


def test_adamw_matches_torch_adamw():
    """The hand-made decoupled decay equals torch's AdamW (for a positive decay)."""
    cfg = TrainConfig(
        steps=30,
        batch_size=64,
        lr=0.05,
        lr_final=1.0,
        optimizer="adamw",
        weight_decay=0.3,
        bias_decay=0.3,
    )
    mine = _twin()
    tm.fit(mine, cfg, generator=torch.Generator().manual_seed(5))
    ref = _twin()
    opt = torch.optim.AdamW(ref.parameters(), lr=0.05, weight_decay=0.3)
    gen = torch.Generator().manual_seed(5)
    for _ in range(30):
        loss = ref.loss(ref.sample(64, gen)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    np.testing.assert_allclose(mine.W.detach().numpy(), ref.W.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(mine.b.detach().numpy(), ref.b.detach().numpy(), atol=1e-12)


def test_sgd_weight_decay_is_an_l2_penalty():
    """SGD with decay lambda on W only = plain gradient descent on loss + lambda/2 |W|^2."""
    cfg = TrainConfig(
        steps=5, batch_size=32, lr=0.1, lr_final=1.0, optimizer="sgd", weight_decay=0.5
    )
    mine = _twin(1)
    tm.fit(mine, cfg, generator=torch.Generator().manual_seed(3))
    ref = _twin(1)
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        loss = ref.loss(ref.sample(32, gen)).sum() + 0.25 * (ref.W**2).sum()
        grads = torch.autograd.grad(loss, [ref.W, ref.b])
        with torch.no_grad():
            ref.W -= 0.1 * grads[0]
            ref.b -= 0.1 * grads[1]
    np.testing.assert_allclose(mine.W.detach().numpy(), ref.W.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(mine.b.detach().numpy(), ref.b.detach().numpy(), atol=1e-12)


def test_negative_weight_decay_grows_the_weights():
    base = TrainConfig(steps=200, batch_size=256, lr=0.01, optimizer="adamw")
    norms = []
    for decay in (1.0, 0.0, -1.0):
        run = tm.train_model(
            "relu-ae", n=6, d=2, sparsity=0.9, instances=2, config=base.replace(weight_decay=decay)
        )
        norms.append(float((run.W**2).sum()))
    assert norms[0] < norms[1] < norms[2]


def test_train_model_records_density_and_hidden_bias():
    run = tm.train_model(
        "neuron",
        n=4,
        d=2,
        density=[0.1, 0.2, 0.3, 0.4],
        hidden_bias=-0.2,
        config=TrainConfig(steps=20, batch_size=64),
    )
    assert run.density.shape == (1, 4) and run.hidden_bias.shape == (1, 2)
    np.testing.assert_allclose(run.sparsity, [0.75])


def test_activation_l1_adds_the_mean_hidden_l1_norm():
    model = tm.build_model("neuron", np.ones(5), 3, 0.5, instances=2, dtype=F64, activation_l1=0.3)
    x = model.sample(9, torch.Generator().manual_seed(4))
    W, b, xs = model.W.detach().numpy(), model.b.detach().numpy(), x.numpy()
    h = np.maximum(np.einsum("mkn,mbn->mbk", W, xs), 0)
    xhat = np.maximum(np.einsum("mkn,mbk->mbn", W, h) + b[:, None, :], 0)
    want = ((xs - xhat) ** 2).sum(-1).mean(-1) + 0.3 * h.sum(-1).mean(-1)
    np.testing.assert_allclose(model.loss(x).detach().numpy(), want, rtol=1e-12)
    with pytest.raises(ValueError, match="activation_l1"):
        tm.build_model("relu-ae", np.ones(3), 2, 0.5, activation_l1=0.1)
    with pytest.raises(ValueError, match="activation_l1"):
        tm.build_model("neuron", np.ones(3), 2, 0.5, activation_l1=-0.1)
