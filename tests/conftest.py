"""Shared fixtures: a tokenizer trained here, the tiny preset, a processor and a model, a small shapes-world
corpus and its Lance pairs. Offline always."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no report to send from a test (and no network here)
# One local node, never preempted: no watcher actor for it; a worker's exit and a run's end seen within 0.5 s,
# not within Ray Train's 2 s poll.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from owl_pipeline.config import OwlConfig, SyntheticConfig  # noqa: E402
from owl_pipeline.data.ingest import find_shards, ingest  # noqa: E402
from owl_pipeline.data.synthetic import generate_corpus  # noqa: E402
from owl_pipeline.model.builders import build_model, processor_config_for  # noqa: E402
from owl_pipeline.model.processor import OwlProcessor  # noqa: E402
from owl_pipeline.model.tokenizer import train_bpe_tokenizer  # noqa: E402

CORPUS = [
    "a red circle on the left", "two blue squares at the top", "one green triangle in the middle",
    "What color is the shape?", "How many shapes are there?", "Where is the circle?",
    "The following is a conversation between a curious human and AI assistant.",
    "Human: AI: red blue green yellow circle square triangle left right top bottom",
]


@pytest.fixture(scope="session")
def tokenizer():
    return train_bpe_tokenizer(CORPUS * 20, vocab_size=400)


@pytest.fixture
def tiny_config():
    return OwlConfig.from_name("tiny")


@pytest.fixture
def processor(tokenizer, tiny_config):
    return OwlProcessor(tokenizer, processor_config_for(tiny_config, train_hflip=False))


@pytest.fixture
def model(tiny_config, processor):
    torch.manual_seed(0)
    return build_model(tiny_config, processor)


@pytest.fixture
def red_image():
    return Image.new("RGB", (64, 64), (220, 30, 30))


@pytest.fixture
def noise_image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8))


# The real OwlEval set (README "Evaluation": clone it from the official mPLUG-Owl repository). Tests of what only
# the real set has (82 questions, six published answer files, abilities a-f) skip without it; every code path
# they cover also runs on the generated shapes-world eval set.
REAL_OWLEVAL = Path(os.environ.get("OWL_OWLEVAL_DIR") or Path(__file__).resolve().parents[2] / "shared/data/owleval")
needs_real_owleval = pytest.mark.skipif(
    not (REAL_OWLEVAL / "questions.jsonl").is_file(),
    reason=f"the real OwlEval set is not at {REAL_OWLEVAL}: set OWL_OWLEVAL_DIR to its folder")


@pytest.fixture(scope="session")
def similarity():
    """The packaged all-MiniLM-L6-v2 (loaded once: about 8 s)."""
    from owl_pipeline.eval.similarity import SimilarityScorer

    return SimilarityScorer()


SMALL = dict(num_pairs=1200, shard_size=300, num_instruction_images=40, num_text_only=20, num_eval_images=6)


def quiet(*_):
    pass


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "shapes"
    manifest = generate_corpus(root, SyntheticConfig(**SMALL), log=quiet)
    return root, manifest


@pytest.fixture(scope="session")
def raw_pairs(corpus, tmp_path_factory):
    root, _ = corpus
    uri = tmp_path_factory.mktemp("lance") / "raw_pairs.lance"
    report = ingest(find_shards(root / "shards"), uri, log=quiet)
    return uri, report


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray for the session (a start costs seconds); the Ray paths reuse it rather than start their own.
    Started as a step starts its local Ray (idle workers kept), with a small object store (the tests' data is
    megabytes) and 2 logical CPUs: enough for Ray Train's two workers (its controller takes none) and for Ray
    Data beside one CLIP actor. Each CPU more costs a worker process and its imports: the Ray tests took 166-172
    busy CPU-s with 2, 179-202 with 4."""
    import ray

    from owl_pipeline.data.ray_session import local_ray_options

    ray.init(**local_ray_options(2, object_store_memory=256 * 2**20, log_to_driver=False, logging_level="WARNING"))
    yield ray
    ray.shutdown()


# --- two workers (`pytest -n 2`, pytest-xdist) ---------------------------------------------------------------
# A module runs whole on one worker (its module fixtures are built once), every Ray test runs on one worker (one
# local cluster, not two competing for the cores), and the longest units start first so neither worker is left
# with a long module at the end. The workers share the cores' threads (a worker's torch: cores / workers).
RAY_TESTS = ("tests/data/test_ray_engine.py", "tests/train/test_ray_train.py",
             "tests/orchestration/test_dagster.py::test_data_steps_and_training_on_ray")
# Longest first (a unit's seconds under two workers, measured in one run in a machine's slower hours): the units
# left for the end are the short ones, so the workers finish together. A unit not named here takes under 12 s.
LONGEST_FIRST = (
    "ray",  # 335
    "tests/test_dvc_repro.py",  # 300
    "tests/train/test_pretrain_llm.py",  # 180
    "tests/registry/test_registration.py",  # 90
    "tests/orchestration/test_dagster.py", "tests/orchestration/test_retraining_loop.py",  # 60-66 each
    "tests/train/test_training.py", "tests/train/test_fast_paths.py",  # 54-56 each
    "tests/test_pipeline.py", "tests/train/test_distributed.py", "tests/train/test_pretrain_vision.py",
    "tests/test_bench_train_step.py", "tests/train/test_mixed_ranks.py", "tests/eval/test_report.py",  # 39-47 each
    "tests/orchestration/test_ui.py", "tests/test_cli.py", "tests/data/test_ingest_hardening.py",  # 20-37 each
    "tests/train/test_checkpoint_damage.py", "tests/train/test_official_recipe.py",
    "tests/orchestration/test_pools_and_retries.py")  # 12-14 each


def xdist_scope_of(nodeid: str) -> str:
    return "ray" if nodeid.startswith(RAY_TESTS) else nodeid.split("::")[0]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class LongestFirstScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return xdist_scope_of(nodeid)

        def _assign_work_unit(self, node):
            self.workqueue.move_to_end(min(self.workqueue, key=longest_first_rank), last=False)
            super()._assign_work_unit(node)

    return LongestFirstScheduling(config, log)


def longest_first_rank(scope: str) -> int:
    return LONGEST_FIRST.index(scope) if scope in LONGEST_FIRST else len(LONGEST_FIRST)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """As the `owl` command does (cli.run): the interpreter's last garbage collections skip what is alive now
    (seconds for a worker that loaded the whole stack)."""
    import gc

    gc.freeze()


if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # 2 cores, 2 workers: 1 thread each (2 each: over 12 min)
    WORKER_THREADS = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    torch.set_num_threads(WORKER_THREADS)
    # The processes a test starts (`owl step` under DVC, the benches, Ray's workers) get the same share: with a
    # thread per core each, their threads wait on one another while the other worker holds a core (the DVC
    # module beside one busy core: 226 s -> 190 s).
    os.environ.setdefault("OMP_NUM_THREADS", str(WORKER_THREADS))
