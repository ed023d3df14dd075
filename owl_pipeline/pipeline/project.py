"""Where every asset, report and record of one project lives: one home for each path."""

from __future__ import annotations

from pathlib import Path

from owl_pipeline import constants as C
from owl_pipeline.config import PipelineConfig
from owl_pipeline.data.instructions import InstructionSource
from owl_pipeline.files import name_in

PARAMS_FILE = "params.yaml"
BUNDLED = Path(__file__).resolve().parents[1] / "bundled"  # models that ship with owl-pipeline


class Project:
    """A project folder (``assets/``, ``mlruns/``, ``inbox/``) and its pipeline config."""

    def __init__(self, config: PipelineConfig, root: str | Path = "."):
        self.config, self.root = config, Path(root).resolve()
        self.assets = self._path(config.assets_dir)
        self.raw_shards = self._path(config.raw_shards) if config.raw_shards else self.assets / C.ASSET_RAW_SHARDS
        self.raw_pairs = self.assets / f"{C.ASSET_RAW_PAIRS}.lance"
        self.curated_pairs = self.assets / f"{C.ASSET_CURATED_PAIRS}.lance"
        self.instructions = self.assets / f"{C.ASSET_INSTRUCTIONS}.lance"
        self.base_llm = self.assets / C.ASSET_BASE_LLM
        self.text_corpus = self.base_llm / "text.lance"
        self.stage1 = self.assets / C.ASSET_STAGE1
        self.stage2 = self.assets / C.ASSET_STAGE2
        self.owleval = self.assets / C.ASSET_OWLEVAL
        self.reports = self.assets / C.REPORTS_DIR
        self.inbox = self.root / "inbox"  # new shards dropped here are ingested with the rest

    def asset_paths(self) -> dict[str, Path]:
        """Each asset's dataset or folder, whose hash is its version (and DVC's, where its stage declares it as
        ``outs``): a training step's is its model folder, without its checkpoints; registered_model has none."""
        return {C.ASSET_RAW_SHARDS: self.raw_shards, C.ASSET_RAW_PAIRS: self.raw_pairs,
                C.ASSET_CURATED_PAIRS: self.curated_pairs, C.ASSET_INSTRUCTIONS: self.instructions,
                C.ASSET_BASE_LLM: self.base_llm / C.MODEL_DIR, C.ASSET_STAGE1: self.stage1 / C.MODEL_DIR,
                C.ASSET_STAGE2: self.stage2 / C.MODEL_DIR, C.ASSET_OWLEVAL: self.owleval}

    def _path(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.root / path

    def relative(self, path: str | Path) -> str:
        """How records and fingerprints name ``path``: by its place in the project (files.name_in)."""
        return name_in(self.root, path)

    # --- the paths other rooms read -------------------------------------------------------------------
    def record_path(self, step: str) -> Path:
        """The step's last run: its metadata, outputs and inputs digest."""
        return self.reports / f"{step}.json"

    def metrics_path(self, step: str) -> Path:
        """The step's metrics alone (DVC's ``metrics:``; tracked by git, so experiments can be compared)."""
        return self.root / C.METRICS_DIR / f"{step}.json"

    def history_path(self, step: str) -> Path:
        """A training step's loss and learning rate per step (DVC's ``plots:``, x: step)."""
        return self.root / C.METRICS_DIR / f"{step}_history.csv"

    def lock_path(self, step: str) -> Path:
        return self.assets / ".locks" / f"{step}.lock"

    def lineage_record_path(self, asset: str) -> Path:
        return self.reports / "data_versions" / f"{asset}.json"  # one file per asset: parallel steps never race

    @property
    def filter_histograms(self) -> Path:
        return self.reports / C.FILTER_HISTOGRAMS

    @property
    def owleval_report_json(self) -> Path:
        return self.owleval / C.OWLEVAL_REPORT_JSON

    @property
    def generated(self) -> bool:
        return self.config.raw_shards is None

    def shard_folder(self) -> Path:
        return self.raw_shards / "shards" if self.generated else self.raw_shards

    def instruction_sources(self) -> list[InstructionSource]:
        if self.config.instructions is None:
            folder = self.raw_shards / "instructions"
            return [InstructionSource("alpaca", folder / "alpaca.json"),
                    InstructionSource("llava", folder / "llava.json"), InstructionSource("owl", folder / "owl.jsonl")]
        return [InstructionSource(f.format, self._path(f.path), self._path(f.image_root) if f.image_root else None)
                for f in self.config.instructions]

    def resolve_pretrained(self, value: str) -> str:
        """A pretrained model's name as given in params: an absolute path, a folder relative to the project,
        one bundled with owl-pipeline (owl_pipeline/bundled/<name>, e.g. shapes-world-llm), else a hub id."""
        if Path(value).is_absolute():
            return value
        for candidate in (self.root / value, BUNDLED / value):
            if candidate.is_dir():
                return str(candidate)
        return value

    def owleval_dir(self) -> Path:
        return self._path(self.config.owleval_dir) if self.config.owleval_dir else self.raw_shards / "owleval"


def load_project(root: str | Path = ".", params: str | Path | None = None) -> Project:
    """The project in ``root`` with its config: ``params`` if given, else ``root/params.yaml``, else defaults."""
    root = Path(root).resolve()
    path = Path(params) if params else root / PARAMS_FILE
    config = PipelineConfig.from_yaml(path) if params or path.is_file() else PipelineConfig()
    return Project(config, root)
