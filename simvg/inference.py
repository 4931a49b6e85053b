"""``Grounder``: load a checkpoint directory and ground phrases in images."""

from __future__ import annotations

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
from simvg.models.postprocess import BRANCHES, select_boxes

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


class Grounder:
    """A trained grounding model ready for prediction.

    ``model`` is the ``nn.Module`` (a :class:`simvg.models.SimVG`), in eval mode.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, config: Config, backbone_config: dict,
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

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | None = None, batch_size: int = 16,
                        quantize: str | None = None) -> Grounder:  # fmt: skip
        """Load a checkpoint directory (config.json, model.safetensors, tokenizer files).

        quantize: "int8" runs the encoder's linear layers with int8 weights (CPU only; see
        :mod:`simvg.models.quantize`); None keeps the stored precision (as float32)."""
        from simvg.engine.tasks import quiet_transformers

        quiet_transformers()
        device = device or ("cpu" if quantize else "cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer, config, meta = load_checkpoint(directory, map_location=device)
        if quantize is not None:
            from simvg.models.quantize import quantize_for_cpu

            model = quantize_for_cpu(model, quantize)
        grounder = cls(model, tokenizer, config, meta["backbone_config"], device, batch_size, meta)
        grounder.quantization = quantize
        return grounder

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write a checkpoint directory; ``dtype=torch.float16`` stores half-size weights."""
        if self.quantization is not None:
            raise ValueError(f"this model was quantized ({self.quantization}) for inference; save the float checkpoint")
        extra = {k: v for k, v in self.meta.items() if k not in ("config", "backbone_config", "vocab_size", "format_version")}
        save_checkpoint(directory, self.model, self.config, self.backbone_config, self.tokenizer, extra=extra,
                        weights_dtype=dtype)  # fmt: skip

    @property
    def branches(self) -> tuple[str, ...]:
        return BRANCHES if self.config.model.head.use_decoder else ("token",)

    def predict(
        self,
        image: ImageInput | Sequence[ImageInput],
        text: str | Sequence[str],
        branch: str | None = None,
    ) -> GroundingResult | list[GroundingResult]:
        """Ground phrases in images.

        image: a path, PIL image or (H, W[, C]) array, or a list of them.
        text: a phrase or a list of phrases. One image with a list of phrases grounds each
            phrase in that image; a list of images with one phrase grounds it in each; two
            lists of equal length are paired.
        branch: "token" (cheapest, the default) or "decoder".
        Returns one :class:`GroundingResult` for a single (image, phrase), else a list.
        Boxes are xyxy in the original image's pixels (after EXIF orientation).
        """
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
        loaded = [load_image(source, max_side=max(DEFAULT_MAX_SIDE, self.config.model.image_size)) for source in images]
        results = []
        for start in range(0, len(pairs), self.batch_size):
            results += self._predict_batch(loaded, pairs[start : start + self.batch_size], branch)
        return results[0] if single_image and single_text else results

    @torch.no_grad()
    def _predict_batch(self, images: list[LoadedImage], pairs: list[tuple[int, str]], branch: str) -> list[GroundingResult]:
        from simvg.data.dataset import Collator

        samples = [self.preprocessor(images[i], phrase, warn_truncation=True) for i, phrase in pairs]
        batch: Batch = Collator(self.tokenizer.pad_token_id)(samples).to(self.device)
        with autocast(self.device, self.amp_dtype):
            outputs = self.model(
                batch.images, batch.pixel_mask, batch.input_ids, batch.text_mask, use_decoder=branch == "decoder"
            )
        boxes, scores = select_boxes(outputs, branch)
        boxes = letterbox_to_original(boxes.cpu(), self.config.model.image_size, batch.letterboxes)
        return [
            GroundingResult(tuple(float(v) for v in box), float(score), phrase, branch)
            for box, score, (_, phrase) in zip(boxes.tolist(), scores.tolist(), pairs)
        ]
