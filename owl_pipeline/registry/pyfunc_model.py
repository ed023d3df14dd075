"""The served model: an MLflow pyfunc that answers a question about an image, saved as "models from code"
(this file is the model's code; no pickle), with the saved Owl folder as its one artifact.

Input: a DataFrame with ``image`` (a file path or base64-encoded image bytes), ``question``, and optionally
``history`` (JSON: [[question, answer], ...] of earlier turns on the same image). Output: one answer per row.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel
from PIL import Image

OWL_ARTIFACT = "owl_model"
MAX_NEW_TOKENS_PARAM = "max_new_tokens"


def load_image(value: str) -> Image.Image:
    """A path to an image file, or the image's bytes in base64."""
    if len(value) < 1024 and Path(value).is_file():
        return Image.open(value).convert("RGB")
    try:
        return Image.open(io.BytesIO(base64.b64decode(value, validate=True))).convert("RGB")
    except (binascii.Error, OSError) as error:
        raise ValueError(f"image must be a readable file path or base64 image bytes ({value[:40]!r}...)") from error


def parse_history(value) -> list[tuple[str, str]]:
    if value is None or (isinstance(value, float) and value != value) or value == "":
        return []
    turns = json.loads(value) if isinstance(value, str) else value
    return [(str(q), str(a)) for q, a in turns]


class OwlChatModel(PythonModel):
    def load_context(self, context) -> None:
        from owl_pipeline.model.builders import from_pretrained

        self.model, self.processor = from_pretrained(context.artifacts[OWL_ARTIFACT])
        self.model.eval()

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        import torch

        max_new_tokens = int((params or {}).get(MAX_NEW_TOKENS_PARAM, 64))
        prompts = [self.processor.encode_prompt(str(row["question"]), [load_image(str(row["image"]))],
                                                history=parse_history(row.get("history")))
                   for _, row in model_input.iterrows()]
        batch = self.processor.collate(prompts, padding_side="left")
        with torch.no_grad():
            tokens = self.model.generate(**batch, max_new_tokens=max_new_tokens)
        return [self.processor.decode(t) for t in tokens]


mlflow.models.set_model(OwlChatModel())
