"""`portkit plan`: the cost model and layout search (costmodel.py), cluster specs (clusters/), the command (cli.py)."""
