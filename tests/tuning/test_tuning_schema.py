"""Value comparison of the schema: exact values by tokens, '>=' floors element by element."""
import pytest

from portkit.tuning import schema


@pytest.mark.parametrize("current,wanted,ok,written", [
    ("4096\t131072\t6291456", "4096 131072 6291456", True, "4096 131072 6291456"),
    ("0", "1", False, "1"),
    (None, "1", False, "1"),
    ("4096", ">=65535", False, "65535"),
    ("131072", ">=65535", True, "131072"),
    ("4096\t87380\t33554432", ">=4096 131072 16777216", False, "4096 131072 33554432"),
    ("8192 262144 33554432", ">=4096 131072 16777216", True, "8192 262144 33554432"),
    ("", ">=100", False, "100"),
])
def test_satisfied_and_target(current, wanted, ok, written):
    assert schema.satisfied(current, wanted) is ok
    assert schema.target(current, wanted) == written


def test_every_sysctl_key_is_a_dotted_proc_path_and_prefixes_are_upper_case():
    for key in schema.SYSCTL:
        assert key.split(".")[0] in {"net", "fs", "vm", "kernel"} and "/" not in key
    assert all(p.isupper() and p.endswith("_") for p in schema.ENV_PREFIXES)
    assert all(k.startswith(schema.ENV_PREFIXES) for k in schema.ENV)
