"""The served model: an MLflow pyfunc that answers a question about an image, saved as "models from code"
(this file is the model's code; no pickle), with the saved Owl folder as its one artifact.

Input: a DataFrame with ``image`` (base64-encoded image bytes), ``question``, and optionally ``history``
(JSON: [[question, answer], ...] of earlier turns on the same image). Output: one answer per row.

What it accepts (``ServingLimits``, fixed when the model is logged: registry.serve_* in params.yaml):
- images as base64 bytes only; a file path only when the model was logged with an ``image_root`` and the
  path resolves inside it. Every image that cannot be used gets the same message (it never tells whether a
  path exists), and errors carry no traceback;
- images up to ``max_image_pixels`` by their header (checked before decoding), at most ``max_rows`` rows per
  request, ``max_new_tokens`` up to its limit, questions up to ``max_question_tokens``; more is a 400.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from owl_pipeline.constants import DEFAULT_MAX_IMAGE_PIXELS
from owl_pipeline.data.images import ImageRejected, decode_rgb

OWL_ARTIFACT = "owl_model"
MAX_NEW_TOKENS_PARAM = "max_new_tokens"


@dataclass
class ServingLimits:
    image_root: str | None = None  # files under this folder may be named by path; None: base64 only
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_rows: int = 16
    max_new_tokens: int = 256
    max_question_tokens: int = 512

    @classmethod
    def from_config(cls, config: dict | None) -> ServingLimits:
        known = {k: v for k, v in (config or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def to_config(self) -> dict:
        return asdict(self)


def rejected(message: str) -> MlflowException:
    """A 400 with ``message`` and nothing else (no traceback, no local paths)."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def load_image(value: str, limits: ServingLimits):
    """The picture in ``value``: base64 image bytes, or (where allowed) a path under the image root."""
    problem = "image must be base64-encoded image bytes" + (
        " or the path of a file under the model's image root" if limits.image_root else "")
    try:
        return decode_rgb(_image_bytes(value, limits), limits.max_image_pixels)
    except ImageRejected as error:
        if error.reason == "too_many_pixels":
            raise rejected(f"image has more than {limits.max_image_pixels} pixels") from None
        raise rejected(problem) from None
    except (binascii.Error, ValueError, OSError):
        raise rejected(problem) from None


def _image_bytes(value: str, limits: ServingLimits) -> bytes:
    if limits.image_root and len(value) < 4096:
        root = Path(limits.image_root).resolve()
        path = (root / value).resolve()
        if path.is_relative_to(root) and path.is_file():
            return path.read_bytes()
    return base64.b64decode(value, validate=True)


def parse_history(value) -> list[tuple[str, str]]:
    if value is None or (isinstance(value, float) and value != value) or value == "":
        return []
    try:
        turns = json.loads(value) if isinstance(value, str) else value
        return [(str(q), str(a)) for q, a in turns]
    except (ValueError, TypeError):
        raise rejected("history must be JSON: [[question, answer], ...]") from None


class OwlChatModel(PythonModel):
    def load_context(self, context) -> None:
        from owl_pipeline.model.builders import from_pretrained

        self.model, self.processor = from_pretrained(context.artifacts[OWL_ARTIFACT])
        self.model.eval()
        self.limits = ServingLimits.from_config(getattr(context, "model_config", None))

    def _question(self, text) -> str:
        question, cut = self.processor.cap_tokens(str(text), self.limits.max_question_tokens)
        if cut:
            raise rejected(f"question is longer than {self.limits.max_question_tokens} tokens")
        return question

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        import torch

        limits = self.limits
        if len(model_input) > limits.max_rows:
            raise rejected(f"at most {limits.max_rows} rows per request, got {len(model_input)}")
        max_new_tokens = int((params or {}).get(MAX_NEW_TOKENS_PARAM, 64))
        if not 0 < max_new_tokens <= limits.max_new_tokens:
            raise rejected(f"max_new_tokens must be within 1..{limits.max_new_tokens}, got {max_new_tokens}")
        prompts = [self.processor.encode_prompt(self._question(row["question"]),
                                                [load_image(str(row["image"]), limits)],
                                                history=parse_history(row.get("history")))
                   for _, row in model_input.iterrows()]
        batch = self.processor.collate(prompts, padding_side="left")
        with torch.no_grad():
            tokens = self.model.generate(**batch, max_new_tokens=max_new_tokens)
        return [self.processor.decode(t) for t in tokens]


mlflow.models.set_model(OwlChatModel())
