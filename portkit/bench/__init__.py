"""`portkit bench`: fused ops (ops.py) and training throughput (train.py) against native PyTorch; cli.py is the command."""
