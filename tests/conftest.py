"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one CPU thread for the module: two spinning OpenMP threads on a busy 2-core CI
    machine are several times slower than one, and training runs compare exactly."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def nltk_data(tmp_path_factory):
    """The tests' one NLTK data folder (tiny_models.write_tiny_nltk with NLTK_TAGS): NLTK caches
    its tagger and Punkt model per process, so every test that tags shares this one."""
    from tiny_models import NLTK_AMBIGUOUS, NLTK_TAGS, write_tiny_nltk

    folder = tmp_path_factory.mktemp("nltk_data")
    return write_tiny_nltk(folder, NLTK_TAGS, NLTK_AMBIGUOUS, ("mr",))
