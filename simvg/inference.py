"""``Grounder``: load a checkpoint directory and ground phrases in images."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from simvg.config import Config
from simvg.data.dataset import Batch, Preprocessor
from simvg.data.images import DEFAULT_MAX_SIDE, LoadedImage, load_image
from simvg.data.transforms import letterbox_to_original
from simvg.engine.checkpoint import load_checkpoint, save_checkpoint
from simvg.engine.optim import autocast
from simvg.models.postprocess import BRANCHES, query_boxes

ImageInput = str | Path | Image.Image | np.ndarray


@dataclass
class GroundingResult:
    """box: (x0, y0, x1, y1) float pixels of the original image; score: object probability in [0, 1]."""

    box: tuple[float, float, float, float]
    score: float
    text: str
    branch: str

    def to_dict(self) -> dict:
        data = asdict(self)
        data["box"] = [round(v, 2) for v in self.box]
        data["score"] = round(self.score, 4)
        return data


BACKENDS = ("torch", "onnxruntime")


class Grounder:
    """A trained grounding model ready for prediction.

    ``model`` is the ``nn.Module`` (a :class:`simvg.models.SimVG`), in eval mode, or for the
    onnxruntime backend an :class:`~simvg.onnx_backend.OnnxRuntimeModel` that takes the same
    arguments and returns the same outputs; pre- and post-processing are the same for both.
    """

    def __init__(self, model, tokenizer, config: Config, backbone_config: dict,
                 device: str | torch.device = "cpu", batch_size: int = 16, meta: dict | None = None):  # fmt: skip
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.config = config
        self.backbone_config = backbone_config
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.meta = meta or {}
        self.preprocessor = Preprocessor(tokenizer, config.model.image_size, config.model.max_text_length, resize=config.model.resize)
        self.amp_dtype = torch.bfloat16 if self.device.type == "cuda" else None
        self.default_branch = "token"
        self.quantization: str | None = None
        self.backend = "torch" if isinstance(model, torch.nn.Module) else "onnxruntime"

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | None = None, batch_size: int = 16,
                        quantize: str | None = None, backend: str | None = None) -> Grounder:  # fmt: skip
        """Load a checkpoint directory: config.json, tokenizer files and model.safetensors
        (torch backend) or model.onnx (onnxruntime backend, written by ``simvg export
        --format onnx``).

        backend: "torch" or "onnxruntime"; None picks from the directory (model.safetensors:
            torch, else model.onnx: onnxruntime).
        quantize: "int8": torch runs the encoder's linear layers with int8 weights (CPU only;
            see :mod:`simvg.models.quantize`); onnxruntime runs model.int8.onnx (``simvg
            export --format onnx --int8``). None keeps the stored precision (as float32)."""
        from simvg.engine.checkpoint import WEIGHTS_FILE, resolve_checkpoint
        from simvg.engine.tasks import quiet_transformers

        quiet_transformers()
        if backend is None:
            backend = "torch" if (resolve_checkpoint(directory) / WEIGHTS_FILE).is_file() else "onnxruntime"
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend '{backend}'; choose one of: {', '.join(BACKENDS)}")
        if backend == "onnxruntime":
            return cls._from_onnx(directory, device or "cpu", batch_size, quantize)
        device = device or ("cpu" if quantize else "cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer, config, meta = load_checkpoint(directory, map_location=device)
        if quantize is not None:
            from simvg.models.quantize import quantize_for_cpu

            model = quantize_for_cpu(model, quantize)
        grounder = cls(model, tokenizer, config, meta["backbone_config"], device, batch_size, meta)
        grounder.quantization = quantize
        return grounder

    @classmethod
    def _from_onnx(cls, directory: str | Path, device: str, batch_size: int, quantize: str | None) -> Grounder:
        from simvg.config import ConfigError, from_dict
        from simvg.engine.checkpoint import (
            CONFIG_FILE,
            CheckpointError,
            load_checkpoint_tokenizer,
            read_checkpoint_config,
            resolve_checkpoint,
        )
        from simvg.onnx_backend import OnnxRuntimeModel, onnx_file

        directory = resolve_checkpoint(directory)
        meta = read_checkpoint_config(directory)
        try:
            config = from_dict(Config, meta["config"])
        except ConfigError as err:
            raise CheckpointError(f"{directory / CONFIG_FILE}: {err}") from err
        tokenizer = load_checkpoint_tokenizer(directory)
        model = OnnxRuntimeModel(onnx_file(directory, quantize), device=device)
        grounder = cls(model, tokenizer, config, meta["backbone_config"], device, batch_size, meta)
        grounder.quantization = quantize
        return grounder

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write a checkpoint directory; ``dtype=torch.float16`` stores half-size weights."""
        if self.backend != "torch":
            raise ValueError("this model runs an exported ONNX graph; save_pretrained needs the torch checkpoint")
        if self.quantization is not None:
            raise ValueError(f"this model was quantized ({self.quantization}) for inference; save the float checkpoint")
        extra = {k: v for k, v in self.meta.items() if k not in ("config", "backbone_config", "vocab_size", "format_version")}
        save_checkpoint(directory, self.model, self.config, self.backbone_config, self.tokenizer, extra=extra,
                        weights_dtype=dtype)  # fmt: skip

    @property
    def branches(self) -> tuple[str, ...]:
        if self.backend != "torch":
            return BRANCHES if self.model.has_decoder else ("token",)
        return BRANCHES if self.config.model.head.use_decoder else ("token",)

    def predict(
        self,
        image: ImageInput | Sequence[ImageInput],
        text: str | Sequence[str],
        branch: str | None = None,
    ) -> GroundingResult | list[GroundingResult]:
        """Ground phrases in images: the best box of each phrase.

        image: a path, PIL image or (H, W[, C]) array, or a list of them.
        text: a phrase or a list of phrases. One image with a list of phrases grounds each
            phrase in that image; a list of images with one phrase grounds it in each; two
            lists of equal length are paired.
        branch: "token" (cheapest, the default) or "decoder".
        Returns one :class:`GroundingResult` for a single (image, phrase), else a list: the
        box of the branch's highest-scoring query, whatever its score.
        Boxes are xyxy in the original image's pixels (after EXIF orientation).
        """
        single, per_pair = self._ground(image, text, branch)
        results = [found[0] for found in per_pair]
        return results[0] if single else results

    def predict_all(
        self,
        image: ImageInput | Sequence[ImageInput],
        text: str | Sequence[str],
        threshold: float = 0.7,
        branch: str | None = None,
    ) -> list[GroundingResult] | list[list[GroundingResult]]:
        """Every box of each phrase that scores at least ``threshold``, best first.

        Inputs as :meth:`predict`. A phrase gets every query of the branch whose score
        (the object probability, softmax of its logits, class 0) is >= ``threshold``: none when
        nothing fits ("no match"), several when the phrase names several objects (models with
        several queries, ``model.head.num_queries`` > 1). A branch with one query gives at most
        its one box. Returns a list of results for a single (image, phrase), else one such
        list per phrase. Boxes are xyxy in the original image's pixels.
        """
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
        single, per_pair = self._ground(image, text, branch)
        kept = [[result for result in found if result.score >= threshold] for found in per_pair]
        return kept[0] if single else kept

    def _ground(self, image, text, branch: str | None) -> tuple[bool, list[list[GroundingResult]]]:
        """(whether a single (image, phrase) was given, per pair every query's result, best first)."""
        branch = branch or self.default_branch
        if branch not in self.branches:
            raise ValueError(f"branch '{branch}' is not available in this model; choose one of: {', '.join(self.branches)}")
        single_image = not isinstance(image, (list, tuple))
        if text is None or isinstance(text, (bytes, bytearray)):
            raise TypeError(f"text must be a str or a list of str, got {type(text).__name__}: {text!r}")
        single_text = isinstance(text, str)
        images = [image] if single_image else list(image)
        texts = [text] if single_text else list(text)
        if not images or not texts:
            raise ValueError("predict needs at least one image and one phrase")
        if len(images) == 1:
            pairs = [(0, t) for t in texts]
        elif len(texts) == 1:
            pairs = [(i, texts[0]) for i in range(len(images))]
        elif len(images) == len(texts):
            pairs = list(enumerate(texts))
        else:
            raise ValueError(f"got {len(images)} images and {len(texts)} phrases; give one of either, or equally many")
        for _, phrase in pairs:
            if not isinstance(phrase, str):
                raise TypeError(f"a phrase must be a str, got {type(phrase).__name__}: {phrase!r}")
            self.preprocessor.tokenize(phrase)  # empty phrases fail here, before any work
        size = self.config.model.image_size
        loaded = [load_image(source, max_side=decode_side(source, size)) for source in images]
        results = []
        for start in range(0, len(pairs), self.batch_size):
            results += self._predict_batch(loaded, pairs[start : start + self.batch_size], branch)
        return single_image and single_text, results

    @torch.no_grad()
    def _predict_batch(self, images: list[LoadedImage], pairs: list[tuple[int, str]],
                       branch: str) -> list[list[GroundingResult]]:  # fmt: skip
        """Per pair, every query's result of ``branch``, highest score first."""
        from simvg.data.dataset import Collator

        samples = [self.preprocessor(images[i], phrase, warn_truncation=True) for i, phrase in pairs]
        batch: Batch = Collator(self.tokenizer.pad_token_id)(samples).to(self.device)
        with autocast(self.device, self.amp_dtype):
            outputs = self.model(
                batch.images, batch.pixel_mask, batch.input_ids, batch.text_mask, use_decoder=branch == "decoder"
            )
        boxes, scores = query_boxes(outputs, branch, self.config.model.head.answer_nms, self.config.model.head.answer_merge)  # (B, Q, 4), (B, Q)
        batch_size, queries = scores.shape
        letterboxes = [lb for lb in batch.letterboxes for _ in range(queries)]
        boxes = letterbox_to_original(boxes.reshape(-1, 4).cpu(), self.config.model.image_size, letterboxes)
        boxes, scores = boxes.view(batch_size, queries, 4).tolist(), scores.cpu()
        order = scores.argsort(dim=1, descending=True, stable=True).tolist()
        scores = scores.tolist()
        return [
            [GroundingResult(tuple(boxes[i][q]), scores[i][q], phrase, branch) for q in order[i]]
            for i, (_, phrase) in enumerate(pairs)
        ]


