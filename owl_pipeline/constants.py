"""Names shared across the package: tokens, stages, artifact file names. One definition each."""

IMAGE_TOKEN = "<image>"

SYSTEM_PROMPT = (
    "The following is a conversation between a curious human and AI assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
HUMAN_PREFIX = "Human: "
AI_PREFIX = "AI: "

IGNORE_INDEX = -100

# Images whose header declares more pixels are refused before decoding (a 0.5 MB PNG can declare 169 megapixels).
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # ~6300 x 6300: far above any training resolution

STAGE_BASE_LLM = 0  # the embedded default's own LLM, trained on text before stage 1
STAGE_PRETRAIN = 1
STAGE_INSTRUCT = 2
STAGES = (STAGE_BASE_LLM, STAGE_PRETRAIN, STAGE_INSTRUCT)

# CLIP's image normalization (the vision tower is a CLIP ViT).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The one layout of a saved model folder (see model/builders.py).
OWL_CONFIG_FILE = "owl_config.json"
ABSTRACTOR_WEIGHTS_FILE = "abstractor.safetensors"
VISION_DIR = "vision"
LLM_DIR = "llm"
ADAPTER_DIR = "adapter"
PROCESSOR_DIR = "processor"
PROCESSOR_CONFIG_FILE = "processor_config.json"
PRETRAIN_MANIFEST_FILE = "owl_manifest.json"  # beside an LLM `owl pretrain-llm` wrote: seed, scores, sha256s

# Asset names: the Dagster asset keys, the DVC stage names and the folders under assets/.
ASSET_RAW_SHARDS = "raw_shards"
ASSET_RAW_PAIRS = "raw_pairs"
ASSET_CURATED_PAIRS = "curated_pairs"
ASSET_INSTRUCTIONS = "instruction_data"
ASSET_BASE_LLM = "base_llm"
ASSET_STAGE1 = "stage1_model"
ASSET_STAGE2 = "stage2_model"
ASSET_OWLEVAL = "owleval_report"
ASSET_REGISTERED = "registered_model"
# In the pipeline's order, for the CLI's help (pipeline/graph.PIPELINE_ORDER is the same, from the steps' table)
ASSET_ORDER = (ASSET_RAW_SHARDS, ASSET_RAW_PAIRS, ASSET_CURATED_PAIRS, ASSET_INSTRUCTIONS, ASSET_BASE_LLM,
               ASSET_STAGE1, ASSET_STAGE2, ASSET_OWLEVAL, ASSET_REGISTERED)

# A training step's folder: its final model (the asset's version, DVC-cached) and its checkpoints (kept across
# reruns so a killed run resumes; never cached).
MODEL_DIR = "model"
CHECKPOINT_DIR = "checkpoints"
LOSS_CURVE = "loss_curve.png"  # beside the model: the run's loss against steps

# What a step's folder holds beside its data: the records of runs and the OwlEval report's files.
REPORTS_DIR = "reports"  # assets/reports/<step>.json: each step's last metadata, outputs and inputs digest
FILTER_HISTOGRAMS = "filter_histograms.png"
OWLEVAL_REPORT_JSON, OWLEVAL_REPORT_HTML = "report.json", "report.html"
OWLEVAL_ANSWERS, OWLEVAL_RATING_SHEET, OWLEVAL_JUDGE_CACHE = "answers.jsonl", "rating_sheet.csv", "judge_cache.jsonl"

# Scores of an OwlEval report (per model, overall, per ability and per question type), and the keys a step's
# metadata carries them under.
METRIC_ACCURACY, METRIC_SIMILARITY, METRIC_JUDGE, METRIC_HUMAN = "accuracy", "similarity", "judge", "human"
SCORE_METRICS = (METRIC_ACCURACY, METRIC_SIMILARITY, METRIC_JUDGE, METRIC_HUMAN)
ACCURACY_BY_TYPE, ACCURACY_BY_ABILITY = "accuracy_by_type", "accuracy_by_ability"
# The paper's six OwlEval abilities, by the letter the question set tags them with.
OWLEVAL_ABILITIES = {"a": "instruction understanding", "b": "visual understanding",
                     "c": "optical character recognition", "d": "knowledge transfer", "e": "reasoning",
                     "f": "multi-turn dialogue"}
METRICS_DIR = "metrics"  # per-step metrics and loss histories, small and tracked by git (dvc metrics/plots)
