"""Run parts of the official S+S+C code (fgirbal/segment-select-correct, GPL) as an oracle.

Nothing of it is copied into sssc: :func:`load` extracts the files the checks import from a
local clone into a scratch folder, adds stand-ins for four packages those files import but the
checks do not use (``timm``'s DropPath and two helpers, ``mmseg``'s logger, ``skimage.io``,
NLTK) or that open_clip provides (``clip.tokenize``), and
puts the folder first on ``sys.path``. Give the clone as ``SSC_REPO`` (a working tree, or a bare
or mirrored git directory, read with ``git show HEAD:<path>``).
"""

from __future__ import annotations

import ast
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

FILES = [
    "ssc_ris/refer_dataset/__init__.py",
    "ssc_ris/refer_dataset/dataset.py",
    "ssc_ris/refer_dataset/unsupervised_dataset.py",
    "ssc_ris/refer_dataset/utils.py",
    "ssc_ris/refer_dataset/refer/refer.py",
    "ssc_ris/refer_dataset/bert/__init__.py",
    "ssc_ris/refer_dataset/bert/activations.py",
    "ssc_ris/refer_dataset/bert/configuration_bert.py",
    "ssc_ris/refer_dataset/bert/configuration_utils.py",
    "ssc_ris/refer_dataset/bert/file_utils.py",
    "ssc_ris/refer_dataset/bert/generation_utils.py",
    "ssc_ris/refer_dataset/bert/modeling_bert.py",
    "ssc_ris/refer_dataset/bert/modeling_utils.py",
    "ssc_ris/refer_dataset/bert/tokenization_bert.py",
    "ssc_ris/refer_dataset/bert/tokenization_utils.py",
    "ssc_ris/refer_dataset/bert/tokenization_utils_base.py",
    "ssc_ris/segment/segment_fns.py",
    "ssc_ris/segment/_utils.py",
    "ssc_ris/select/utils.py",
    "ssc_ris/select/clip_sim.py",
    "ssc_ris/select/visual_prompting_fns.py",
    "ssc_ris/correct/__init__.py",
    "ssc_ris/correct/loss.py",
    "ssc_ris/correct/loss_utils.py",
    "ssc_ris/utils/transforms.py",
    "ssc_ris/utils/lavt_lib/_utils.py",
    "ssc_ris/utils/lavt_lib/backbone.py",
    "ssc_ris/utils/lavt_lib/mask_predictor.py",
    "ssc_ris/utils/lavt_lib/lavt_utils.py",
]

STANDINS = {
    # Empty packages: the official files are imported one by one, not through their __init__.
    "ssc_ris/__init__.py": "",
    "ssc_ris/select/__init__.py": "",
    "ssc_ris/segment/__init__.py": "",
    "ssc_ris/utils/lavt_lib/__init__.py": "",
    "ssc_ris/refer_dataset/refer/__init__.py": "",
    # Pretrained-weight loading, which the checks never do (it needs mmcv).
    "ssc_ris/utils/lavt_lib/mmcv_custom/__init__.py": (
        "def load_checkpoint(*args, **kwargs):\n"
        "    raise RuntimeError('oracle stand-in: no pretrained loading')\n"
    ),
    "mmseg/__init__.py": "",
    "mmseg/utils.py": (
        "import logging\n\n\ndef get_root_logger(*args, **kwargs):\n"
        "    return logging.getLogger('oracle')\n"
    ),
    # OpenAI's clip package: the official Stage 2 uses its BPE tokenizer, which open_clip ships.
    "clip/__init__.py": "from open_clip import tokenize  # noqa: F401\n",
    "skimage/__init__.py": "",
    "skimage/io.py": "",  # REFER imports it for showing images only
    "timm/__init__.py": "",
    "timm/models/__init__.py": "",
    "timm/models/layers.py": (
        "import collections.abc\n\nimport torch.nn as nn\n"
        "from torch.nn.init import trunc_normal_  # noqa: F401\n\n\n"
        "def to_2tuple(x):\n"
        "    return tuple(x) if isinstance(x, collections.abc.Iterable) else (x, x)\n\n\n"
        "class DropPath(nn.Module):  # the checks run the model in eval mode only\n"
        "    def __init__(self, p=0.0):\n        super().__init__()\n\n"
        "    def forward(self, x):\n"
        "        assert not self.training, 'oracle stand-in: eval only'\n"
        "        return x\n"
    ),
}


def _read(repo: Path, path: str) -> str:
    if (repo / path).is_file():
        return (repo / path).read_text()
    return subprocess.run(
        ["git", f"--git-dir={repo}", "show", f"HEAD:{path}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def scratch(prefix: str) -> Path:
    """A new temporary folder, removed when the script exits."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _repo() -> Path:
    repo = os.environ.get("SSC_REPO")
    if not repo:
        sys.exit(
            "set SSC_REPO to a clone of https://github.com/fgirbal/segment-select-correct "
            "(a working tree or a git directory)"
        )
    repo_path = Path(repo)
    if (repo_path / ".git").is_dir():
        repo_path = repo_path / ".git" if not (repo_path / FILES[0]).is_file() else repo_path
    return repo_path


def script_function(path: str, name: str, namespace: dict) -> Callable:
    """The top-level function ``name`` of the official script ``path`` (e.g. ``evaluate`` of
    ``scripts/train/test_model.py``), compiled alone into ``namespace`` (the names it reads), so
    that the script's other imports (its model, its argument parser) are not needed."""
    src = _read(_repo(), path)
    (node,) = [n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == name]
    code = "\n" * (node.lineno - 1) + ast.get_source_segment(src, node)  # keep line numbers
    exec(compile(code, f"official:{path}", "exec"), namespace)
    return namespace[name]


def load(scratch_dir: str | Path | None = None) -> Path:
    """Extract the official files into ``scratch_dir`` (by default a temporary folder removed at
    exit) and put it first on ``sys.path``; returns the folder."""
    repo_path = _repo()
    out = Path(scratch_dir) if scratch_dir else scratch("sssc-oracle-")
    for path in FILES:
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_text(_read(repo_path, path))
    for path, text in STANDINS.items():
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_text(text)
    sys.path.insert(0, str(out))
    return out
