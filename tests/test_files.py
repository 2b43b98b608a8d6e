"""Result files: written atomically, with the permissions the user's umask asks for."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from fedshield import files
from fedshield.files import write_csv, write_json, write_npy, write_text


@pytest.fixture
def set_umask():
    """Set the process umask for one test, restoring the previous one afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o027])
def test_result_files_get_the_mode_the_umask_allows(tmp_path, set_umask, umask):
    set_umask(umask)
    writers = {
        "a.txt": lambda path: write_text(path, "x"),
        "a.json": lambda path: write_json(path, {"a": 1}),
        "a.csv": lambda path: write_csv(path, ["a"], [[1]]),
        "a.npy": lambda path: write_npy(path, np.arange(3)),
    }
    for name, write in writers.items():
        write(tmp_path / name)
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def test_reading_the_umask_leaves_it_unchanged(set_umask):
    set_umask(0o027)
    assert files.current_umask() == 0o027
    assert files.current_umask() == 0o027
