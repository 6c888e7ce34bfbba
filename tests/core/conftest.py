"""Installs throw-away plugin distributions the way pip would: a module and a .dist-info
directory with entry_points.txt on sys.path, so importlib.metadata finds them for real."""
import sys
import textwrap

import pytest


@pytest.fixture
def install_plugin(tmp_path, monkeypatch, fresh_runtime):
    """install_plugin(dist, entry_name, module, source, group): source None installs only the entry point."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    modules = []

    def install(dist, entry_name, module, source=None, group="portkit.backends"):
        info = site / f"{dist.replace('-', '_')}-0.1.dist-info"  # dashes escaped, as wheels do
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[{group}]\n{entry_name} = {module}\n")
        if source is not None:
            (site / f"{module}.py").write_text(textwrap.dedent(source))
        modules.append(module)
        fresh_runtime.reset()

    yield install
    for module in modules:
        sys.modules.pop(module, None)

