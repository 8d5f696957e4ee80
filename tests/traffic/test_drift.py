import numpy as np
import pytest

from relevance.traffic.drift import nearest_similarity, psi, ks


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=5000)
    assert psi(reference, rng.normal(size=5000)) < 0.02
    assert 0.1 < psi(reference, rng.normal(0.4, size=5000)) < 0.25 < psi(reference, rng.normal(1.5, size=5000))
    # by hand: two bins (a 0/1 flag), shares 0.5/0.5 against 0.2/0.8
    flag = np.repeat([0.0, 1.0], 500)
    expected = (0.2 - 0.5) * np.log(0.2 / 0.5) + (0.8 - 0.5) * np.log(0.8 / 0.5)
    assert psi(flag, np.repeat([0.0, 1.0], [200, 800])) == pytest.approx(expected)
    assert ks(reference, reference)[0] == 0.0


def test_small_samples_get_fewer_bins_and_bad_input_is_refused():
    rng = np.random.default_rng(1)
    noise = [psi(rng.normal(size=40), rng.normal(size=40)) for _ in range(200)]
    assert np.quantile(noise, 0.95) < 0.25  # two bins at 40 values: no alert on noise alone
    with pytest.raises(ValueError, match="finite"):
        psi([1.0, float("nan")], [1.0])
    with pytest.raises(ValueError, match="at least one"):
        psi([], [1.0])
    with pytest.raises(ValueError, match="bins"):
        psi([1.0], [1.0], bins=1)


def test_nearest_similarity_in_batches():
    rng = np.random.default_rng(2)
    reference = rng.normal(size=(50, 8))
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    queries = np.vstack([reference[:3], -reference[:1]])
    similarity = nearest_similarity(queries, reference, batch=2)
    np.testing.assert_allclose(similarity[:3], 1.0, rtol=1e-6)
    assert similarity[3] < 1.0
    with pytest.raises(ValueError, match="expected"):
        nearest_similarity(queries, reference[:, :4])
