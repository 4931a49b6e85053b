"""Word alignment: the referred object's visual token, before it meets the text, predicts
the words of the phrase, scored against the encoder's own (pretrained) word embeddings.

A training aid for encoders whose visual side starts from scratch (the hybrid's conv stem).
SimVG's BEiT-3 arrives with images and words already aligned by its pretraining; a fresh stem
is otherwise taught only through the grounding loss, which rewards size and position long
before colour and shape. Predicting "purple" and "star" from the purple star's own token
makes the stem encode what phrases name and puts it in the space of the word embeddings the
pretrained layers attend with. It needs no annotation beyond the phrase and its box, and
nothing of it is used at inference (it lives in the training module, not in the model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WordAlignmentLoss(nn.Module):
    """forward(content (B, N, W), cells (B,), input_ids (B, L), text_mask (B, L) bool,
    word_embeddings (V, W)) -> scalar.

    content: the visual tokens before fusion; cells: the index of the token holding each
    referred object (its centre); word_embeddings: the encoder's input embedding table
    (detached: the visual side moves towards the words, not the reverse). The loss is the
    cross-entropy over the whole vocabulary of the phrase's words (special tokens excluded),
    averaged over each phrase's words, then over the batch.
    """

    def __init__(self, width: int, special_ids: list[int]):
        super().__init__()
        self.proj = nn.Linear(width, width)
        self.register_buffer("special_ids", torch.tensor(sorted(set(special_ids)), dtype=torch.long), persistent=False)

    def forward(
        self,
        content: torch.Tensor,
        cells: torch.Tensor,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
        word_embeddings: torch.Tensor,
    ) -> torch.Tensor:
        rows = torch.arange(len(cells), device=cells.device)
        logits = self.proj(content[rows, cells]).float() @ word_embeddings.detach().float().T  # (B, V)
        words = text_mask & ~torch.isin(input_ids, self.special_ids)
        log_probs = F.log_softmax(logits, dim=-1).gather(1, input_ids)  # (B, L)
        per_phrase = -(log_probs * words).sum(1) / words.sum(1).clamp_min(1)
        return per_phrase[words.any(1)].mean() if words.any() else logits.sum() * 0.0
