"""The mPLUG-Owl model: vision encoder + visual abstractor + LLM. torch, transformers and peft only."""
