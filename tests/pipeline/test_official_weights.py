"""``model.pretrained_official``: the pipeline converts a released checkpoint once and starts from it; with
``stage2.max_steps: 0`` the evaluated model is the released one, unchanged."""

import torch

from owl_pipeline.config import PipelineConfig, from_mapping
from owl_pipeline.model.builders import from_pretrained
from owl_pipeline.pipeline.graph import PIPELINE_ORDER
from owl_pipeline.pipeline.project import Project
from owl_pipeline.pipeline.runner import run_step
from owl_pipeline.train.loop import MODEL_DIR

from ..conftest import SMALL
from ..model.test_convert import official_state, write_official


def test_a_released_checkpoint_is_converted_once_and_evaluated_as_it_is(tmp_path, tokenizer):
    official = write_official(tmp_path / "released", tokenizer, official_state())
    config = from_mapping(PipelineConfig, {
        "synthetic": {**SMALL, "num_pairs": 300, "shard_size": 150},
        "model": {"preset": "tiny", "pretrained_official": str(official)},
        "stage2": {"max_steps": 0, "warmup_steps": 30}}, "params")
    project = Project(config, tmp_path / "project")
    logs = []
    for name in PIPELINE_ORDER[:PIPELINE_ORDER.index("owleval_report") + 1]:
        run_step(name, project, log=logs.append)
    converted, _ = from_pretrained(project.base_llm / MODEL_DIR)
    evaluated, _ = from_pretrained(project.stage2 / MODEL_DIR)
    for key, tensor in converted.state_dict().items():
        assert torch.equal(tensor, evaluated.state_dict()[key]), key
    assert converted.abstractor.query_embeds.shape[1] == 5  # the released config, not the tiny preset's
    answers = (project.owleval / "answers.jsonl").read_text().splitlines()
    assert len(answers) == 4 * SMALL["num_eval_images"] + 2 * (SMALL["num_eval_images"] // 3)
    run_step("base_llm", project, log=logs.append, force=True)
    assert any("is already converted" in line for line in logs)
