"""Tests of capalloc.training.torch_models: forward passes, the sampler, the trainer, results."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import capalloc  # noqa: E402
from capalloc import distributions as D  # noqa: E402
from capalloc.training import TrainConfig, TrainResult  # noqa: E402
from capalloc.training import torch_models as tm  # noqa: E402
from capalloc.training.torch_models import (  # noqa: E402
    LawSampler,
    build_model,
    default_importance,
    effective_capacity,
    fit,
    train_model,
    trained_labels,
)

F64 = torch.float64


def _set_weights(model, rng):
    with torch.no_grad():
        model.W.copy_(torch.as_tensor(rng.standard_normal(tuple(model.W.shape))))
        model.b.copy_(torch.as_tensor(rng.standard_normal(tuple(model.b.shape))))
    return model.W.detach().numpy(), model.b.detach().numpy()


def _gelu(t):
    from scipy.special import erf

    return 0.5 * t * (1 + erf(t / math.sqrt(2)))


ACTIVATIONS = {"quadratic": lambda t: t * t, "relu": lambda t: np.maximum(t, 0.0), "gelu": _gelu}


def test_registry_lists_the_five_models():
    assert tm.available_models() == ["gelu", "neuron", "quadratic", "relu", "relu-ae"]
    with pytest.raises(ValueError, match="model_name must be one of"):
        tm.get_model("tanh")


@pytest.mark.parametrize("name", ["quadratic", "relu", "gelu"])
def test_scalar_models_forward_matches_numpy(name, rng):
    m, d, n, B = 3, 2, 5, 7
    v = rng.uniform(0.1, 1.0, (m, n))
    model = build_model(name, v, d, [0.0, 0.5, 0.9], dtype=F64)
    W, b = _set_weights(model, rng)
    x = rng.standard_normal((m, B, n))
    f = ACTIVATIONS[name]
    h = np.einsum("mdn,mbn->mbd", W, x)
    y_hat = f(h).sum(-1) + b[:, None]
    y = (f(x) * v[:, None, :]).sum(-1)
    tx = torch.as_tensor(x)
    np.testing.assert_allclose(model(tx).detach().numpy(), y_hat, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.target(tx).numpy(), y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        model.loss(tx).detach().numpy(), ((y_hat - y) ** 2).mean(-1), rtol=1e-12
    )


def test_relu_autoencoder_forward_matches_numpy(rng):
    m, d, n, B = 2, 3, 6, 9
    imp = rng.uniform(0.1, 1.0, n)
    model = build_model("relu-ae", imp, d, 0.7, instances=m, dtype=F64)
    W, b = _set_weights(model, rng)
    x = rng.uniform(0, 1, (m, B, n)) * (rng.random((m, B, n)) < 0.3)
    x_hat = np.maximum(np.einsum("mdn,mdk,mbk->mbn", W, W, x) + b[:, None, :], 0.0)
    tx = torch.as_tensor(x)
    np.testing.assert_allclose(model(tx).detach().numpy(), x_hat, rtol=1e-12, atol=1e-12)
    expected = ((x - x_hat) ** 2 * imp).sum(-1).mean(-1)
    np.testing.assert_allclose(model.loss(tx).detach().numpy(), expected, rtol=1e-12)


def test_sparse_gaussian_sampler_moments_per_instance():
    S = np.array([0.0, 0.5, 0.9])
    model = build_model("quadratic", np.ones(4), 2, S, dtype=F64)
    gen = torch.Generator().manual_seed(1)
    x = model.sample(100_000, gen).numpy()
    assert x.shape == (3, 100_000, 4)
    zeros = (x == 0).mean(axis=(1, 2))
    np.testing.assert_allclose(zeros, S, atol=0.01)
    np.testing.assert_allclose(x.var(axis=(1, 2)), 1.0, rtol=0.03)
    kurt = (x**4).mean(axis=(1, 2))
    np.testing.assert_allclose(kurt, 3 / (1 - S), rtol=0.08)


def test_autoencoder_sampler_is_sparse_uniform():
    model = build_model("relu-ae", np.ones(5), 2, [0.2, 0.95])
    x = model.sample(50_000, torch.Generator().manual_seed(0)).numpy()
    np.testing.assert_allclose((x == 0).mean(axis=(1, 2)), [0.2, 0.95], atol=0.01)
    on = x[x > 0]
    assert on.max() < 1 and abs(on.mean() - 0.5) < 0.01


def test_instances_do_not_interact():
    model = build_model("gelu", np.ones(4), 2, [0.0, 0.9], dtype=F64)
    x = model.sample(64, torch.Generator().manual_seed(0))
    model.loss(x)[0].backward()
    assert torch.all(model.W.grad[1] == 0) and torch.any(model.W.grad[0] != 0)


def test_train_model_run_fields_and_reproducibility():
    kw = dict(n=6, d=3, sparsity=[0.0, 0.9], steps=30, batch_size=64, seed=3)
    run = train_model("relu", **kw)
    again = train_model("relu", **kw)
    np.testing.assert_array_equal(run.W, again.W)
    assert isinstance(run, TrainResult) and tm.ModelRun is TrainResult
    assert run.W.shape == (2, 3, 6) and run.capacity.shape == (2, 6)
    assert run.labels.shape == (2, 6) and run.loss.shape == (2,)
    assert run.loss_history.shape == (2, 30) and np.all(np.isfinite(run.loss))
    assert run.restart_losses.shape == (2, 1) and run.nit == run.steps == 30
    assert run.model == "relu" and run.method == "sampled" and run.seed == 3
    np.testing.assert_allclose(run.capacity, capalloc.capacity(run.W))
    # the names of 0.1.0's ModelRun
    assert run.capacities is run.capacity and run.effective_capacities is run.effective_capacity
    for frac in (
        run.polysemantic_fraction,
        run.polysemantic_fraction_all,
        run.capacity_held_by_poly,
    ):
        assert np.all((frac >= 0) & (frac <= 1))
    assert np.all(run.polysemantic_fraction >= run.polysemantic_fraction_all)
    assert not run.W.flags.writeable and not run.loss_history.flags.writeable
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.nit = 1  # type: ignore[misc]
    assert repr(run).startswith("TrainResult(method='sampled', W.shape=(2, 3, 6), model='relu'")
    other = train_model("relu", **{**kw, "seed": 4})
    assert not np.array_equal(run.W, other.W)


def test_train_model_config_and_keywords_are_one_setting():
    config = TrainConfig(steps=25, batch_size=32, lr=0.02, seed=7)
    by_config = train_model("gelu", n=4, d=2, sparsity=0.5, config=config)
    by_keywords = train_model(
        "gelu", n=4, d=2, sparsity=0.5, steps=25, batch_size=32, lr=0.02, seed=7
    )
    np.testing.assert_array_equal(by_config.W, by_keywords.W)
    assert by_config.config == by_keywords.config == config
    # a keyword replaces that field of the config
    assert train_model("gelu", n=4, d=2, config=config, steps=3).config == config.replace(steps=3)
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        train_model("gelu", n=4, d=2, config={"steps": 3})


def test_train_model_blocks_when_geometry_available():
    pytest.importorskip("capalloc.geometry")
    run = train_model("quadratic", n=6, d=3, sparsity=0.8, instances=2, steps=30, batch_size=64)
    assert run.blocks is not None and len(run.blocks) == 2
    for inst, shapes, labels in zip(run.blocks, run.block_shapes(), run.labels, strict=True):
        features = [int(f) for b in inst for f in np.atleast_1d(b.features)]
        assert len(features) == len(set(features))
        assert set(features) == set(np.flatnonzero(labels != "ignored").tolist())
        assert all(dim <= k for dim, k in shapes)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(model_name="tanh"), "model_name"),
        (dict(sparsity=1.0), "sparsity"),
        (dict(sparsity=[0.1, -0.1]), "sparsity"),
        (dict(steps=0), "steps"),
        (dict(lr=-1.0), "lr"),
        (dict(d=0), "d must"),
        (dict(n=5, importance=np.ones(4)), "n=5"),
        (dict(importance=-np.ones(4)), "importance"),
        (dict(device="nonsense"), "device"),
        (dict(dtype="int8"), "dtype"),
        (dict(cap_tol=0.5), "cap_tol"),
        (dict(norm_tol=-1.0), "norm_tol"),
    ],
)
def test_train_model_rejects_bad_input(kwargs, match):
    args = {"model_name": "quadratic", "n": 4, "d": 2, "steps": 1, **kwargs}
    if "importance" in kwargs and "n" not in kwargs:
        args.pop("n")
    with pytest.raises(ValueError, match=match):
        train_model(**args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_request_without_cuda_is_a_value_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        train_model("quadratic", n=4, d=2, steps=1, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trains_on_cuda():
    run = train_model("relu-ae", n=6, d=3, sparsity=[0.0, 0.9], steps=50, device="cuda")
    assert run.device.startswith("cuda") and np.all(np.isfinite(run.loss))


def test_trained_labels_and_effective_capacity():
    W = np.array([[1.0, 0.0, 0.02], [0.0, 1.0, 0.02]])
    assert trained_labels(W).tolist() == ["monosemantic", "monosemantic", "ignored"]
    # without dropping the small column its interference lowers the others' capacity
    assert capalloc.capacity(W)[0] < 1 and effective_capacity(W)[0] == 1
    assert trained_labels(W, norm_tol=0.0, cap_tol=1e-6)[0] == "polysemantic"
    with pytest.raises(ValueError, match="cap_tol"):
        trained_labels(W, cap_tol=0.5)
    with pytest.raises(ValueError, match="norm_tol"):
        effective_capacity(W, norm_tol=-1)


def test_quadratic_model_trained_agrees_with_solver_and_rises_with_sparsity():
    # two instances in one program: dense (K = 3) and sparse (K = 3 / 0.2 = 15) inputs
    v = 0.8 ** np.arange(6)
    run = train_model(
        "quadratic", v, d=3, sparsity=[0.0, 0.8], steps=1200, batch_size=512, lr=2e-2, seed=0
    )
    exact = capalloc.solve(capalloc.QuadraticProblem(np.tile(v, (2, 1)), 3, [[3.0], [15.0]]))
    np.testing.assert_allclose(run.effective_capacities[1], exact.capacity[1], atol=0.08)
    assert abs(run.effective_capacities[1].sum() - 3) < 0.1
    assert list(run.labels[0]) == list(exact.labels[0])  # top-3 monosemantic at K = 3
    pf = run.polysemantic_fraction
    assert pf[0] < pf[1]
    exact_pf = (exact.labels == "polysemantic").sum(1) / (exact.labels != "ignored").sum(1)
    np.testing.assert_allclose(pf, exact_pf, atol=0.2)


def test_relu_autoencoder_polysemanticity_rises_with_sparsity():
    # Elhage et al.: 5 features in 2 dimensions; dense -> 2 monosemantic, sparse -> superposition
    run = train_model(
        "relu-ae",
        default_importance(5),
        d=2,
        sparsity=[0.0, 0.95],
        steps=1500,
        batch_size=512,
        seed=0,
    )
    assert run.polysemantic_fraction[0] == 0.0
    assert list(run.labels[0]).count("monosemantic") == 2
    assert run.polysemantic_fraction[1] >= 0.6


@pytest.mark.parametrize("name", ["relu", "gelu"])
def test_activation_variants_train_and_lose_loss(name):
    run = train_model(name, n=6, d=3, sparsity=0.5, steps=150, batch_size=256)
    first, last = run.loss_history[:, :15].mean(-1), run.loss_history[:, -15:].mean(-1)
    assert np.all(last < first)


# ----------------------------------------------------------------------------- the sampler


@pytest.mark.parametrize(
    "law",
    [D.Gaussian(), D.Sparse(D.Gaussian(), 0.2), D.ThreePoint(6.0), D.Uniform(), D.Rademacher()],
    ids=repr,
)
def test_law_sampler_moments_match_the_law(law):
    x = LawSampler([law] * 3)(200_000, torch.Generator().manual_seed(2), dtype=F64).numpy()
    assert x.shape == (200_000, 3)
    se = math.sqrt(law.kurtosis / 200_000)  # standard error of the second moment, roughly
    np.testing.assert_allclose(x.mean(0), 0.0, atol=5 * se)
    np.testing.assert_allclose((x**2).mean(0), 1.0, atol=5 * se)
    np.testing.assert_allclose((x**4).mean(0), law.kurtosis, rtol=0.05)


def test_law_sampler_mixed_columns_keep_their_laws():
    laws = [D.Uniform(), D.Gaussian(), D.ThreePoint(10.0), D.Sparse(D.Gaussian(), 0.5)] * 2
    x = LawSampler(laws)(100_000, torch.Generator().manual_seed(0), dtype=F64).numpy()
    kurtosis = np.array([law.kurtosis for law in laws])
    np.testing.assert_allclose((x**4).mean(0), kurtosis, rtol=0.08)
    # three-point columns take only the values 0 and +-sqrt(K)
    np.testing.assert_allclose(np.unique(np.abs(x[:, 2])), [0.0, math.sqrt(10.0)], rtol=1e-12)
    assert np.mean(x[:, 3] == 0) == pytest.approx(0.5, abs=0.01)
    a = LawSampler(laws)(64, torch.Generator().manual_seed(5))
    b = LawSampler(laws)(64, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_law_sampler_rows_are_instances():
    """Rows of laws give (m, B, n); each instance keeps its own laws, mixed or not."""
    rows = [[D.Sparse(D.Gaussian(), 0.1)] * 3, [D.Gaussian()] * 3]
    x = LawSampler(rows)(100_000, torch.Generator().manual_seed(3), dtype=F64).numpy()
    assert x.shape == (2, 100_000, 3)
    np.testing.assert_allclose((x**4).mean(1), [[30.0] * 3, [3.0] * 3], rtol=0.1)
    np.testing.assert_allclose((x[0] == 0).mean(0), 0.9, atol=0.01)
    one = LawSampler([[D.Sparse(D.Gaussian(), 0.1)] * 3] * 2)  # one family: one draw
    assert one(7).shape == (2, 7, 3)


def test_law_sampler_rejects_bad_laws():
    with pytest.raises(ValueError, match="laws must be a non-empty sequence"):
        LawSampler([])
    with pytest.raises(ValueError, match="equal-length rows"):
        LawSampler([[D.Gaussian()] * 2, [D.Gaussian()]])
    with pytest.raises(ValueError, match="single-feature"):
        LawSampler([D.PerFeature([D.Gaussian()])])


# ----------------------------------------------------------------------------- the trainer


def test_fit_follows_the_schedule_and_records_every_step(monkeypatch):
    """Each Adam step of fit runs at the closed-form learning rate of its step."""
    model = build_model("quadratic", np.ones(3), 2, 0.5, instances=2, dtype=F64)
    config = TrainConfig(steps=40, batch_size=16, lr=0.05, lr_final=0.2, warmup=0.25)
    seen = []
    real_step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    history = fit(model, config)
    assert history.shape == (2, 40) and np.all(np.isfinite(history))
    # 10 warm-up steps at lr (t + 1) / 10, then lr (0.2 + 0.8 (1 + cos(pi s)) / 2), s = (t - 10) / 30
    t = np.arange(40)
    s = (t - 10) / 30
    expected = np.where(t < 10, 0.05 * (t + 1) / 10, 0.05 * (0.2 + 0.4 * (1 + np.cos(np.pi * s))))
    np.testing.assert_allclose(seen, expected, rtol=1e-12)


def test_fit_restores_the_thread_setting_and_checks_its_config():
    before = torch.get_num_threads()
    model = build_model("relu", np.ones(3), 2, 0.5)
    fit(model, TrainConfig(steps=2, batch_size=4, num_threads=1))
    assert torch.get_num_threads() == before
    with pytest.raises(TypeError, match="TrainConfig"):
        fit(model, {"steps": 2})
