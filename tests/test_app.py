"""The grounding demo (app.py): its functions, the launched server through gradio_client, and
an end-to-end run in headless Chromium.

All tests use the tiny checkpoint of the ``tiny_run`` fixture (random-ish weights), so they
check behaviour, shapes and coordinate frames, never accuracy. One app process serves the
whole module.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image

from simvg import Grounder

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
TWO_PHRASES = "the red circle\nthe blue square"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def app():
    """app.py imported as a module (it is a script at the repository root, not in the package)."""
    spec = importlib.util.spec_from_file_location("simvg_demo_app", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checkpoint(tiny_run) -> Path:
    return tiny_run / "last"


@pytest.fixture(scope="module")
def cache(app, checkpoint):
    return app.ModelCache({"tiny": checkpoint})


@pytest.fixture(scope="module")
def grounder(checkpoint) -> Grounder:
    return Grounder.from_pretrained(checkpoint, device="cpu")


def scene(width: int, height: int) -> np.ndarray:
    """A grey image with a red square near the top left and a blue bar near the bottom right."""
    pixels = np.full((height, width, 3), 128, np.uint8)
    pixels[height // 8 : height // 3, width // 8 : width // 3] = (220, 30, 30)
    pixels[2 * height // 3 : 7 * height // 8, 3 * width // 5 : 7 * width // 8] = (30, 30, 220)
    return pixels


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """Uploads of every kind the demo must accept (and two it must refuse politely)."""
    folder = tmp_path_factory.mktemp("app_images")
    rgb = scene(200, 120)
    paths = {name: folder / f"{name}.{ext}" for name, ext in [
        ("rgb", "png"), ("grey", "png"), ("rgba", "png"), ("cmyk", "jpg"), ("png16", "png"),
        ("exif", "jpg"), ("huge", "png"), ("empty", "png"), ("corrupt", "png"),
    ]}  # fmt: skip
    Image.fromarray(rgb).save(paths["rgb"])
    Image.fromarray(rgb).convert("L").save(paths["grey"])
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])
    rgba[:10, :10, 3] = 0
    Image.fromarray(rgba, "RGBA").save(paths["rgba"])
    Image.fromarray(rgb).convert("CMYK").save(paths["cmyk"], quality=95)
    grey16 = (rgb.mean(axis=2).astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(paths["png16"])
    # Stored sideways (200 wide, 120 high) with orientation 6: shown upright as 120 x 200.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(paths["exif"], quality=95, exif=exif.tobytes())
    # Wider than the 2048 px decode limit: the boxes must still be in original pixels.
    Image.fromarray(scene(2300, 60)).save(paths["huge"])
    paths["empty"].write_bytes(b"")
    paths["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not really a PNG" * 10)
    # A real photograph (Grace Hopper, shipped with matplotlib, a dependency).
    paths["photo"] = folder / "grace_hopper.jpg"
    paths["photo"].write_bytes(Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes())
    # 12000 x 12000 pixels (144 megapixels: Pillow's own limit would warn of a "decompression bomb").
    giant = Image.new("1", (12000, 12000))
    giant.paste(1, (1000, 2000, 5000, 4000))
    paths["giant"] = folder / "giant.png"
    giant.save(paths["giant"])
    # The source modes the tests rely on.
    assert Image.open(paths["grey"]).mode == "L"
    assert Image.open(paths["rgba"]).mode == "RGBA"
    assert Image.open(paths["cmyk"]).mode == "CMYK"
    assert Image.open(paths["png16"]).mode.startswith("I")
    assert Image.open(paths["exif"]).size == (200, 120)
    return paths


def assert_box_in_image(box, width: int, height: int) -> None:
    x0, y0, x1, y1 = box
    assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height, (box, width, height)


def gr_error_message(func, *args) -> str:
    """The message of the gr.Error that func(*args) raises."""
    import gradio as gr

    with pytest.raises(gr.Error) as info:
        func(*args)
    return info.value.message


# ----------------------------------------------------------------------------- functions


@pytest.fixture(scope="module")
def set_checkpoint(tmp_path_factory) -> Path:
    """A tiny model that answers every phrase with a set of scored boxes (every cell answers:
    ``model.head.num_queries`` > 1), random weights."""
    import torch

    from simvg.config import load_config
    from simvg.engine.checkpoint import save_checkpoint
    from simvg.models import build_model
    from simvg.models.pretrained import load_tokenizer
    from tests.conftest import TINY_CONFIG

    config = load_config(TINY_CONFIG, ["model.head.num_queries=4"])
    tokenizer = load_tokenizer("minilm-l6")
    torch.manual_seed(0)
    model = build_model(config.model, len(tokenizer))
    out = tmp_path_factory.mktemp("set_model") / "ckpt"
    save_checkpoint(out, model, config, model.encoder.backbone_config(), tokenizer)
    return out


def test_a_phrase_with_no_box_above_the_threshold_says_no_match(app, cache, images):
    annotated, payload = app.ground(str(images["rgb"]), TWO_PHRASES, "tiny", "token", cache, answers="all", threshold=1.0)
    assert [p["boxes"] for p in payload["phrases"]] == [[], []] and payload["boxes"] == []
    assert app.result_table(payload).count("no match") == 2
    assert annotated.size == (200, 120)
    # Threshold 0: a one-answer model gives its one box per phrase.
    _, payload = app.ground(str(images["rgb"]), TWO_PHRASES, "tiny", "token", cache, answers="all", threshold=0.0)
    assert [len(p["boxes"]) for p in payload["phrases"]] == [1, 1]


def test_a_model_with_several_answers_draws_every_box_of_a_phrase(app, set_checkpoint, images):
    cache = app.ModelCache({"sets": set_checkpoint})
    # "auto": this model answers with sets, so every box scoring at least the threshold is shown.
    _, payload = app.ground(str(images["rgb"]), TWO_PHRASES, "sets", "token", cache, threshold=0.0)
    assert payload["answers"] == "all"
    for phrase in payload["phrases"]:
        assert len(phrase["boxes"]) > 1
        scores = [found["score"] for found in phrase["boxes"]]
        assert scores == sorted(scores, reverse=True)  # best first
        for found in phrase["boxes"]:
            assert_box_in_image(found["box"], 200, 120)
    table = app.result_table(payload)
    assert table.count("<tr>") == 1 + sum(len(p["boxes"]) for p in payload["phrases"])
    _, best = app.ground(str(images["rgb"]), TWO_PHRASES, "sets", "token", cache, answers="best")
    assert [len(p["boxes"]) for p in best["phrases"]] == [1, 1]
    assert [p["boxes"][0] for p in best["phrases"]] == [p["boxes"][0] for p in payload["phrases"]]


def test_each_phrase_gets_a_box_in_original_pixels(app, cache, grounder, images):
    annotated, payload = app.ground(str(images["rgb"]), " the red square \n\n\nthe blue bar\n", "tiny", "token", cache)
    assert annotated.mode == "RGB" and annotated.size == (200, 120)
    assert payload["model"] == "tiny" and payload["branch"] == "token"
    assert payload["image_size"] == [200, 120]
    assert payload["inference_ms"] > 0
    boxes = payload["boxes"]
    assert [b["text"] for b in boxes] == ["the red square", "the blue bar"]
    assert len({b["color"] for b in boxes}) == 2 and all(re.fullmatch(r"#[0-9a-f]{6}", b["color"]) for b in boxes)
    expected = grounder.predict(str(images["rgb"]), ["the red square", "the blue bar"])
    for got, want in zip(boxes, expected):
        assert len(got["box"]) == 4
        assert_box_in_image(got["box"], 200, 120)
        assert 0.0 <= got["score"] <= 1.0
        assert got["box"] == pytest.approx(want.box, abs=0.01)
        assert got["score"] == pytest.approx(want.score, abs=1e-3)


def test_no_image_is_a_clear_error(app, cache):
    assert "Upload an image" in gr_error_message(app.ground, None, "the red circle", "tiny", "token", cache)
    assert "Upload an image" in gr_error_message(app.ground, "", "the red circle", "tiny", "token", cache)


@pytest.mark.parametrize("text", [None, "", "   ", "\n \t\n  \n"])
def test_empty_phrases_are_a_clear_error(app, cache, images, text):
    message = gr_error_message(app.ground, str(images["rgb"]), text, "tiny", "token", cache)
    assert "at least one phrase" in message


def test_upload_path(app):
    # The click handler gets the image input's unprocessed value (a FileData dict).
    assert app.upload_path({"path": "/tmp/x.png", "orig_name": "x.png", "meta": {"_type": "gradio.FileData"}}) == "/tmp/x.png"
    assert app.upload_path(None) is None
    assert app.upload_path("/tmp/y.png") == "/tmp/y.png"


def test_save_annotated_writes_once_and_atomically(app, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path))
    image = Image.fromarray(scene(40, 30))
    path = Path(app.save_annotated(image))
    assert path.is_file() and path.is_relative_to(tmp_path)
    inode = path.stat().st_ino
    assert Path(app.save_annotated(image.copy())) == path and path.stat().st_ino == inode  # reused, not rewritten
    assert np.array_equal(np.asarray(Image.open(path)), np.asarray(image))
    other = Path(app.save_annotated(Image.fromarray(scene(30, 40))))
    assert other != path and other.is_file()
    assert not [p for p in tmp_path.rglob(".*")]  # no staging files left behind


def test_parse_phrases(app):
    assert app.parse_phrases("  a  \r\n\nb\n") == ["a", "b"]
    many = "\n".join(f"phrase {i}" for i in range(app.MAX_PHRASES + 5))
    with pytest.warns(UserWarning, match=f"Only the first {app.MAX_PHRASES} phrases"):  # gr.Warning outside a request
        assert app.parse_phrases(many) == [f"phrase {i}" for i in range(app.MAX_PHRASES)]


@pytest.mark.parametrize(("kind", "words"), [("empty", "empty (0 bytes)"), ("corrupt", "not a supported image")])
def test_unreadable_files_are_a_clear_error_naming_the_users_file(app, cache, images, kind, words):
    # The server holds the upload under a temporary name; the message names the user's own file.
    message = gr_error_message(app.ground, str(images[kind]), "the red circle", "tiny", "token", cache, "holiday.png")
    assert message.startswith("Cannot read this image (holiday.png)") and words in message
    assert "Traceback" not in message and str(images[kind].parent) not in message


def test_a_photograph_is_flagged_and_synthref_scenes_are_not(app, cache, images):
    # The shipped kind of model knows SynthRef only: on a photo the page says its boxes mean nothing.
    _, payload = app.ground(str(images["photo"]), "the woman\nher tie", "tiny", "token", cache)
    assert payload["notes"] == [app.PHOTO_WARNING]
    assert "does not look like SynthRef" in app.notes_text(payload)
    for example, _ in app.example_rows():
        assert app.looks_like_synthref(np.asarray(Image.open(example).convert("RGB"))), example
    grey = np.asarray(Image.open(images["photo"]).convert("L").convert("RGB"))
    assert not app.looks_like_synthref(grey) and not app.looks_like_synthref(scene(200, 120) // 2 + 60)


def test_a_12000_pixel_image_is_downscaled_and_grounded_with_our_note(app, cache, images, recwarn):
    annotated, payload = app.ground(str(images["giant"]), "the white box", "tiny", "token", cache)
    assert payload["image_size"] == [12000, 12000] and max(annotated.size) == 2048
    assert_box_in_image(payload["boxes"][0]["box"], 12000, 12000)
    assert any("'giant.png' is 12000 × 12000 pixels: it is drawn at 2048 × 2048" in note for note in payload["notes"])
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    assert "decompression" not in json.dumps(payload).lower()


def test_a_too_large_image_gets_our_message(app, cache, images, monkeypatch):
    from simvg.data import images as simvg_images

    monkeypatch.setattr(simvg_images, "MAX_PIXELS", 50_000_000)  # simvg's own limit, checked from the header
    message = gr_error_message(app.ground, str(images["giant"]), "x", "tiny", "token", cache, "scan.png")
    assert message == ("'scan.png' is 12000 × 12000 pixels: too large: the demo reads images up to 50 megapixels "
                       "(e.g. 7071 × 7071). Downscale it and upload it again.")  # fmt: skip
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000_000)  # Pillow refuses beyond twice its own limit
    message = gr_error_message(app.ground, str(images["giant"]), "x", "tiny", "token", cache, "scan.png")
    assert message.startswith("'scan.png' is too large") and "DOS" not in message and "bomb" not in message


def test_the_boxes_table_shows_numbers_per_phrase_and_no_match(app, cache, images):
    _, payload = app.ground(str(images["rgb"]), TWO_PHRASES, "tiny", "token", cache)
    table = app.result_table(payload)
    for found in payload["boxes"]:
        row = "".join(f"<td>{v:.1f}</td>" for v in found["box"]) + f"<td>{found['score']:.2f}</td>"
        assert row in table and found["text"] in table
    assert "Array" not in table and "(200 × 120)" in table
    payload["phrases"][1]["boxes"] = []  # a phrase with no box (generalized grounding)
    assert '<td colspan="5">no match</td>' in app.result_table(payload)


@pytest.mark.parametrize("kind", ["grey", "rgba", "cmyk", "png16", "exif", "huge"])
def test_every_image_kind_is_accepted(app, cache, images, kind):
    annotated, payload = app.ground(str(images[kind]), TWO_PHRASES, "tiny", "token", cache)
    width, height = {"exif": (120, 200), "huge": (2300, 60)}.get(kind, (200, 120))
    assert payload["image_size"] == [width, height]
    assert len(payload["boxes"]) == 2
    for box in payload["boxes"]:
        assert_box_in_image(box["box"], width, height)
    # Drawn on the (possibly downscaled) upright pixels: same orientation as the original.
    assert annotated.mode == "RGB"
    assert (annotated.width >= annotated.height) == (width >= height)
    assert annotated.size == ((2048, 53) if kind == "huge" else (width, height))


def test_exif_rotated_jpeg_is_grounded_upright(app, cache, grounder, images):
    _, payload = app.ground(str(images["exif"]), "the red square", "tiny", "token", cache)
    upright = np.asarray(Image.open(images["exif"]).transpose(Image.Transpose.ROTATE_270).convert("RGB"))
    assert upright.shape == (200, 120, 3)
    want = grounder.predict(upright, "the red square")
    assert payload["boxes"][0]["box"] == pytest.approx(want.box, abs=0.01)


def test_unknown_model_is_a_clear_error(app, cache, images):
    message = gr_error_message(app.ground, str(images["rgb"]), "the red circle", "no such model", "token", cache)
    assert "Unknown model 'no such model'" in message and "tiny" in message
    assert "Unknown model" in gr_error_message(cache.get, "no such model")


def test_model_cache_loads_once_and_drops_the_least_recently_used(app, checkpoint, tmp_path):
    cache = app.ModelCache({"a": checkpoint, "b": checkpoint, "c": checkpoint, "broken": tmp_path}, capacity=2)
    a = cache.get("a")
    assert isinstance(a, Grounder) and cache.get("a") is a
    b = cache.get("b")
    assert cache.get("a") is a  # a is now the most recently used
    cache.get("c")  # evicts b, not a
    assert cache.get("a") is a
    assert cache.get("b") is not b
    assert "Cannot load model 'broken'" in gr_error_message(cache.get, "broken")


def test_missing_decoder_branch_falls_back_to_token(app, cache, images, monkeypatch):
    grounder = cache.get("tiny")
    monkeypatch.setattr(type(grounder), "branches", property(lambda self: ("token",)))
    with pytest.warns(UserWarning, match="no decoder branch"):
        _, payload = app.ground(str(images["rgb"]), "the red square", "tiny", "decoder", cache)
    assert payload["branch"] == "token" and payload["boxes"][0]["branch"] == "token"


def test_find_models(app, checkpoint, tmp_path, monkeypatch):
    for folder, files in [("runs/exp1/best", ["config.json", "model.safetensors"]),
                          ("runs/halfway/best", ["config.json"]),
                          ("checkpoints/student", ["config.json", "model.safetensors"])]:  # fmt: skip
        (tmp_path / folder).mkdir(parents=True)
        for name in files:
            (tmp_path / folder / name).write_text("{}")
    monkeypatch.chdir(tmp_path)
    here = Path.cwd()
    monkeypatch.setattr(app, "DEFAULT_MODEL_DIR", tmp_path / "not-shipped")
    models = app.find_models([str(checkpoint)])
    # --checkpoint first, then complete runs (runs/*/best, named by run) and checkpoints/*.
    assert list(models.items()) == [
        (f"last ({checkpoint})", checkpoint),
        (f"exp1 ({here / 'runs/exp1/best'})", here / "runs/exp1/best"),
        (f"student ({here / 'checkpoints/student'})", here / "checkpoints/student"),
    ]
    (tmp_path / "shipped").mkdir()
    monkeypatch.setattr(app, "DEFAULT_MODEL_DIR", tmp_path / "shipped")
    models = app.find_models([str(checkpoint)])
    assert list(models)[:2] == [f"last ({checkpoint})", app.DEFAULT_NAME] and len(models) == 4
    assert models[app.DEFAULT_NAME] == tmp_path / "shipped"


def test_main_binds_localhost_and_reads_simvg_port(app, checkpoint, monkeypatch, tmp_path):
    launched = {}

    class FakeDemo:
        def launch(self, **kwargs):
            launched.update(kwargs)

    monkeypatch.setattr(app, "build_demo", lambda models: FakeDemo())
    monkeypatch.setenv("SIMVG_PORT", "7999")
    monkeypatch.setattr(sys, "argv", ["app.py", "--checkpoint", str(checkpoint)])
    app.main()
    assert launched["server_name"] == "127.0.0.1" and launched["server_port"] == 7999
    assert launched["show_error"] is True
    monkeypatch.setattr(sys, "argv", ["app.py", "--checkpoint", str(checkpoint.parent / "nope")])
    with pytest.raises(SystemExit, match="checkpoint not found"):
        app.main()
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (run / "best" / name).write_bytes((checkpoint / name).read_bytes())
    (run / "config.json").write_text("{}")  # a training run's folder has a config.json of its own
    monkeypatch.setattr(sys, "argv", ["app.py", "--checkpoint", str(run)])
    with pytest.raises(SystemExit, match=r"missing model.safetensors \(a training run's folder\? its checkpoint is .*best"):
        app.main()


def test_examples_are_valid_and_regenerate_exactly(app, cache, tmp_path):
    rows = app.example_rows()
    assert 3 <= len(rows) <= 4
    assert sum(p.stat().st_size for p in EXAMPLES.iterdir() if p.is_file()) < 300_000
    for image_path, text in rows:
        with Image.open(image_path) as image:
            assert image.format == "PNG" and image.size == (256, 256)
        phrases = text.splitlines()
        assert 1 <= len(phrases) <= 3 and all(p.strip() == p and p for p in phrases)
        _, payload = app.ground(image_path, text, "tiny", "token", cache)
        assert [b["text"] for b in payload["boxes"]] == phrases
        assert payload["notes"] == []  # a SynthRef scene: nothing to warn about
    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.make_examples(tmp_path)
    shipped = sorted(p.name for p in EXAMPLES.iterdir() if p.suffix in (".png", ".txt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == shipped
    for name in shipped:
        assert (tmp_path / name).read_bytes() == (EXAMPLES / name).read_bytes(), name


# ----------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    """``python app.py --checkpoint <tiny> --port <free>``; yields (url, port, process, log file)."""
    port = free_port()
    log = tmp_path_factory.mktemp("app_server") / "app.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("SIMVG_PORT", None)
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "app.py", "--checkpoint", str(checkpoint), "--port", str(port)],
                                   cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"app.py exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/config", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"app.py did not answer on {url} within 120 s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url, port, process, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    from gradio_client import Client

    return Client(server[0], verbose=False, download_files=str(tmp_path_factory.mktemp("client_downloads")))


def test_client_grounds_two_phrases(client, grounder, images):
    from gradio_client import handle_file

    annotated_path, payload = client.predict(handle_file(str(images["rgb"])), TWO_PHRASES, api_name="/ground")
    with Image.open(annotated_path) as annotated:
        assert annotated.size == (200, 120)
    assert payload["image_size"] == [200, 120]
    assert [b["text"] for b in payload["boxes"]] == ["the red circle", "the blue square"]
    expected = grounder.predict(str(images["rgb"]), TWO_PHRASES.splitlines())
    for got, want in zip(payload["boxes"], expected):
        assert_box_in_image(got["box"], 200, 120)
        assert got["box"] == pytest.approx(want.box, abs=1.0)


def test_client_exif_jpeg_is_upright(client, images):
    from gradio_client import handle_file

    annotated_path, payload = client.predict(handle_file(str(images["exif"])), "the red circle", api_name="/ground")
    assert payload["image_size"] == [120, 200]
    assert Image.open(annotated_path).size == (120, 200)
    assert_box_in_image(payload["boxes"][0]["box"], 120, 200)


def test_client_errors_carry_the_apps_message(app, client, images):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    empty_phrase = gr_error_message(app.parse_phrases, "  ")
    with pytest.raises(AppError) as info:
        client.predict(handle_file(str(images["rgb"])), "  \n ", api_name="/ground")
    assert str(info.value) == empty_phrase
    # Unreadable uploads fail inside ground() with its message, not in Gradio's preprocessing.
    for kind, words in [("empty", "empty (0 bytes)"), ("corrupt", "not a supported image")]:
        with pytest.raises(AppError) as info:
            client.predict(handle_file(str(images[kind])), "the red circle", api_name="/ground")
        assert str(info.value).startswith(f"Cannot read this image ({kind}.png)") and words in str(info.value), kind
        assert "Could not preprocess" not in str(info.value)
        assert "simvg-gradio" not in str(info.value) and "/tmp" not in str(info.value)  # no server path


def test_client_giant_image_is_grounded_without_pillows_warning(client, server, images):
    from gradio_client import handle_file

    _, payload = client.predict(handle_file(str(images["giant"])), "the white box", api_name="/ground")
    assert payload["image_size"] == [12000, 12000]
    assert any("'giant.png' is 12000 × 12000 pixels" in note for note in payload["notes"])
    assert "decompression bomb" not in server[3].read_text().lower()


def test_concurrent_identical_requests_all_get_complete_images(server, images, tmp_path):
    """Identical results of concurrent requests share one cache file; none may arrive truncated."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file

    def one_client(index: int) -> list[tuple[int, int]]:
        client = Client(server[0], verbose=False, download_files=str(tmp_path / str(index)))
        sizes = []
        for _ in range(3):
            annotated_path, _ = client.predict(handle_file(str(images["rgb"])), "the red square", api_name="/ground")
            with Image.open(annotated_path) as annotated:
                annotated.load()  # a truncated download fails here (or in predict)
                sizes.append(annotated.size)
        return sizes

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one_client, range(6)))
    assert results == [[(200, 120)] * 3] * 6


