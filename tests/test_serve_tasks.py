"""The task endpoints of `biogpt serve`: a fine-tuned model's task over HTTP answers what
`biogpt extract` (`biogpt.tasks.evaluation.extract`) answers for the same text, with the
task's parse of it as JSON, streamed or not; every misuse is an error in OpenAI's shape.

The task models are `mini` with a task's prompt tokens, saved with the task's record
(`task.json`) as `biogpt finetune` saves one. Two are taught one answer for `TEXT` (a few
Adam steps on that one example) so that their relations and entities are not empty; the
others answer what `mini` writes, which parses to little but is just as deterministic.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="biogpt serve needs the `serve` extra (fastapi)")
pytest.importorskip("uvicorn", reason="biogpt serve needs the `serve` extra (uvicorn)")
httpx = pytest.importorskip("httpx", reason="the server tests call it with httpx")

from test_serve import KEY, Served, assert_openai_error, load_mini, serve  # noqa: E402

from biogpt import BioGPT, tasks  # noqa: E402
from biogpt.cli.serve import loader, model_tasks  # noqa: E402
from biogpt.errors import BioGPTError  # noqa: E402
from biogpt.serve.settings import ServeSettings  # noqa: E402
from biogpt.tasks import Example, Task, encode_example  # noqa: E402
from biogpt.tasks.evaluation import extract, structure  # noqa: E402
from biogpt.tasks.qa import PubMedQA  # noqa: E402
from biogpt.tokenizer import Tokenizer  # noqa: E402

TEXT = "Famotidine-associated delirium in six patients."
# what the taught models write for TEXT
TAUGHT = {
    "bc5cdr": "the relation between famotidine and delirium exists.",
    "ner": "the entities are famotidine (chemical); delirium (disease).",
}
QUESTION = "Does famotidine cause delirium?"
CONTEXTS = ["Six patients became delirious on famotidine.", "All recovered when it was stopped."]
TEACHING_STEPS = 10  # Adam steps at 3e-3 between checks of what the model writes
MOST_TEACHING_STEPS = 80


def teach(model: BioGPT, tokenizer: Tokenizer, task: Task, target: str) -> None:
    """Train `model` on one example, `TEXT` -> `target` (the whole sequence's loss) until
    greedy decoding writes `target` back."""
    example = Example(id="0", source=task.source_of_text(TEXT), target=target, gold=None)
    ids, _ = encode_example(tokenizer, task, example)
    tokens = torch.tensor([ids])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(0, MOST_TEACHING_STEPS, TEACHING_STEPS):
        for _ in range(TEACHING_STEPS):
            logits = model(tokens[:, :-1]).logits[0]  # (T-1, V)
            loss = torch.nn.functional.cross_entropy(logits, tokens[0, 1:])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        # a copy decodes: decoding prepares a model for inference, which training refuses
        (written,) = extract(copy.deepcopy(model).eval(), tokenizer, task, [TEXT], 32)
        if written["answer"] == target:
            break
    else:
        raise AssertionError(f"mini did not learn to write {target!r}: {written['answer']!r}")
    model.eval()


def task_model(root: Path, name: str) -> Path:
    """`root/name`: `mini` with the task's prompt tokens and its `task.json`, taught
    `TAUGHT[name]` when there is one. Made once per test session (the record is written
    last, so a directory that has it is complete)."""
    path = root / name
    if (path / tasks.TASK_FILE).is_file():
        return path
    task = tasks.get(name)
    threads = torch.get_num_threads()
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the prompt tokens' new rows are random
        torch.set_num_threads(1)  # steps this small only wait for each other's threads
        try:
            model = BioGPT.from_pretrained("mini")
            tokenizer = Tokenizer.from_pretrained("biogpt")
            tokenizer.add_tokens(task.prompt())
            model.resize_vocab(len(tokenizer))
            if name in TAUGHT:
                teach(model, tokenizer, task, TAUGHT[name])
        finally:
            torch.set_num_threads(threads)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    tasks.write_task_record(path, task)
    return path


def task_models(factory: pytest.TempPathFactory, names: tuple[str, ...]) -> dict[str, Path]:
    """The task models `names`, shared by every module of the session."""
    root = factory.getbasetemp() / "serve-task-models"
    return {name: task_model(root, name) for name in names}


def serve_models(models: dict[str, Path]):
    """`serve` with `mini` and `models`, their tasks read as `biogpt serve` reads them."""
    specs = {name: str(path) for name, path in models.items()}
    loaders = {"mini": load_mini, **{name: loader(path, None) for name, path in specs.items()}}
    return serve(loaders, ServeSettings(api_keys=(KEY,)), tasks=model_tasks(specs))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return task_models(tmp_path_factory, ("bc5cdr", "ner", "hoc", "pubmedqa"))


@pytest.fixture(scope="module")
def server(models) -> Iterator[Served]:
    with serve_models(models) as running:
        yield running


def post(server: Served, kind: str, body: dict, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{server.url}/v1/tasks/{kind}", json=body, headers=headers, timeout=120)


def expected(path: Path, source: str) -> tuple[str, object]:
    """What `extract` answers for `source` with the model at `path` (loaded as the server
    loads it), and the task's parse of that answer as the endpoint's JSON."""
    model, tokenizer = loader(str(path), None)()
    task = tasks.recorded_task(path)
    assert task is not None
    (result,) = extract(model, tokenizer, task, [source])
    example = Example(id="", source=task.source_of_text(source), target="", gold=None)
    value = task.parse(result["answer"], example).value
    if task.name == "ner":
        return result["answer"], [{"text": text, "type": kind} for text, kind in value]
    return result["answer"], structure(value)


REQUESTS = [
    ("extract", "bc5cdr", {"text": TEXT}, TEXT),
    ("entities", "ner", {"text": TEXT}, TEXT),
    ("classify", "hoc", {"text": TEXT}, TEXT),
    ("answer", "pubmedqa", {"question": QUESTION, "context": CONTEXTS},
     PubMedQA.format_source(QUESTION, CONTEXTS)),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "name", "body", "source"), REQUESTS, ids=[r[1] for r in REQUESTS])
def test_a_task_answers_what_extract_answers(server, models, kind, name, body, source) -> None:
    answer, parsed = expected(models[name], source)
    response = post(server, kind, {"model": name, **body})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["answer"] == answer
    assert result["parsed"] == parsed
    assert (result["object"], result["model"], result["task"]) == (f"task.{kind}", name, name)
    assert result["usage"]["completion_tokens"] > 0


def test_taught_models_give_relations_and_entities(server) -> None:
    relations = post(server, "extract", {"model": "bc5cdr", "text": TEXT}).json()
    assert relations["answer"] == TAUGHT["bc5cdr"]
    assert relations["parsed"] == [{"head": "famotidine", "tail": "delirium"}]
    assert (relations["unparseable"], relations["finish_reason"]) == (0, "stop")
    entities = post(server, "entities", {"model": "ner", "text": TEXT}).json()
    assert entities["parsed"] == [
        {"text": "famotidine", "type": "chemical"},
        {"text": "delirium", "type": "disease"},
    ]


def test_a_context_string_is_one_passage(server, models) -> None:
    context = " ".join(CONTEXTS)
    answer, _ = expected(models["pubmedqa"], PubMedQA.format_source(QUESTION, [context]))
    body = {"model": "pubmedqa", "question": QUESTION, "context": context}
    assert post(server, "answer", body).json()["answer"] == answer


def test_a_streamed_task_sends_the_text_then_the_whole_answer(server) -> None:
    whole = post(server, "extract", {"model": "bc5cdr", "text": TEXT}).json()
    body = {"model": "bc5cdr", "text": TEXT, "stream": True}
    with httpx.stream("POST", server.url + "/v1/tasks/extract", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:  # fmt: skip
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    *chunks, last = [json.loads(e) for e in events[:-1]]
    assert len(chunks) > 1 and all(c["object"] == "task.chunk" for c in chunks)
    assert "".join(c["text"] for c in chunks) == whole["answer"]
    for key in ("id", "created"):
        del last[key], whole[key]
    assert last == whole


def test_models_name_their_task_and_its_endpoint(server) -> None:
    listed = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    tasks_of = {m["id"]: m["task"] for m in listed.json()["data"]}
    assert tasks_of["mini"] is None
    assert tasks_of["bc5cdr"] == {
        "name": "bc5cdr",
        "kind": "extract",
        "endpoint": "/v1/tasks/extract",
    }
    assert tasks_of["pubmedqa"]["endpoint"] == "/v1/tasks/answer"
    assert tasks_of["hoc"]["kind"] == "classify"
    assert tasks_of["ner"]["kind"] == "entities"


@pytest.mark.parametrize(
    ("kind", "body", "status", "param", "words"),
    [
        ("extract", {"model": "mini", "text": TEXT}, 400, "model", ["'mini'", "records no task"]),
        ("answer", {"model": "bc5cdr", "question": "q", "context": "c"}, 400, "model",
         ["bc5cdr", "/v1/tasks/extract"]),
        ("entities", {"model": "maxi", "text": TEXT}, 404, "model", ["maxi"]),
        ("extract", {"model": "bc5cdr"}, 400, "text", []),
        ("extract", {"model": "bc5cdr", "text": "  "}, 400, "text", ["empty"]),
        ("extract", {"model": "bc5cdr", "text": TEXT, "colour": "red"}, 400, "colour", []),
        ("extract", {"model": "bc5cdr", "text": TEXT, "max_tokens": 0}, 400, "max_tokens", []),
        ("extract", {"model": "bc5cdr", "text": TEXT, "max_tokens": 1024}, 400, "max_tokens",
         ["positions"]),
        ("answer", {"model": "pubmedqa", "question": "q"}, 400, "context", []),
        ("answer", {"model": "pubmedqa", "question": "q", "context": []}, 400, "context", []),
        ("answer", {"model": "pubmedqa", "question": "q", "context": "c", "long_answer": "x"},
         400, "long_answer", ["pubmedqa-rf"]),
        ("classify", {"model": "hoc", "text": 5}, 400, "text", []),
    ],
)  # fmt: skip
def test_misuse_is_an_error_in_openai_shape(server, kind, body, status, param, words) -> None:
    response = post(server, kind, body)
    assert_openai_error(response, status, param)
    message = response.json()["error"]["message"]
    assert all(word in message for word in words), message


def test_the_task_endpoints_need_the_key(server) -> None:
    assert_openai_error(post(server, "extract", {"model": "bc5cdr", "text": TEXT}, key=None), 401)


def test_serve_reads_each_models_task_record(models, tmp_path) -> None:
    found = model_tasks({"mini": "mini", "ner": str(models["ner"])})
    assert found["mini"] is None
    assert found["ner"] is not None and found["ner"].name == "ner"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / tasks.TASK_FILE).write_text("{}")
    with pytest.raises(BioGPTError, match=r"task\.json"):
        model_tasks({"broken": str(broken)})


def test_the_page_is_served_without_the_key_and_names_no_other_host(server) -> None:
    """The page's files (the browser test in test_serve_page.py drives them), each under
    a Content-Security-Policy of this server only; no other path reads a file."""
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for path in ("/", "/static/page.js", "/static/page.css"):
        text = httpx.get(server.url + path).text
        assert "http://" not in text and "https://" not in text, path
    for path in ("/static/", "/static/app.py", "/static/..%2Fapp.py", "/index.html"):
        assert_openai_error(httpx.get(server.url + path), 404)
