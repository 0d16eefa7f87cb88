"""docs/tutorial.md runs: its ```python blocks are executed in order, in one namespace, at smaller sizes.

The sizes are shrunk by explicit text replacements; each must be found in the
page, so that the page and this test cannot drift apart silently.
"""

import os
import re

import pytest

TUTORIAL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "tutorial.md")

# (text in the page, what the test runs instead): the same code on a smaller problem.
SMALLER = [
    ("EPOCHS, WARMUP, C = 15, 3, 10", "EPOCHS, WARMUP, C = 4, 2, 10"),
    ("SimulationConfig(noise=0.4, seed=1)", "SimulationConfig(noise=0.4, seed=1, n=200, m=40, p=100, steps=300, "
                                            "perturb_draws=1)"),
    ("SimulationConfig(noise=0.0, seed=1)", "SimulationConfig(noise=0.0, seed=1, n=200, m=40, p=100, steps=300, "
                                            "perturb_draws=1)"),
]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


@pytest.mark.usefixtures("one_torch_thread")  # restores torch's thread count, which the page sets to 1
def test_python_blocks_run_in_order(tmp_path, monkeypatch, capsys):
    import matplotlib
    import torch

    matplotlib.use("Agg")
    with open(TUTORIAL) as handle:
        text = handle.read()
    blocks = python_blocks(text)
    assert len(blocks) >= 8
    source = "\n".join(blocks)
    for original, smaller in SMALLER:
        assert source.count(original) == 1, f"the tutorial no longer contains {original!r}"
        source = source.replace(original, smaller)
    monkeypatch.chdir(tmp_path)  # the page writes a figure into the current directory
    namespace = {"__name__": "tutorial"}
    with torch.random.fork_rng():  # the page seeds torch's global generator
        exec(compile(source, "docs/tutorial.md (its python blocks, joined)", "exec"), namespace)
    printed = capsys.readouterr().out
    assert (tmp_path / "my-first-run.png").stat().st_size > 0
    for expected in ("ReweightResult(n=1197", "surrogate ", "meta ", "alignment", "filtering", "empty",
                     "Boundaries (steps): T_align="):
        assert expected in printed, expected
    # The page's claims about Part 1 that hold at any size: the filters keep mostly clean examples.
    result, noisy = namespace["result"], namespace["noisy"]
    assert 1 - noisy[result.weights > 0].mean() > 0.75


def test_bash_blocks_name_real_commands():
    with open(TUTORIAL) as handle:
        text = handle.read()
    commands = re.findall(r"^```bash\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    assert commands and all("python -m phases." in command for command in commands)


@pytest.mark.parametrize("name", ["theory.md"])
def test_links_resolve(name):
    assert os.path.isfile(os.path.join(os.path.dirname(TUTORIAL), name))
