"""tenant_pipelines.files: the one atomic JSON writer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tenant_pipelines.files import write_json_atomic


def test_write_json_atomic_replaces_the_file_whole_and_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_json_atomic(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1} and path.read_text().endswith("}\n")
    assert path.stat().st_mode & 0o777 == 0o600, "private by default"
    write_json_atomic(path, {"b": [1, 2]}, mode=0o644)
    assert json.loads(path.read_text()) == {"b": [1, 2]}
    assert os.listdir(tmp_path) == ["state.json"], "no temporary file left"


def test_write_json_atomic_keeps_the_old_file_when_the_data_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["state.json"]
