"""make_family and family.sample refuse bad arguments naming them."""

from __future__ import annotations

import pytest

from tvlens.tasks import make_family
from tvlens.tasks.base import ConfigError
from tvlens.validation import InputTypeError, InvalidInputError


@pytest.mark.parametrize("vocab", [6.0, 6.5, "6"])
def test_make_family_with_a_non_integer_vocab(vocab):
    with pytest.raises(ConfigError, match="family.vocab must be an integer"):
        make_family(name="dice", vocab=vocab)


@pytest.mark.parametrize("n", [2.5, "3", None, True])
def test_sample_n_must_be_an_integer(n):
    with pytest.raises(InputTypeError, match="n must be an integer >= 1; got"):
        make_family(name="dice", seq_len=8).sample("train", n)


def test_sample_n_must_be_positive():
    with pytest.raises(InvalidInputError, match="n must be >= 1; got 0"):
        make_family(name="dice", seq_len=8).sample("train", 0)
