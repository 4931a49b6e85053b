"""The grounding demo: upload an image, type phrases (one per line), see a box for each.

    python app.py [--checkpoint DIR ...] [--host 127.0.0.1] [--port 7860]

A thin Gradio layer over :class:`simvg.Grounder`. The default model is the distilled
SynthRef student shipped in the package; teacher runs found under ``runs/*/best`` and
``checkpoints/*`` and any ``--checkpoint`` directory are offered in the model picker. The
grounding function is also the API endpoint ``/ground`` (image, phrases) -> (annotated
image, boxes).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

import gradio as gr

from simvg import Grounder
from simvg.data.dataset import PhraseError
from simvg.data.images import ImageReadError, load_image
from simvg.engine.checkpoint import CheckpointError, resolve_checkpoint
from simvg.visualize import box_color, draw_boxes
from simvg.weights import DEFAULT_MODEL_DIR

ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "examples"
MAX_PHRASES = 10
MAX_UPLOAD = "20mb"
DEFAULT_NAME = "SynthRef student (shipped)"


def find_models(extra: list[str] | None = None) -> dict[str, Path]:
    """Display name -> checkpoint directory: the shipped student, then teachers on disk,
    then the directories given with --checkpoint (those first in the picker's order)."""
    models: dict[str, Path] = {}
    for path in extra or []:
        models[f"{Path(path).name} ({path})"] = Path(path)
    if DEFAULT_MODEL_DIR.is_dir():
        models[DEFAULT_NAME] = DEFAULT_MODEL_DIR
    for pattern in ("runs/*/best", "checkpoints/*"):
        for path in sorted(Path.cwd().glob(pattern)):
            if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
                models.setdefault(f"{path.parent.name if path.name == 'best' else path.name} ({path})", path)
    return models


class ModelCache:
    """Loaded Grounders, least recently used dropped first; one lock per load."""

    def __init__(self, models: dict[str, Path], capacity: int = 2):
        self.models = models
        self.capacity = capacity
        self._loaded: OrderedDict[str, Grounder] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str) -> Grounder:
        if name not in self.models:
            raise gr.Error(f"Unknown model '{name}'. Choose one of: {', '.join(self.models)}")
        with self._lock:
            if name not in self._loaded:
                try:
                    self._loaded[name] = Grounder.from_pretrained(self.models[name], device="cpu")
                except (CheckpointError, FileNotFoundError, ValueError) as err:
                    raise gr.Error(f"Cannot load model '{name}': {err}") from err
                while len(self._loaded) > self.capacity:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(name)
            return self._loaded[name]


def parse_phrases(text: str | None) -> list[str]:
    """One phrase per non-empty line."""
    phrases = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not phrases:
        raise gr.Error("Type at least one phrase, e.g. 'the red circle' (one phrase per line).")
    if len(phrases) > MAX_PHRASES:
        gr.Warning(f"Only the first {MAX_PHRASES} phrases are grounded.")
        phrases = phrases[:MAX_PHRASES]
    return phrases


def ground(image_path: str | None, phrases_text: str | None, model_name: str, branch: str, cache: ModelCache):
    """Ground every phrase in the image; returns (annotated PIL image, result dict)."""
    if not image_path:
        raise gr.Error("Upload an image first (or pick an example).")
    phrases = parse_phrases(phrases_text)
    grounder = cache.get(model_name)
    if branch not in grounder.branches:
        gr.Warning(f"This model has no {branch} branch; using the token branch.")
        branch = "token"
    try:
        image = load_image(image_path)
        start = time.perf_counter()
        results = grounder.predict(image.pixels if image.pixels.shape[1] == image.width else image_path, phrases, branch=branch)
        elapsed_ms = 1000 * (time.perf_counter() - start)
    except (ImageReadError, FileNotFoundError) as err:
        raise gr.Error(f"Cannot read this image: {err}") from err
    except PhraseError as err:
        raise gr.Error(str(err)) from err
    labels = [f"{i + 1}. {r.text} ({r.score:.2f})" for i, r in enumerate(results)]
    annotated = draw_boxes(image.pixels, results, scale=image.pixels.shape[1] / image.width, labels=labels)
    payload = {
        "model": model_name,
        "branch": branch,
        "image_size": [image.width, image.height],
        "inference_ms": round(elapsed_ms, 1),
        "boxes": [
            {**r.to_dict(), "color": "#{:02x}{:02x}{:02x}".format(*box_color(i))} for i, r in enumerate(results)
        ],
    }
    return annotated, payload


