import pytest
import torch

from speechssl.data.synth import synthesize


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def superb_lite_tiny(tmp_path_factory):
    """The tiny SUPERB-lite corpus, made once per test session (a few seconds)."""
    return synthesize(tmp_path_factory.mktemp("superb_lite"), size="tiny", seed=0, num_workers=2)
