"""Shared pytest set-up: the ``--slow`` switch, deterministic torch, and a tiny detector checkpoint."""

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """A tiny random network whose pre-processing looks for no lungs (for noise scans and DICOM
    series made from phantoms alike), named ``tiny`` 0.0.1."""
    from SCPMNoduleLib.checkpoint import save_checkpoint
    from SCPMNoduleLib.model import SCPMNet, SCPMNetConfig
    from SCPMNoduleLib.preprocess import PreprocessConfig

    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    torch.manual_seed(0)
    save_checkpoint(path, SCPMNet(SCPMNetConfig.tiny()), PreprocessConfig(lung_mask=False),
                    {"trained": True, "name": "tiny", "version": "0.0.1"})
    return path