def decode_side(source: ImageInput, size: int) -> int:
    """The longest side to decode ``source`` at for a model whose input is ``size`` pixels:
    twice that for an image larger than DEFAULT_MAX_SIDE, else DEFAULT_MAX_SIDE (so images up
    to that size are read as before, exactly).

    The model never sees more than ``size`` pixels. A large image read at DEFAULT_MAX_SIDE
    first was decoded whole and then shrunk by PIL to 2048 pixels, most of the time of a
    batch-1 ``predict``: for a 4032 x 3024 JPEG (a phone photo) that decode alone took
    158.7 ms, the whole ``predict`` now 46.9 ms, the shipped student's forward 10.5 ms
    (``python bench/predict_breakdown.py``, Intel Xeon, 2 threads,
    bench/results/predict_breakdown.md). A JPEG is then decoded straight at reduced scale
    (PIL's draft) and shrunk to twice the input; CPU time of decode and letterbox on the
    development machine: 4032 x 3024 JPEG 172 -> 36 ms, 2560 x 1920 JPEG 66 -> 14 ms, 4032 x
    3024 array 160 -> 40 ms. The image the model sees is the same picture with slightly
    different pixel values (another resampling), not the same bytes: 200 SynthRef val images
    upscaled 16x to 4096-pixel JPEGs were grounded with Acc@0.5 93.0 either way (93.0 at their
    own 256 pixels), the two decodes' boxes 0.05 original pixels apart in the median, 0.10 at
    the 90th percentile (``python bench/large_image_decode.py --data-root DATA``).
    """
    reduced = 2 * size
    if reduced >= DEFAULT_MAX_SIDE:
        return max(DEFAULT_MAX_SIDE, size)
    if isinstance(source, np.ndarray):
        longest = max(source.shape[:2]) if source.ndim >= 2 else 0
    elif isinstance(source, Image.Image):
        longest = max(source.size)
    else:
        try:  # reads the header only; load_image reports what is wrong with a file
            with warnings.catch_warnings(), Image.open(source) as image:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                longest = max(image.size)
        except Exception:  # any unreadable source: load_image names the problem
            longest = 0
    return reduced if longest > DEFAULT_MAX_SIDE else DEFAULT_MAX_SIDE
