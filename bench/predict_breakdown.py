"""Where a batch-1 ``Grounder.predict`` call's time goes: image decoding (with EXIF and colour
mode), letterbox resize, padding and conversion to a tensor, tokenization, collation, the
model's forward, post-processing (scores, boxes back to the original pixels), and the whole
``predict(path, phrase)`` call; for a PNG from SynthRef and two generated JPEG photos (1280 x
960 and a 12-megapixel 4032 x 3024).

    python bench/predict_breakdown.py [CHECKPOINT] [--seconds 20] [--out FILE]

CHECKPOINT: default the shipped student; an ONNX export (``simvg export --format onnx``)
times the onnxruntime backend. Every part of every image takes turns, one call each
(``simvg.benchmark.take_turns``); medians. "other" is the whole call less its parts: the
per-call set-up. Writes bench/results/predict_breakdown.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from simvg.benchmark import save_table, take_turns
from simvg.data.dataset import Collator
from simvg.data.images import DEFAULT_MAX_SIDE, load_image
from simvg.data.transforms import letterbox_resize, letterbox_to_original, pad_to_square
from simvg.inference import Grounder, decode_side
from simvg.models.postprocess import query_boxes
from simvg.weights import DEFAULT_MODEL_DIR

ROOT = Path(__file__).resolve().parents[1]
PHRASE = "the small red circle left of the blue square"
PARTS = ("decode", "letterbox", "to tensor", "tokenize", "collate", "forward", "post-process")
# Not a part of predict: decoding as predict did before simvg.inference.decode_side (at up to
# DEFAULT_MAX_SIDE pixels, whatever the model's input), for comparison.
BEFORE = "decode at 2048 px"


def photo(path: Path, width: int, height: int) -> Path:
    """A JPEG (quality 90) with a photo's mix of smooth shading and texture, of that size."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 97.0 + y / 53.0)], axis=-1) * 200
    noise = rng.normal(0, 12, (height // 4 + 1, width // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)[:height, :width]
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def parts(grounder: Grounder, image: Path) -> dict:
    """The calls timed for one image: each step of predict on its own, and predict itself."""
    size = grounder.config.model.image_size
    max_side = decode_side(image, size)
    loaded = load_image(image, max_side=max_side)
    resized, letterbox = letterbox_resize(loaded.pixels, loaded.width, loaded.height, size)
    sample = grounder.preprocessor(loaded, PHRASE)
    collate = Collator(grounder.tokenizer.pad_token_id)
    batch = collate([sample]).to(grounder.device)
    inputs = (batch.images, batch.pixel_mask, batch.input_ids, batch.text_mask)
    outputs = grounder.model(*inputs, use_decoder=False)

    def to_tensor():
        padded, mask = pad_to_square(resized, size)
        return torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1))), torch.from_numpy(mask)

    def post_process():
        boxes, scores = query_boxes(outputs, "token")
        return letterbox_to_original(boxes.reshape(-1, 4), size, [letterbox]).tolist(), scores.tolist()

    return {
        "decode": lambda: load_image(image, max_side=decode_side(image, size)),
        BEFORE: lambda: load_image(image, max_side=max(DEFAULT_MAX_SIDE, size)),
        "letterbox": lambda: letterbox_resize(loaded.pixels, loaded.width, loaded.height, size),
        "to tensor": to_tensor,
        "tokenize": lambda: grounder.preprocessor.tokenize(PHRASE),
        "collate": lambda: collate([sample]).to(grounder.device),
        "forward": lambda: grounder.model(*inputs, use_decoder=False),
        "post-process": post_process,
        "predict": lambda: grounder.predict(image, PHRASE),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "predict_breakdown.md")
    args = parser.parse_args()
    grounder = Grounder.from_pretrained(args.checkpoint, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        images = {
            "SynthRef PNG 256x256": ROOT / "examples" / "synthref_0000001.png",
            "JPEG 1280x960": photo(Path(tmp) / "photo_1280.jpg", 1280, 960),
            "JPEG 4032x3024": photo(Path(tmp) / "photo_4032.jpg", 4032, 3024),
        }
        calls = {(name, part): call for name, image in images.items() for part, call in parts(grounder, image).items()}
        with torch.inference_mode():
            times = take_turns(calls, args.seconds)
    rounds = len(next(iter(times.values())))
    lines = [
        f"`Grounder.predict(path, phrase)` at batch 1, {grounder.backend} backend, {Path(args.checkpoint).name} "
        f"(input {grounder.config.model.image_size} px), {torch.get_num_threads()} threads; median ms of {rounds} "
        "calls each, every part of every image taking turns. other = predict less its parts (per-call set-up).",
        "",
        "| image | " + " | ".join(PARTS) + f" | other | predict | forward share | {BEFORE} (before) |",
        "|---|" + "---|" * (len(PARTS) + 4),
    ]
    for name in images:
        ms = {part: 1000 * statistics.median(times[(name, part)]) for part in (*PARTS, "predict", BEFORE)}
        other = ms["predict"] - sum(ms[part] for part in PARTS)
        cells = " | ".join(f"{ms[part]:.2f}" for part in PARTS)
        lines.append(f"| {name} | {cells} | {other:.2f} | {ms['predict']:.2f} | {ms['forward'] / ms['predict']:.0%} | "
                     f"{ms[BEFORE]:.2f} |")  # fmt: skip
    save_table("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
