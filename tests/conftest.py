import os

import pytest
import torch

# The Triton kernels run on CPU under the interpreter, which must be chosen before any kernel is
# defined; on a GPU machine they run compiled.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# "auto" follows the committed rules here (tests/test_tuning.py turns tuning on): timed on a shared machine, its
# picks, and so the kernels a test sees, would change from run to run. (Off is also the default; this keeps a
# user's FUSED_RNN_AUTOTUNE=1 out of the suite.)
os.environ["FUSED_RNN_AUTOTUNE"] = "0"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
