import jax.numpy as jnp
import pytest

from bilevax.datasets import breast_cancer


def test_breast_cancer_split_is_standardised_and_disjoint():
    data = breast_cancer(sizes=(300, 150), seed=1)
    (Xtr, ytr), (Xva, _), (Xte, _) = data.train, data.validation, data.test
    assert Xtr.shape == (300, 30) and Xva.shape == (150, 30) and Xte.shape == (119, 30)
    assert set(jnp.unique(ytr).tolist()) == {0, 1}
    assert jnp.allclose(Xtr.mean(axis=0), 0, atol=1e-6)
    assert jnp.allclose(Xtr.std(axis=0), 1, atol=1e-6)
    rows = {tuple(r) for r in jnp.concatenate([Xtr, Xva, Xte]).round(6).tolist()}
    assert len(rows) == 569
    again = breast_cancer(sizes=(300, 150), seed=1)
    assert jnp.array_equal(again.train[0], Xtr)


def test_breast_cancer_bad_sizes():
    with pytest.raises(ValueError, match="leave a test set"):
        breast_cancer(sizes=(400, 169))


def test_digits_split():
    from bilevax.datasets import digits

    data = digits(sizes=(1000, 400), seed=0)
    assert data.train[0].shape == (1000, 64) and data.test[0].shape == (397, 64)
    assert set(jnp.unique(data.train[1]).tolist()) == set(range(10))
    assert jnp.all(jnp.isfinite(data.train[0]))
