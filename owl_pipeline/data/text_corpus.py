"""Text for the embedded default's base LLM: what a pretrained LLM would already know, in the Owl template.

Two kinds of conversation, both text-only:
- copy tasks, ``Human: {caption}`` then ``AI: {caption}``: stage 1 feeds the frozen LLM an image where the
  caption stood and trains the vision side until the LLM can read it out the same way;
- the instruction data's text-only conversations (questions answered from a description in the prompt).
"""

from __future__ import annotations

import lance
import pyarrow as pa
import pyarrow.compute as pc

from owl_pipeline.constants import AI_PREFIX, HUMAN_PREFIX, SYSTEM_PROMPT
from owl_pipeline.data.instructions import CONVERSATION_SCHEMA
from owl_pipeline.data.lance_io import write_lance
from owl_pipeline.model.conversation import AI, HUMAN


def build_text_corpus(curated_pairs: str, instructions: str, output: str) -> int:
    """Write the base-LLM conversations to ``output`` (Lance, CONVERSATION_SCHEMA); returns the row count."""
    captions = lance.dataset(curated_pairs).to_table(columns=["caption"])["caption"].to_pylist()
    copies = [{"id": f"copy-{i}", "format": "copy", "task_type": "caption_copy",
               "turns": [{"role": HUMAN, "text": c}, {"role": AI, "text": c}], "images": [], "image_refs": []}
              for i, c in enumerate(captions)]
    conversations = lance.dataset(instructions).to_table()
    text_only = conversations.filter(pc.equal(pc.list_value_length(conversations["images"]), 0))
    table = pa.concat_tables([pa.Table.from_pylist(copies, schema=CONVERSATION_SCHEMA),
                              text_only.select(CONVERSATION_SCHEMA.names).cast(CONVERSATION_SCHEMA)])
    write_lance(table.to_batches(max_chunksize=1024), CONVERSATION_SCHEMA, output, message="base-LLM text")
    return table.num_rows


def tokenizer_texts(text_corpus: str) -> list[str]:
    """Every turn of the text corpus plus the template's fixed strings, for training the tokenizer."""
    rows = lance.dataset(text_corpus).to_table(columns=["turns"])["turns"].to_pylist()
    texts = [turn["text"] for turns in rows for turn in turns]
    return texts + [SYSTEM_PROMPT, HUMAN_PREFIX, AI_PREFIX] * 50
