"""The task of ds_train.py and colo_train.py: a seeded MLP and seeded batches of a
classification problem, the same in every process."""
import torch

STEPS, GLOBAL_BATCH, D_IN, D_HID, N_CLASSES, LR = 3, 8, 16, 32, 4, 1e-2


def build_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(D_IN, D_HID), torch.nn.GELU(), torch.nn.Linear(D_HID, N_CLASSES))


def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(GLOBAL_BATCH, D_IN, generator=g), torch.randint(0, N_CLASSES, (GLOBAL_BATCH,), generator=g))
            for _ in range(STEPS)]
