"""What the built-in GPU backends share: the NCCL environment every launch gets."""
from __future__ import annotations

# torch.distributed over NCCL (and RCCL, which reads the same variables): with async error
# handling 1 ("TearDown") a collective that fails or times out aborts the communicator and
# ends the process, so torchrun sees the failure instead of a rank blocking forever
# (PyTorch ProcessGroupNCCL, TORCH_NCCL_ASYNC_ERROR_HANDLING). Nothing else here: network
# choices (NCCL_SOCKET_IFNAME, NCCL_IB_*) depend on the node and belong to tuning profiles.
NCCL_SAFE_ENV = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}
