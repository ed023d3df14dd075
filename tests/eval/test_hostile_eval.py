"""Hostile OwlEval folders and requests to the served model (issue 14, items 13-16)."""

import base64
import io
import json
import types

import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

from owl_pipeline.eval.owleval import answer_eval_set, load_eval_set
from owl_pipeline.eval.report import Scorers, build_report
from owl_pipeline.eval.report_html import render_html
from owl_pipeline.registry.pyfunc_model import OwlChatModel, ServingLimits

from ..data.test_ingest_hardening import pixel_bomb
from .test_report import owl_tiny  # noqa: F401 - the fixture is used by name


def jpeg(color=(200, 30, 30), size=(48, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def hostile_set(tmp_path):
    folder = tmp_path / "owleval"
    (folder / "cases").mkdir(parents=True)
    (folder / "cases/good.jpg").write_bytes(jpeg())
    (folder / "cases/not_an_image.jpg").write_bytes(b"just text")
    (folder / "cases/bomb.png").write_bytes(pixel_bomb())
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(jpeg((10, 250, 10)))
    names = ["good.jpg", "../secret.jpg", str(secret), "not_an_image.jpg", "missing.jpg", "bomb.png"]
    questions = [{"image": name, "question_id": i + 1, "question": "What color?", "ability": "b"}
                 for i, name in enumerate(names)]
    questions.append({"image": "good.jpg", "question_id": 7, "question": "Why? " * 2_000_000, "ability": "b"})
    (folder / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return folder, secret


def test_bad_images_and_escaping_names_become_problems_and_the_rest_is_answered(owl_tiny, hostile_set):  # noqa: F811
    folder, secret = hostile_set
    eval_set = load_eval_set(folder)
    answers = answer_eval_set(*owl_tiny, eval_set, "tiny", max_new_tokens=2, log=lambda *_: None,
                              max_question_tokens=64)
    answered = {a["question_id"] for a in answers if a["answer"] or a["question_id"] in (1, 7)}
    assert {1, 7} <= answered and all(not a["answer"] for a in answers if a["question_id"] in (2, 3, 4, 5, 6))
    problems = "\n".join(eval_set.problems)
    assert problems.count("leaves cases/") == 2 and "not_an_image.jpg cannot be used" in problems
    assert "missing.jpg not found" in problems and "bomb.png cannot be used (too_many_pixels" in problems
    assert "question 7 is longer than 64 tokens: cut to them" in problems
    page = render_html(build_report(eval_set, answers, "tiny", Scorers(), log=lambda *_: None), folder / "cases")
    # good.jpg (two questions) alone: the file outside cases/ is never embedded
    assert page.count('<img class="case"') == page.count('alt="good.jpg"') == 2 and "secret.jpg\"" not in page
    assert page.count("refused name") == 2 and "image not usable" in page


@pytest.fixture
def served(owl_tiny, tmp_path):  # noqa: F811
    """The pyfunc model as `mlflow models serve` loads it, without the server: (model, image root folder)."""
    from owl_pipeline.model.builders import save_pretrained

    model_dir = save_pretrained(*owl_tiny, tmp_path / "owl")
    root = tmp_path / "allowed"
    root.mkdir()
    (root / "red.jpg").write_bytes(jpeg())
    (tmp_path / "private.jpg").write_bytes(jpeg((0, 0, 0)))

    def load(limits: ServingLimits) -> OwlChatModel:
        chat = OwlChatModel()
        chat.load_context(types.SimpleNamespace(artifacts={"owl_model": str(model_dir)},
                                                model_config=limits.to_config()))
        return chat

    return load, root, tmp_path


def ask(chat, image, question="What color?", params=None, rows=1):
    import pandas as pd

    return chat.predict(None, pd.DataFrame({"image": [image] * rows, "question": [question] * rows}),
                        params=params or {"max_new_tokens": 2})


def rejection(chat, *args, **kwargs) -> MlflowException:
    with pytest.raises(MlflowException) as caught:
        ask(chat, *args, **kwargs)
    error = caught.value
    assert error.get_http_status_code() == 400 and "Traceback" not in error.serialize_as_json()
    return error


def test_the_served_model_takes_base64_only_and_never_tells_whether_a_path_exists(served):
    load, root, tmp_path = served
    chat = load(ServingLimits())
    assert len(ask(chat, base64.b64encode(jpeg()).decode())) == 1
    messages = {rejection(chat, str(path)).message for path in (root / "red.jpg", tmp_path / "private.jpg",
                                                                  tmp_path / "does-not-exist.jpg")}
    messages.add(rejection(chat, base64.b64encode(b"not an image").decode()).message)
    assert messages == {"image must be base64-encoded image bytes"}


def test_paths_only_under_an_allow_listed_root(served):
    load, root, tmp_path = served
    chat = load(ServingLimits(image_root=str(root)))
    assert len(ask(chat, "red.jpg")) == 1 and len(ask(chat, str(root / "red.jpg"))) == 1
    for outside in ("../private.jpg", str(tmp_path / "private.jpg")):
        assert "image root" in rejection(chat, outside).message


def test_pixel_bombs_rows_and_token_limits_are_refused(served):
    load, _, _ = served
    chat = load(ServingLimits(max_rows=2, max_new_tokens=8, max_question_tokens=16))
    assert "more than" in rejection(chat, base64.b64encode(pixel_bomb()).decode()).message
    image = base64.b64encode(jpeg()).decode()
    assert "1 to 2 rows per request, got 3" in rejection(chat, image, rows=3).message
    assert "max_new_tokens must be within 1..8" in rejection(chat, image, params={"max_new_tokens": 9}).message
    assert "longer than 16 tokens" in rejection(chat, image, question="why " * 100).message


def test_no_rows_a_deep_or_malformed_history_and_missing_columns_are_one_plain_400(served):
    """Issue 24 item 11."""
    import pandas as pd

    load, _, _ = served
    chat = load(ServingLimits())
    image = base64.b64encode(jpeg()).decode()

    def refused(frame, params=None) -> str:
        with pytest.raises(MlflowException) as caught:
            chat.predict(None, frame, params=params or {"max_new_tokens": 2})
        assert caught.value.get_http_status_code() == 400 and "Traceback" not in caught.value.serialize_as_json()
        return caught.value.message

    assert "got 0" in refused(pd.DataFrame({"image": [], "question": []}))
    for history in ("[" * 100_000 + "]" * 100_000, '[["q"]]', '[["q", 5]]', '{"q": "a"}', "[[[]]]"):
        frame = pd.DataFrame({"image": [image], "question": ["What?"], "history": [history]})
        assert refused(frame).startswith("history must be JSON")
    assert "lacks the column(s) ['question']" in refused(pd.DataFrame({"image": [image]}))
    assert "must be an integer" in refused(pd.DataFrame({"image": [image], "question": ["q"]}),
                                           params={"max_new_tokens": "many"})


def test_a_history_as_role_and_content_messages_is_read_as_the_pairs_it_holds():
    """Issue 43 item 11: the form chat clients send, beside [[question, answer], ...]."""
    import json

    from owl_pipeline.registry.pyfunc_model import parse_history

    messages = [{"role": "user", "content": "What color?"}, {"role": "assistant", "content": "red"},
                {"role": "human", "content": "And the shape?"}, {"role": "ai", "content": "a circle"}]
    assert parse_history(json.dumps(messages)) == [("What color?", "red"), ("And the shape?", "a circle")]
    assert parse_history(json.dumps([["What color?", "red"]])) == [("What color?", "red")]
    for bad in (messages[:3], [messages[1], messages[0]], [{"role": "user", "content": 5}, messages[1]],
                [{"role": "system", "content": "x"}, messages[1]]):
        with pytest.raises(MlflowException) as caught:
            parse_history(json.dumps(bad))
        assert caught.value.get_http_status_code() == 400 and '{"role": "user"' in caught.value.message


def test_a_long_history_loses_its_oldest_turns_never_the_question(served):
    """Issue 24 item 12: turns and tokens of history are capped, oldest first; the question and its AI: stay."""
    import json

    load, _, _ = served
    chat = load(ServingLimits(max_history_turns=4, max_history_tokens=400))
    many = [[f"old question {i}", f"old answer {i}"] for i in range(3000)]
    huge = [["a huge turn " * 200_000, "x"], ["recent question", "recent answer"]]
    for history, kept in ((many, 4), (huge, 1)):
        prompt = chat._prompt({"image": base64.b64encode(jpeg()).decode(), "question": "What now?",
                               "history": json.dumps(history)})
        text = chat.processor.decode(prompt.input_ids)
        assert text.rstrip().endswith("Human: What now?\nAI:")
        assert text.count("Human: ") - 2 == kept  # the image turn and the question besides the kept ones
