"""The History: the SQLite index of outputs/, its search, reconciliation, rebuild, trash, the API route and the
tab's handlers."""
from __future__ import annotations

import os
import time

import pytest
from PIL import Image, PngImagePlugin

from modules.errors import UserInputError
from modules.history import index


def write_png(path, prompt: str, seed: int, negative: str = "", model: str = "tiny", sampler: str = "Euler",
              size=(64, 64), when: float | None = None) -> str:
    text = f"{prompt}\nNegative prompt: {negative}\nSteps: 4, Sampler: {sampler}, CFG scale: 7, Seed: {seed}, " \
           f"Size: {size[0]}x{size[1]}, Model: {model}, Version: v1.10.1"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (8, 8), (seed % 255, 0, 0)).save(path, pnginfo=info)
    if when is not None:
        os.utime(path, (when, when))
    return str(path)


@pytest.fixture()
def library(tmp_path):
    root = tmp_path / "outputs"
    day = time.mktime((2026, 11, 30, 12, 0, 0, 0, 0, -1))
    files = [
        write_png(root / "txt2img-images" / "a.png", "a red cat on a sofa", 1, negative="blurry", when=day - 86400 * 3),
        write_png(root / "txt2img-images" / "b.png", "two cats in the snow", 2, model="dreamy-v2", when=day - 86400),
        write_png(root / "img2img-images" / "c.png", "a lighthouse at dusk", 3, sampler="Euler a", size=(512, 768),
                  when=day),
    ]
    history = index.HistoryIndex(str(tmp_path / "cache" / "history.sqlite3"), str(root))
    assert history.reconcile() == (3, 0)
    return history, root, files


def _paths(result) -> list[str]:
    return [os.path.basename(entry.path) for entry in result[1]]


def test_search_by_words_and_fields_newest_first(library):
    history, _, _ = library
    assert _paths(history.search("")) == ["c.png", "b.png", "a.png"]
    assert _paths(history.search("cat")) == ["b.png", "a.png"]  # a prefix: "cats" too
    assert _paths(history.search("red cat")) == ["a.png"]
    assert _paths(history.search("neg:blurry")) == ["a.png"]
    assert _paths(history.search("seed:2")) == ["b.png"]
    assert _paths(history.search("model:dreamy")) == ["b.png"]
    assert _paths(history.search('sampler:"euler a"')) == ["c.png"]
    assert _paths(history.search("size:512x768")) == ["c.png"]
    assert _paths(history.search("date:2026-11-29")) == ["b.png"]
    assert _paths(history.search("after:2026-11-29 cat")) == ["b.png"]
    assert _paths(history.search('"quoted" OR cat*')) == []  # no FTS operators from the user: plain words
    total, page = history.search("", page=2, per_page=2)
    assert total == 3 and [os.path.basename(e.path) for e in page] == ["a.png"]
    entry = history.entry(os.path.join(library[1], "img2img-images", "c.png"))
    assert (entry.prompt, entry.seed, entry.width, entry.height) == ("a lighthouse at dusk", "3", 512, 768)
    with pytest.raises(UserInputError, match="date:yesterday is not a date"):
        history.search("date:yesterday")


def test_files_added_or_removed_by_hand_are_noticed(library):
    history, root, files = library
    os.remove(files[0])
    write_png(root / "extras-images" / "d.png", "a mountain", 4)
    (root / "notes.txt").write_text("not an image")
    assert history.reconcile() == (1, 1)
    assert sorted(_paths(history.search(""))) == ["b.png", "c.png", "d.png"]
    assert history.reconcile() == (0, 0)  # nothing changed since


def test_a_damaged_index_is_set_aside_and_rebuilt(library):
    history, _, _ = library
    with open(history.db_path, "wb") as f:
        f.write(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(history.db_path + suffix):
            os.remove(history.db_path + suffix)
    assert _paths(history.search("cat")) == ["b.png", "a.png"]  # rebuilt from the folder on first use
    assert os.path.exists(history.db_path + ".damaged")


def test_move_to_trash_keeps_the_file_and_its_place(library, tmp_path):
    history, root, files = library
    trash = tmp_path / "trash"
    (root / "txt2img-images" / "a.txt").write_text("sidecar")
    target = history.move_to_trash(files[0], str(trash))
    assert target == str(trash / "txt2img-images" / "a.png") and os.path.isfile(target)
    assert (trash / "txt2img-images" / "a.txt").read_text() == "sidecar"
    assert not os.path.exists(files[0]) and _paths(history.search("red")) == []
    with pytest.raises(UserInputError, match="is not an image of the history"):
        history.move_to_trash(str(tmp_path / "elsewhere.png"), str(trash))
    with pytest.raises(UserInputError):
        history.move_to_trash(os.path.join(str(root), "..", "..", "etc", "passwd"), str(trash))


def test_saved_images_are_recorded_and_the_api_and_tab_find_them(tiny_model, data_dir, monkeypatch):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from modules.api.api import Api
    from tests.conftest import txt2img
    from webui.tabs import history as history_tab

    result = txt2img(prompt="an orange zeppelin", seed=777, do_not_save_samples=False)
    saved = result.images[0].already_saved_as
    app = FastAPI()
    Api(app)
    answer = TestClient(app).get("/sdapi/v1/history", params={"query": "zeppelin seed:777"}).json()
    assert answer["total"] == 1 and answer["items"][0]["path"] == saved
    assert answer["items"][0]["infotext"] == result.infotexts[0] and answer["items"][0]["seed"] == "777"

    gallery, status, page, paths = history_tab.search("zeppelin", 1)
    assert paths == [saved] and gallery[0][0] == saved and "1 image · page 1 of 1" in status
    selected = history_tab.select(paths, type("Event", (), {"index": 0})())
    assert selected[0] == saved and selected[2] == result.infotexts[0] and "an orange zeppelin" in selected[1]
    monkeypatch.setattr(history_tab.shared.cmd_opts, "webui_is_non_local", True, raising=False)
    refused = history_tab.move_to_trash(saved, "zeppelin", 1)
    assert "only on a loopback server" in refused[1] and os.path.exists(saved)
    monkeypatch.setattr(history_tab.shared.cmd_opts, "webui_is_non_local", False)
    moved = history_tab.move_to_trash(saved, "zeppelin", 1)
    assert "Moved to" in moved[1] and not os.path.exists(saved)
    assert os.path.exists(os.path.join(str(data_dir), "trash", os.path.relpath(saved, index.history().root)))
