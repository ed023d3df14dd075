import pytest

from owl_pipeline.config import SyntheticConfig
from owl_pipeline.data.ingest import find_shards, ingest
from owl_pipeline.data.synthetic import generate_corpus

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
