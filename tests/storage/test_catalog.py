"""The topic catalog alone: topic directories, their topic_id files and ids (spec/storage.md NMQ-S2-5)."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from nanomq.protocol import valid_topic
from nanomq.storage import StorageError, TopicCatalog, TopicLog
from nanomq.storage.catalog import fsync_dir
from tests.storage.helpers import batch

SEG = 1 << 20


def _catalog(root: Path) -> TopicCatalog:
    cat = TopicCatalog(root, is_topic_name=valid_topic)
    cat.recover()
    return cat


def _log_one_record(path: Path, topic_id: int) -> None:
    with TopicLog.open(path, segment_bytes=SEG, fsync="never", topic_id=topic_id) as log:
        log.append_batch(batch([b"x"]), 1, sync=True)


def test_created_topics_come_back_with_their_ids(tmp_path: Path) -> None:
    cat = _catalog(tmp_path)
    made = [cat.create(n) for n in ("b", "a", "c")]
    assert [(s.name, s.topic_id) for s in made] == [("b", 1), ("a", 2), ("c", 3)]
    assert all(s.path == tmp_path / s.name and (s.path / "topic_id").read_text() == f"{s.topic_id}\n" for s in made)
    assert not any(tmp_path.glob("*/topic_id.tmp"))
    again = TopicCatalog(tmp_path, is_topic_name=valid_topic)
    assert [(s.name, s.topic_id) for s in again.recover()] == [("a", 2), ("b", 1), ("c", 3)]  # by name
    assert again.create("d").topic_id == 4  # never an id in use


def test_directories_that_are_not_topics_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "not a topic?").mkdir()
    (tmp_path / "a-file").write_bytes(b"")
    assert _catalog(tmp_path).recover() == []
    assert (tmp_path / "not a topic?").is_dir() and (tmp_path / "a-file").exists()


def test_a_missing_or_garbage_topic_id_is_taken_from_the_first_record(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    cat = _catalog(tmp_path)
    for name in ("gone", "garbage"):
        _log_one_record(cat.create(name).path, 7 if name == "gone" else 9)
    (tmp_path / "gone" / "topic_id").unlink()
    (tmp_path / "garbage" / "topic_id").write_bytes(b"\xff\x00junk")
    with caplog.at_level(logging.ERROR, logger="nanomq.storage"):
        found = {s.name: s.topic_id for s in TopicCatalog(tmp_path, is_topic_name=valid_topic).recover()}
    assert found == {"gone": 7, "garbage": 9}
    assert (tmp_path / "gone" / "topic_id").read_text() == "7\n" and (tmp_path / "garbage" / "topic_id").read_text() == "9\n"
    assert sum("missing or damaged" in r.getMessage() for r in caplog.records) == 2


def test_an_id_with_no_record_to_tell_or_taken_by_another_topic_is_a_fresh_one(tmp_path: Path,
                                                                               caplog: pytest.LogCaptureFixture) -> None:
    cat = _catalog(tmp_path)
    _log_one_record(cat.create("a").path, 1)
    _log_one_record(cat.create("b").path, 1)  # b's records carry a's id
    empty = cat.create("c").path
    TopicLog.open(empty, segment_bytes=SEG, fsync="never").close()  # a log, but no record
    for name in ("b", "c"):
        (tmp_path / name / "topic_id").unlink()
    with caplog.at_level(logging.ERROR, logger="nanomq.storage"):
        found = {s.name: s.topic_id for s in TopicCatalog(tmp_path, is_topic_name=valid_topic).recover()}
    assert found == {"a": 1, "b": 2, "c": 3}  # ids above every id still in use
    why = " ".join(r.getMessage() for r in caplog.records)
    assert "topic b:" in why and "another topic has the id" in why and "topic c:" in why and "no record" in why


def test_an_unfinished_creation_is_removed_but_foreign_files_stay(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "topic_id.tmp").write_bytes(b"1")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_bytes(b"mine")
    assert _catalog(tmp_path).recover() == []
    assert not (tmp_path / "half").exists()
    assert (tmp_path / "busy" / "notes.txt").read_bytes() == b"mine"


def test_a_failed_creation_leaves_nothing_and_keeps_its_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cat = _catalog(tmp_path)

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError, match="cannot create topic x"):
        cat.create("x")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    assert cat.create("x").topic_id == 1


def test_fsync_dir_syncs_a_directory_and_refuses_a_file(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fsync_dir(tmp_path / "f")
