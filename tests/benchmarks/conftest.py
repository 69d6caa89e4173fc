import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_threads():
    """Benchmark targets set torch's thread count (``--threads``, ``--scaling``): restored after each test."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
