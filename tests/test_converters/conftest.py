"""The converter tests' fixture: a throwaway module standing in for yacs."""
import sys

import pytest
from testing_utils.converter_utils import make_trap_module


@pytest.fixture
def trap_module(tmp_path, monkeypatch):
    """An importable throwaway module (made unimportable by ``make_unimportable``)."""
    module, name = make_trap_module(tmp_path, monkeypatch)
    yield module
    sys.modules.pop(name, None)