def upload_path(payload: dict | str | None) -> str | None:
    """The uploaded file's path from the image input's unprocessed value (a FileData dict).

    The click handler skips Gradio's preprocessing, which opens the upload with PIL and
    fails on an empty or corrupt file with a trace-like "Could not preprocess" error;
    :func:`ground` reads the file itself and says what is wrong with it."""
    return payload.get("path") if isinstance(payload, dict) else payload


def save_annotated(image) -> str:
    """Write the annotated image as a PNG file, atomically, and return its path.

    Gradio stores a returned PIL image in its content-addressed cache with a plain rewrite of
    the file, so when concurrent requests produce the same image (the same example grounded
    twice) a client still downloading the earlier copy receives a truncated file. A returned
    path is instead copied into the cache atomically (and reused when identical)."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    data = buffer.getvalue()
    folder = Path(os.environ["GRADIO_TEMP_DIR"]) / "annotated" / hashlib.sha256(data).hexdigest()
    path = folder / "grounded.png"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(dir=folder, prefix=".grounded.", suffix=".png")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(staging, path)
    return str(path)


def timing_text(payload: dict | None) -> str:
    if not payload:
        return ""
    n = len(payload["boxes"])
    return f"**{payload['inference_ms']:.0f} ms** for {n} phrase{'s' if n != 1 else ''} on the CPU ({payload['model']}, {payload['branch']} branch)"


def example_rows() -> list[list[str]]:
    rows = []
    for image in sorted(EXAMPLES_DIR.glob("*.png")):
        phrases = image.with_suffix(".txt")
        rows.append([str(image), phrases.read_text().strip() if phrases.is_file() else ""])
    return rows


def build_demo(models: dict[str, Path]) -> gr.Blocks:
    if not models:
        raise SystemExit("no model found: pass --checkpoint DIR (a directory with config.json and model.safetensors)")
    cache = ModelCache(models)
    names = list(models)
    with gr.Blocks(title="simvg grounding demo") as demo:
        gr.Markdown(
            "# simvg: visual grounding\nUpload an image, write one phrase per line "
            "(e.g. *the small red circle left of the blue square*), and press **Ground**."
        )
        model_state = gr.State(names[0])
        branch_state = gr.State("token")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image", type="filepath", image_mode=None, sources=["upload", "clipboard"])
                phrases = gr.Textbox(label="Phrases (one per line)", lines=4, placeholder="the red circle\nthe star below the blue square")
                with gr.Row():
                    model = gr.Dropdown(names, value=names[0], label="Model")
                    branch = gr.Radio(["token", "decoder"], value="token", label="Branch",
                                      info="token: fastest; decoder: teachers only")  # fmt: skip
                run = gr.Button("Ground", variant="primary")
            with gr.Column():
                annotated = gr.Image(label="Grounded", type="pil", format="png", elem_id="grounded-image")
                timing = gr.Markdown(elem_id="timing")
                boxes = gr.JSON(label="Boxes (x0, y0, x1, y1 in the original image's pixels)", elem_id="boxes")
        rows = example_rows()
        if rows:
            gr.Examples(rows, inputs=[image, phrases], label="SynthRef examples")
        model.change(lambda name: name, model, model_state, api_visibility="private")
        branch.change(lambda value: value, branch, branch_state, api_visibility="private")

        def ground_ui(img, text, name, br):
            annotated_image, payload = ground(upload_path(img), text, name, br, cache)
            return save_annotated(annotated_image), payload

        run.click(
            ground_ui,
            inputs=[image, phrases, model_state, branch_state],
            outputs=[annotated, boxes],
            api_name="ground",
            concurrency_limit=1,
            preprocess=False,  # see upload_path
        ).then(timing_text, boxes, timing, api_visibility="private")
    demo.queue(max_size=64)
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", default=[], help="a checkpoint directory (repeatable)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: localhost only)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("SIMVG_PORT", 7860)))
    args = parser.parse_args()
    for path in args.checkpoint:
        try:
            resolve_checkpoint(path)
        except CheckpointError as err:
            raise SystemExit(f"--checkpoint {path}: {err}") from None
    demo = build_demo(find_models(args.checkpoint))
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD, show_error=True,
                allowed_paths=[str(EXAMPLES_DIR)])  # fmt: skip


os.environ.setdefault("GRADIO_TEMP_DIR", str(Path(tempfile.gettempdir()) / "simvg-gradio"))

if __name__ == "__main__":
    main()