def listening_addresses(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.append(address)
    return found


def test_server_binds_localhost_only(server):
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp")
    assert listening_addresses(server[1]) == ["0100007F"]  # 127.0.0.1, nothing on 0.0.0.0 or ::


# ----------------------------------------------------------------------------- the browser


def screenshot_module():
    spec = importlib.util.spec_from_file_location("app_screenshot", ROOT / "bench" / "app_screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.browser
@pytest.mark.timeout(240)
def test_browser_end_to_end(server, grounder, images):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (make browser) for the end-to-end test")
    from playwright.sync_api import sync_playwright

    shots = screenshot_module()
    upload = images["rgb"].with_name("browser_upload_scene.png")
    upload.write_bytes(shots.DEFAULT_IMAGE.read_bytes())  # a SynthRef scene, uploaded
    phrases = ["cyan circle", "the orange circle"]
    want = grounder.predict(str(upload), phrases)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            # An upload and two phrases: the table holds each box as numbers.
            rows = shots.ground_in_browser(page, server[0], upload, phrases)
            page.screenshot(path=str(ARTIFACTS / "app_e2e.png"), full_page=True)
            assert "Array(" not in page.locator("body").inner_text()
            assert page.locator("#notes").inner_text().strip() == ""  # a SynthRef scene: no warning
            # A real photograph: the page says this model knows SynthRef only.
            photo_rows = shots.ground_in_browser(page, server[0], images["photo"], ["the woman"])
            page.locator("#notes", has_text="does not look like SynthRef").wait_for()
            page.screenshot(path=str(ARTIFACTS / "app_e2e_photo.png"), full_page=True)
            assert "real photographs" in page.locator("#model-card").inner_text()
            # A SynthRef example, picked from the examples: grounded, no warning.
            page.get_by_text("the blue triangle").first.click()
            page.wait_for_function("document.querySelector('textarea').value.startsWith('the blue triangle')")
            page.get_by_role("button", name="Ground", exact=True).click()
            page.locator("#boxes-table td", has_text="the lower of the two big blue shapes").wait_for()
            page.wait_for_function("document.querySelector('#notes').innerText.trim() === ''")
            # Every box scoring at least the threshold; at 1.0 nothing does: "no match".
            page.get_by_label("every box scoring at least the threshold").check()
            page.locator("#threshold input[type=number]").fill("1")
            page.locator("#threshold input[type=number]").press("Enter")
            page.get_by_role("button", name="Ground", exact=True).click()
            page.locator("#boxes-table td", has_text="no match").first.wait_for()
        finally:
            browser.close()
    assert [row[1] for row in rows] == phrases and [row[0] for row in rows] == ["1", "2"]
    for row, result in zip(rows, want):
        assert [float(v) for v in row[2:6]] == pytest.approx(result.box, abs=0.06)  # shown to 0.1 pixel
        assert float(row[6]) == pytest.approx(result.score, abs=0.006)
    assert len(photo_rows) == 1 and (ARTIFACTS / "app_e2e.png").stat().st_size > 0


@pytest.mark.browser
@pytest.mark.timeout(240)
def test_the_screenshot_script_captures_the_app(server, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (make browser) for the end-to-end test")
    shots = screenshot_module()
    out = tmp_path / "demo.png"
    rows = shots.capture(server[0], shots.DEFAULT_IMAGE, shots.DEFAULT_PHRASES, out)
    assert [row[1] for row in rows] == shots.DEFAULT_PHRASES
    with Image.open(out) as image:
        assert image.size == (1280, 900)


@pytest.mark.browser
@pytest.mark.timeout(240)
def test_the_shipped_model_answers_none_one_or_several_in_the_browser(tmp_path):
    """The demo as `make demo` serves it (the shipped model, no --checkpoint): "all the stars"
    gets a box on each of the example's three stars, "the purple square" (there is none) gets
    "no match"."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (make browser) for the end-to-end test")
    shots = screenshot_module()
    port = shots.free_port()
    process = shots.start_app(None, port, tmp_path / "app.log")
    try:
        rows = shots.capture(f"http://127.0.0.1:{port}", shots.DEFAULT_IMAGE, shots.DEFAULT_PHRASES, tmp_path / "demo.png")
    finally:
        process.terminate()
        process.wait(timeout=15)
    by_phrase = {phrase: [row[2:] for row in rows if row[1] == phrase] for phrase in shots.DEFAULT_PHRASES}
    stars, furthest, purple = (by_phrase[phrase] for phrase in shots.DEFAULT_PHRASES)
    assert len(stars) == 3 and all(float(row[4]) >= 0.7 for row in stars), rows
    centres = sorted(((float(r[0]) + float(r[2])) / 2, (float(r[1]) + float(r[3])) / 2) for r in stars)
    flat = [v for centre in centres for v in centre]
    assert flat == pytest.approx([89, 23, 179, 112, 227, 170], abs=8), rows  # the example's three stars
    assert len(furthest) == 1 and furthest[0][0] != "no match", rows
    assert purple == [["no match"]], rows
