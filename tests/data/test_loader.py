import itertools

import torch

from owl_pipeline.data.instructions import InstructionSource, build_instruction_table
from owl_pipeline.data.loader import (CaptionPairDataset, ConversationDataset, ResumableSampler, make_loader)

from ..conftest import quiet


def batches(dataset, count, workers=0, **sampler):
    loader = make_loader(dataset, batch_size=4, sampler=ResumableSampler(len(dataset), seed=5, **sampler),
                         num_workers=workers)
    return list(itertools.islice(iter(loader), count))


def same(a, b):
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x) and len(a) == len(b)


def test_pairs_load_deterministically_in_workers_and_resume(raw_pairs, processor):
    uri, _ = raw_pairs
    dataset = CaptionPairDataset(uri, processor, train=True, seed=1)
    first = batches(dataset, 3)
    assert same(first, batches(dataset, 3))
    assert same(first, batches(dataset, 3, workers=1))  # a spawned worker sees the same samples
    resumed = batches(dataset, 2, position=4)
    assert same(first[1:], resumed)
    assert first[0]["pixel_values"].shape == (4, 3, 64, 64) and (first[0]["labels"] != -100).any()


def test_workers_read_the_version_that_was_counted_while_the_table_is_rewritten(raw_pairs, processor, tmp_path):
    """Issue 24 item 16: a rewrite of the table during training (a new Lance version) changes nothing read."""
    import lance

    uri, _ = raw_pairs
    copy = tmp_path / "pairs.lance"
    lance.write_dataset(lance.dataset(str(uri)).to_table().slice(0, 12), str(copy))
    dataset = CaptionPairDataset(copy, processor, train=False, seed=1)
    first = batches(dataset, 2)
    lance.write_dataset(lance.dataset(str(uri)).to_table().slice(40, 3), str(copy), mode="overwrite")
    assert len(dataset) == 12 and same(first, batches(dataset, 2, workers=1))  # a fresh worker, the old rows


def test_sampler_crosses_epochs_and_reports_where_to_resume():
    sampler = ResumableSampler(5, seed=0)
    stream = list(itertools.islice(iter(sampler), 12))
    assert sorted(i % 5 for i in stream[:5]) == list(range(5)) and all(i >= 5 for i in stream[5:10])
    assert sampler.state_after(12) == {"epoch": 2, "position": 2}
    resumed = ResumableSampler(5, seed=0, **sampler.state_after(7))
    assert list(itertools.islice(iter(resumed), 5)) == stream[7:12]


def test_conversations_feed_the_model(corpus, processor, model, tmp_path):
    root, _ = corpus
    uri = tmp_path / "instructions.lance"
    build_instruction_table([InstructionSource("llava", root / "instructions/llava.json"),
                             InstructionSource("alpaca", root / "instructions/alpaca.json")], uri, log=quiet)
    dataset = ConversationDataset(uri, processor, train=False)
    batch = batches(dataset, 1)[0]
    assert torch.isfinite(model(**batch).loss)


def test_mixture_sampler_holds_the_text_only_share_and_resumes():
    import numpy as np

    from owl_pipeline.data.loader import MixtureSampler

    text_only = np.array([True] * 10 + [False] * 90)
    sampler = MixtureSampler(text_only, 0.5, seed=3)
    drawn = list(itertools.islice(iter(sampler), 400))
    share = np.mean([text_only[i % 100] for i in drawn])
    assert 0.4 < share < 0.6  # 10% of the rows, half of the draws
    resumed = MixtureSampler(text_only, 0.5, seed=3, **sampler.state_after(150))
    assert list(itertools.islice(iter(resumed), 50)) == drawn[150:200]
    halves = [MixtureSampler(text_only, 0.5, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    firsts = [list(itertools.islice(iter(h), 100)) for h in halves]
    assert sorted(firsts[0] + firsts[1]) == sorted(drawn[:200])


def test_length_grouping_cuts_padding_and_resumes(corpus, processor, tmp_path):
    import numpy as np

    from owl_pipeline.data.loader import LengthGroupedSampler

    root, _ = corpus
    uri = tmp_path / "instructions.lance"
    build_instruction_table([InstructionSource("owl", root / "instructions/owl.jsonl"),
                             InstructionSource("alpaca", root / "instructions/alpaca.json")], uri, log=quiet)
    dataset = ConversationDataset(uri, processor, train=False)
    lengths = dataset.approximate_lengths()
    true_lengths = [len(dataset[i].input_ids) for i in range(len(dataset))]
    assert np.corrcoef(lengths, true_lengths)[0, 1] > 0.9  # a good enough proxy to group by

    def padding_share(sampler):
        loaded = itertools.islice(iter(make_loader(dataset, batch_size=4, sampler=sampler)), 10)
        masks = [batch["attention_mask"] for batch in loaded]
        return 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)

    grouped = LengthGroupedSampler(lengths, window=16, seed=2)
    assert padding_share(grouped) < padding_share(ResumableSampler(len(dataset), seed=2)) / 2
    epoch = list(itertools.islice(iter(grouped), len(dataset)))
    assert sorted(epoch) == list(range(len(dataset)))  # every row once per epoch, only the order changes
    resumed = LengthGroupedSampler(lengths, window=16, seed=2, **grouped.state_after(12))
    assert list(itertools.islice(iter(resumed), 18)) == epoch[12:30]
