"""One place for configuration: dataclasses with checks, named presets, YAML loading, split by concern.

- ``loading``: the typed YAML loader (``from_mapping``, ``read_yaml``) and ``ConfigError``.
- ``model``: OwlConfig (vision, abstractor, LLM, LoRA) and the presets ``tiny``, ``owl-1b``, ``owl-7b``.
- ``data``: shapes world (SyntheticConfig, FaultRates), the filter rules (FilterConfig), instruction files.
- ``training``: one run of the loop (StageConfig) and the shapes-world pretraining recipes.
- ``pipeline``: evaluation, the registry gate, Ray, and PipelineConfig (``params.yaml``), which holds them all.

Import from here (``from owl_pipeline.config import StageConfig``); the modules are the places to read.
"""

from owl_pipeline.config.data import FaultRates, FilterConfig, InstructionFile, SyntheticConfig
from owl_pipeline.config.loading import ConfigError, checked_value, from_mapping, read_yaml
from owl_pipeline.config.model import PRESETS, AbstractorConfig, LLMConfig, LoraConfig, OwlConfig, VisionConfig
from owl_pipeline.config.pipeline import (ENGINE_STEPS, ENGINES, EvaluationConfig, PipelineConfig, RayConfig,
                                          RegistryConfig)
from owl_pipeline.config.training import (BaseLLMConfig, ClipTextConfig, CurriculumPhase, LLMPretrainConfig,
                                          StageConfig, VisionPretrainConfig)

__all__ = ["PRESETS", "ENGINE_STEPS", "ENGINES", "AbstractorConfig", "BaseLLMConfig", "ClipTextConfig", "ConfigError",
           "CurriculumPhase", "EvaluationConfig", "FaultRates", "FilterConfig", "InstructionFile", "LLMConfig",
           "LLMPretrainConfig", "LoraConfig", "OwlConfig", "PipelineConfig", "RayConfig", "RegistryConfig",
           "StageConfig", "SyntheticConfig", "VisionConfig", "VisionPretrainConfig", "checked_value", "from_mapping",
           "read_yaml"]
