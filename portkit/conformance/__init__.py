"""`portkit conformance`: the suite that certifies a backend, one module per group (cli.py holds the groups table)."""
