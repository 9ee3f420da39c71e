from __future__ import annotations

import json

import numpy as np
import pytest

from trustlab.core import io


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    io.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with io.atomic_open(target, "w") as fh:
            fh.write('{"a": 2, "half')
            raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind


def test_atomic_write_creates_parents_and_replaces(tmp_path):
    target = tmp_path / "a" / "b" / "x.txt"
    io.atomic_write_text(target, "one")
    io.atomic_write_text(target, "two")
    assert target.read_text() == "two"


def test_json_handles_numpy_and_non_finite(tmp_path):
    path = io.write_json(tmp_path / "m.json", {"x": np.float32(0.5), "v": np.arange(3), "nan": float("nan")})
    assert io.read_json(path) == {"x": 0.5, "v": [0, 1, 2], "nan": None}


def test_manifest_fingerprint_is_content_addressed(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "f.txt").write_text("same")
    ma = io.write_manifest(tmp_path / "a", {"seed": 0}, {"rows": 1})
    mb = io.write_manifest(tmp_path / "b", {"seed": 0}, {"rows": 1})
    assert ma["fingerprint"] == mb["fingerprint"]
    assert ma["files"]["f.txt"] == io.sha256_file(tmp_path / "a" / "f.txt")
    (tmp_path / "b" / "f.txt").write_text("different")
    assert io.write_manifest(tmp_path / "b", {}, {})["fingerprint"] != ma["fingerprint"]


def test_jsonl_and_csv_round_trip(tmp_path):
    rows = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    assert io.read_jsonl(io.write_jsonl(tmp_path / "r.jsonl", rows)) == rows
    assert (io.write_csv(tmp_path / "r.csv", rows)).read_text() == "a,b\n1,x\n2,y\n"


def test_outputs_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from trustlab.core.io import write_json

    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
