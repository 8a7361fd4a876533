"""The streaming sink's files appear whole: a reader never sees one being written."""
import os

import pyarrow as pa
import pyarrow.parquet as pq

from transforms.io import sinks

TABLE = pa.table({"record_id": ["a", "b"], "score": [0.5, -1.0]})


def test_a_file_is_written_under_a_hidden_name_then_renamed_into_place(tmp_path, monkeypatch):
    path = str(tmp_path / "window-x" / "part-1.parquet")
    seen = []
    write = pq.write_table

    def spy(table, where, **kwargs):
        # While the bytes are being written, the final name must not exist yet.
        seen.append((os.path.exists(path), sorted(os.listdir(os.path.dirname(path)))))
        write(table, where, **kwargs)

    monkeypatch.setattr(sinks.pq, "write_table", spy)
    sinks._write_whole(path, TABLE)
    [(final_existed, names)] = seen
    assert not final_existed
    assert len(names) == 1 and names[0].startswith(".part-1.parquet.") and names[0].endswith(".tmp")
    assert os.listdir(os.path.dirname(path)) == ["part-1.parquet"]  # no temporary left behind
    assert pq.read_table(path).equals(TABLE)


def test_rewriting_the_same_file_replaces_it(tmp_path):
    """A retried bundle writes the same name again: the new file replaces the old one."""
    path = str(tmp_path / "part-2.parquet")
    sinks._write_whole(path, TABLE.slice(0, 1))
    sinks._write_whole(path, TABLE)
    assert pq.read_table(path).equals(TABLE)
    assert os.listdir(tmp_path) == ["part-2.parquet"]
