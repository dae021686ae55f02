"""gpusim.errors.read_text reads gzip'd files: a ``.gz`` path, or ``<path>.gz`` where the
plain file is absent (committed serving runs store requests.jsonl.gz and steps.csv.gz);
damaged, truncated and oversize archives get one ConfigError, never a traceback."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from gpusim.errors import ConfigError, read_text
from gpusim.io.trace import read_trace

TEXT = "arrival_s,prompt_tokens,output_tokens\n0.0,10,5\n0.5,20,3\n"


def test_plain_name_falls_back_to_gz(tmp_path: Path) -> None:
    (tmp_path / "t.csv.gz").write_bytes(gzip.compress(TEXT.encode()))
    assert read_text(tmp_path / "t.csv") == TEXT
    assert read_text(tmp_path / "t.csv.gz") == TEXT


def test_plain_file_wins_over_gz(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("plain\n")
    (tmp_path / "t.csv.gz").write_bytes(gzip.compress(b"packed\n"))
    assert read_text(tmp_path / "t.csv") == "plain\n"


def test_a_trace_reads_from_its_gz(tmp_path: Path) -> None:
    (tmp_path / "trace.csv.gz").write_bytes(gzip.compress(TEXT.encode()))
    tr = read_trace(tmp_path / "trace.csv")
    assert list(tr.prompt_tokens) == [10, 20]


@pytest.mark.parametrize("data, why", [
    (b"not gzip at all", "damaged gzip"),
    (gzip.compress(TEXT.encode())[:-12], "damaged gzip"),      # truncated
])
def test_damaged_gzip_is_one_error(tmp_path: Path, data: bytes, why: str) -> None:
    (tmp_path / "t.csv.gz").write_bytes(data)
    with pytest.raises(ConfigError, match=why):
        read_text(tmp_path / "t.csv")


def test_oversize_after_decompression_is_refused(tmp_path: Path) -> None:
    (tmp_path / "t.csv.gz").write_bytes(gzip.compress(b"x" * 5000))
    with pytest.raises(ConfigError, match="decompressed"):
        read_text(tmp_path / "t.csv", limit_bytes=4096)


def test_missing_file_names_the_plain_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        read_text(tmp_path / "absent.csv")
