"""The model, config and model-step code load none of the pipeline stack (dagster, mlflow, dvc, lance,
pyarrow), so they run on a GPU image that has torch, transformers, peft and accelerate only."""

import subprocess
import sys
import textwrap

PIPELINE_STACK = ("dagster", "mlflow", "dvc", "lance", "pyarrow")


def test_model_and_config_load_none_of_the_pipeline_stack():
    code = textwrap.dedent(f"""
        import sys
        from owl_pipeline.config import OwlConfig
        from owl_pipeline.model.builders import build_model, count_parameters, from_pretrained, set_trainable
        from owl_pipeline.model.processor import OwlProcessor
        from owl_pipeline.model.tokenizer import train_bpe_tokenizer
        from owl_pipeline.train.optim import build_optimizer
        from owl_pipeline.train.speed import apply_speed_options
        loaded = sorted({{name.split(".")[0] for name in sys.modules}} & set({PIPELINE_STACK!r}))
        print(count_parameters(OwlConfig.from_name("owl-1b"))["total"], loaded)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "1482600448 []"
