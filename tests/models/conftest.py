import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Model tests use tiny inputs, where a second thread gains little; on the shared 2-core
    machines, OpenMP threads spinning against other processes made them 5-10× slower. One thread,
    restored after each test (only tests under tests/models/ are affected)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
