"""Generated docs stay in step with the registry and the layout."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_catalogue_matches_registry() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "update_docs.py"), "--check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_architecture_names_every_room() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    pkg = ROOT / "src" / "blockzoo"
    rooms = [p.name for p in pkg.iterdir() if p.is_dir() and not p.name.startswith("__")]
    rooms += [p.name for p in pkg.glob("*.py") if p.name != "__main__.py"]
    missing = [r for r in rooms if r not in text]
    assert not missing, f"docs/architecture.md does not mention {missing}"


def test_readme_quickstart_runs() -> None:
    """The first Python block of the README runs as written (bar the commented error)."""
    import re

    text = (ROOT / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert tuple(namespace["y"].shape) == (4, 3)
    err = re.search(r"# (blockzoo\.ShapeError: .*)", code).group(1)
    import pytest
    import torch

    import blockzoo

    with pytest.raises(blockzoo.ShapeError) as info:
        blockzoo.create("mlp", in_features=8)(torch.randn(4, 9))
    assert f"blockzoo.ShapeError: {info.value}" == err


def test_catalogue_page_is_fresh() -> None:
    """docs/catalogue.md lists every registered entry with params and FLOPs, as generated."""
    import importlib.util

    import blockzoo

    spec = importlib.util.spec_from_file_location("update_docs", ROOT / "scripts" / "update_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = (ROOT / "docs" / "catalogue.md").read_text()
    assert text == mod.catalogue_page(), "docs/catalogue.md is stale: run `make docs`"
    for name in blockzoo.list_blocks():
        assert f"| {name} |" in text


def test_readme_own_network_block_runs(tmp_path, monkeypatch) -> None:
    """The "Your own network" Python block runs as written: fit, layer table, ONNX equal to eager."""
    import re

    import pytest
    import torch

    pytest.importorskip("onnxruntime")
    text = (ROOT / "README.md").read_text()
    section = text.split("## Your own network", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert 0.0 <= namespace["result"].test["acc"] <= 1.0
    net, x = namespace["net"], namespace["x"]
    with torch.no_grad():
        want = net(x)
    assert torch.allclose(torch.as_tensor(namespace["onnx_logits"]), want, atol=1e-5)
    assert (tmp_path / "my_net.onnx").exists()
