"""Document RAG: language-aware search terms, the bm25 retriever finds the passage holding the answer
(English and Chinese), documents of every format are read and chunked, held-out answers in the corpus
are found, retriever settings are checked with the config, and ``baselines=[rag]`` is a column."""

import json
import logging
import random
import zlib

import pytest

import tuneforge
from tuneforge.errors import ConfigError
from tuneforge.evaluation import prompts_and_references, record_predictions, record_scores
from tuneforge.evaluation.retrieval import rank_all, search_terms
from tuneforge.plugins import documents, rag
from tuneforge.plugins.retrievers import BM25Config, BM25Retriever, DenseConfig, build_dense

from helpers import run_cli


def chat(question, answer, source, system=None):
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages, "source": source}


# ---------------------------------------------------------------------------
# Search terms
# ---------------------------------------------------------------------------


def test_search_terms_are_words_and_cjk_character_bigrams():
    assert search_terms("Locker K007x, please!") == ["locker", "k007x", "please"]
    assert search_terms("法院判决") == ["法", "院", "判", "决", "法院", "院判", "判决"]
    assert search_terms("東京 の 裁判所") == ["東", "京", "東京", "の", "裁", "判", "所", "裁判", "判所"]
    assert search_terms("대법원 판결") == ["대", "법", "원", "대법", "법원", "판", "결", "판결"]
    # mixed text: Latin words stay words, the Chinese run next to them is cut apart from them
    assert search_terms("F.3d是联邦") == ["f", "3d", "是", "联", "邦", "是联", "联邦"]
    assert search_terms("Café NAÏVE") == ["café", "naïve"]
    assert search_terms("") == [] and search_terms("  ,;  ") == []


# ---------------------------------------------------------------------------
# The passage holding the answer is retrieved (English and Chinese)
# ---------------------------------------------------------------------------

NAMES_EN = ["Amber", "Birch", "Cobalt", "Dune", "Ember", "Fjord", "Garnet", "Harbor", "Indigo", "Juniper",
            "Kestrel", "Lagoon", "Marble", "Nectar", "Onyx", "Pebble", "Quartz", "Raven", "Saffron", "Tundra",
            "Umber", "Violet"]
NAMES_ZH = ["青龙", "白虎", "朱雀", "玄武", "麒麟", "凤凰", "长江", "黄河", "泰山", "华山", "昆仑", "峨眉",
            "西湖", "洞庭", "紫金", "天山", "珠江", "太湖", "庐山", "黄山", "嵩山", "衡山"]


def _code(rng: random.Random) -> str:
    return "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(8))


def synthetic_corpus(language: str, n_queries: int = 20, seed: int = 0) -> tuple:
    """``(passages, queries, answers)``: one passage per vault with its code among distractor
    passages (other vaults' opening hours, the same words around other names); query i asks for
    vault i's code, which only passage i holds."""
    rng = random.Random(seed)
    names = NAMES_EN if language == "en" else NAMES_ZH
    codes = [_code(rng) for _ in names]
    if language == "en":
        facts = [f"The access code of the {name} vault is {code}." for name, code in zip(names, codes)]
        distractors = [f"The {name} vault opens at {8 + i % 4} o'clock; its access code is kept by the guard."
                       for i, name in enumerate(names)]
        distractors += ["Vault codes are changed every year.", "Every vault has an access code and a guard."]
        queries = [f"What is the access code for vault {name}?" for name in names[:n_queries]]
    else:
        facts = [f"{name}保险库的密码是{code}。" for name, code in zip(names, codes)]
        distractors = [f"{name}保险库每天{8 + i % 4}点开门，密码由保安保管。" for i, name in enumerate(names)]
        distractors += ["保险库的密码每年更换一次。", "每个保险库都有密码和保安。"]
        queries = [f"请问{name}保险库的密码是多少？" for name in names[:n_queries]]
    passages = distractors[:len(distractors) // 2] + facts + distractors[len(distractors) // 2:]
    rng.shuffle(passages)
    return passages, queries, codes[:n_queries]


@pytest.mark.parametrize("language", ["en", "zh"])
def test_bm25_retrieves_the_passage_holding_the_answer(language):
    passages, queries, answers = synthetic_corpus(language)
    ranked, ties = rank_all(BM25Retriever(BM25Config()), passages, queries, k=1)
    top1 = sum(answer in passages[order[0]] for order, answer in zip(ranked, answers)) / len(queries)
    zero_shot = sum(answer in query for query, answer in zip(queries, answers)) / len(queries)
    assert len(queries) == 20 and zero_shot == 0.0
    assert top1 >= 0.9, top1
    assert ties == []


def test_chinese_needs_the_bigrams_a_word_tokeniser_finds_nothing():
    """With ``\\w+`` words (the old tokeniser) a Chinese question is one "word" that matches no
    passage: every query is a tie and retrieval is the corpus order."""
    import re

    class WordBM25(BM25Retriever):
        def index(self, passages):
            import bm25s

            self._size = len(passages)
            self._index = bm25s.BM25()
            self._index.index([re.findall(r"\w+", p.lower()) for p in passages], show_progress=False)

        def scores(self, query):
            import numpy as np

            known = [t for t in re.findall(r"\w+", query.lower()) if t in self._index.vocab_dict]
            return np.asarray(self._index.get_scores(known), dtype=float) if known else np.zeros(self._size)

    passages, queries, answers = synthetic_corpus("zh")
    ranked, ties = rank_all(WordBM25(BM25Config()), passages, queries, k=1)
    assert len(ties) == len(queries)
    assert sum(answer in passages[order[0]] for order, answer in zip(ranked, answers)) <= 1


def test_bm25_keeps_the_order_of_ties_and_scores_zero_without_shared_terms():
    retriever = BM25Retriever(BM25Config())
    retriever.index(["alpha beta", "gamma", "", "beta beta delta"])
    hits = retriever.search("beta", 4)
    assert [i for i, _ in hits] == [3, 0, 1, 2] and hits[0][1] > hits[1][1] > 0 == hits[2][1] == hits[3][1]
    assert retriever.search("nothing shared", 2) == [(0, 0.0), (1, 0.0)]
    ranked, ties = rank_all(retriever, ["alpha", "beta"], ["beta", "zeta", ""], k=2)
    assert ranked == [[1, 0], [0, 1], [0, 1]] and ties == [1, 2]
    assert rank_all(retriever, [], ["beta"], k=2) == ([[]], [])

    class OffByOne(BM25Retriever):
        def search(self, query, k):
            return [(i + 1, s) for i, s in super().search(query, k)]

    with pytest.raises(tuneforge.PluginError, match=r"search returned passage position 2 for 2 passages"):
        rank_all(OffByOne(BM25Config()), ["alpha", "beta"], ["alpha"], k=2)


# ---------------------------------------------------------------------------
# Documents and chunks
# ---------------------------------------------------------------------------


def test_text_paragraphs_chunks_respect_the_size_and_overlap(tmp_path):
    words = [f"w{i:03d}" for i in range(300)]
    text = "\n\n".join(" ".join(words[i:i + 30]) for i in range(0, 300, 30))  # 10 paragraphs of ~150 chars
    text += "\n\n" + " ".join(f"long{i:03d}" for i in range(200))  # one paragraph of ~1600 chars
    paragraphs = documents.text_paragraphs(text)
    assert [p.location for p in paragraphs[:3]] == ["line 1", "line 3", "line 5"] and len(paragraphs) == 11
    chunks = documents.chunk_paragraphs(paragraphs, size=400, overlap=60, source="a.txt")
    assert all(len(c.text) <= 400 for c in chunks)
    joined = " ".join(c.text for c in chunks).split()
    assert set(words) | {f"long{i:03d}" for i in range(200)} == set(joined)  # nothing lost
    pieces = [c for c in chunks if c.text.startswith("long") or "long000" in c.text]
    assert len(pieces) >= 4
    for first, second in zip(pieces, pieces[1:]):  # consecutive pieces share their boundary words
        assert first.text.split()[-1] in second.text.split()[:12]
    packed = chunks[0].text.split("\n\n")
    carried = chunks[1].text.split("\n\n")[0]  # the next chunk starts with the end of this one
    assert len(packed) == 2 and packed[-1].endswith(" " + carried) and 50 <= len(carried) <= 60
    assert documents.split_text("abcdefghij" * 5, 20, 0) == ["abcdefghij" * 2] * 2 + ["abcdefghij"]


def test_markdown_keeps_headings_with_every_chunk(tmp_path):
    md = ("# Citation rules\n\nA citation names the case first.\n\n## Reporters\n\n"
          "Write F.3d for the Federal Reporter, Third Series.\n\n```\n# not a heading\n```\n\n"
          "### Old series\n\nF.2d for the Second Series.\n\n## Courts\n\nWrite 9th Cir. for the Ninth Circuit.\n")
    (tmp_path / "rules.md").write_text(md)
    paragraphs = documents.read_paragraphs(tmp_path / "rules.md")
    assert [(p.headings, p.location) for p in paragraphs] == [
        (("Citation rules",), "line 3"), (("Citation rules", "Reporters"), "line 7"),
        (("Citation rules", "Reporters"), "line 9"), (("Citation rules", "Reporters", "Old series"), "line 15"),
        (("Citation rules", "Courts"), "line 19")]
    assert paragraphs[2].text == "``` # not a heading ```"
    chunks = documents.chunk_paragraphs(paragraphs, 500, 50, source="rules.md")
    assert len(chunks) == 4  # a chunk never spans two sections
    assert chunks[3].label() == "rules.md:line 19 (Citation rules > Courts)"
    assert chunks[3].searchable().startswith("Citation rules\nCourts\nWrite 9th Cir.")


def test_html_is_read_as_visible_text_with_sections(tmp_path):
    html = ("<html><head><title>Rules</title><style>p {color: red}</style></head><body>"
            "<h1>Citation rules</h1><p>Cite the case&nbsp;first &amp; the court last.</p>"
            "<script>var secret = 'F.9th';</script><h2>Courts</h2><ul><li>Ninth Circuit: 9th Cir.</li>"
            "<li>Second Circuit: 2d Cir.</li></ul><table><tr><th>Reporter</th><th>Abbreviation</th></tr>"
            "<tr><td>Federal Reporter, Third Series</td><td>F.3d</td></tr></table></body></html>")
    (tmp_path / "rules.html").write_text(html)
    paragraphs = documents.read_paragraphs(tmp_path / "rules.html")
    assert [p.text for p in paragraphs] == ["Cite the case first & the court last.", "Ninth Circuit: 9th Cir.",
                                            "Second Circuit: 2d Cir.", "Reporter | Abbreviation",
                                            "Federal Reporter, Third Series | F.3d"]
    assert paragraphs[0].headings == ("Citation rules",) and paragraphs[-1].headings == ("Citation rules", "Courts")
    assert "secret" not in " ".join(p.text for p in paragraphs) and "Rules" not in paragraphs[0].text


def minimal_pdf(pages: list) -> bytes:
    """A valid PDF whose pages each show one line of text (Helvetica), written by hand."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", None, "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream.decode()}\nendstream")
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {len(objects)} 0 R "
                       "/Resources << /Font << /F1 3 0 R >> >> >>")
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def test_pdf_pages_are_read_with_pypdf(tmp_path):
    pytest.importorskip("pypdf")
    (tmp_path / "rules.pdf").write_bytes(minimal_pdf(["Write F.3d for the Third Series.", "Write 9th Cir. always."]))
    paragraphs = documents.read_paragraphs(tmp_path / "rules.pdf")
    assert [(p.text, p.location) for p in paragraphs] == [("Write F.3d for the Third Series.", "page 1"),
                                                          ("Write 9th Cir. always.", "page 2")]
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\nnot really")
    with pytest.raises(tuneforge.DataError, match=r"broken.pdf: not a readable PDF"):
        documents.read_paragraphs(tmp_path / "broken.pdf")


def test_pdf_without_pypdf_names_the_extra(tmp_path, monkeypatch):
    import sys

    (tmp_path / "rules.pdf").write_bytes(minimal_pdf(["x"]))
    monkeypatch.setitem(sys.modules, "pypdf", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"rules.pdf: reading PDF documents needs pypdf: pip install 'tuneforge\[rag\]'"):
        documents.read_paragraphs(tmp_path / "rules.pdf")
    with pytest.raises(ConfigError, match=r"corpus: has PDF documents, and reading them needs pypdf: "
                                          r"pip install 'tuneforge\[rag\]'"):
        rag.RagConfig(corpus=str(tmp_path))


def test_corpus_files_and_their_errors(tmp_path):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "a.md").write_text("# A\n\nalpha")
    (tmp_path / "docs" / "sub" / "b.txt").write_text("beta")
    (tmp_path / "docs" / "c.csv").write_text("x,y")
    (tmp_path / "docs" / ".hidden.txt").write_text("secret")
    found = documents.corpus_files(str(tmp_path / "docs"))
    assert [name for _path, name in found] == ["a.md", "sub/b.txt"]
    assert documents.skipped_files(str(tmp_path / "docs")) == [str(tmp_path / "docs" / "c.csv")]
    with pytest.raises(ConfigError, match=r"^k: no such file or folder: .*nope$"):
        documents.corpus_files([str(tmp_path / "nope")], key="k")
    with pytest.raises(ConfigError, match=r"c.csv is not a document format the rag baseline reads; valid: .htm"):
        documents.corpus_files(str(tmp_path / "docs" / "c.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no document"):
        documents.corpus_files(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="corpus: no such file or folder"):
        rag.RagConfig(corpus=str(tmp_path / "missing"))
    (tmp_path / "docs" / "d.pdf").write_bytes(minimal_pdf(["x"]))
    assert rag.RagConfig(corpus=str(tmp_path / "docs")).k == 3  # pypdf is installed here


# ---------------------------------------------------------------------------
# The rag rewrite, the leak check and the tie report
# ---------------------------------------------------------------------------


def _vault_corpus(tmp_path, language="en"):
    passages, queries, answers = synthetic_corpus(language)
    folder = tmp_path / f"corpus_{language}"
    folder.mkdir()
    (folder / "vaults.txt").write_text("\n\n".join(passages), encoding="utf-8")
    held = [chat(query, answer, f"val:{i}") for i, (query, answer) in enumerate(zip(queries, answers))]
    return folder, held


@pytest.mark.parametrize("language", ["en", "zh"])
def test_rag_puts_the_passage_with_the_answer_into_the_prompt(tmp_path, language, caplog):
    folder, held = _vault_corpus(tmp_path, language)
    info = {}
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        out = rag.rewrite_rag(None, None, [], held, rag.RagConfig(corpus=str(folder), k=1, chunk_chars=60,
                                                                 overlap_chars=0, leak_min_chars=8), info=info)
    in_prompt = [ex["messages"][-1]["content"] in ex["messages"][0]["content"] for ex in out]
    zero_shot = [ex["messages"][-1]["content"] in ex["messages"][0]["content"] for ex in held]
    assert sum(in_prompt) >= 0.9 * len(held) and not any(zero_shot)
    assert info["chunks"] >= 20 and info["documents"] == 1 and info["tie_only_queries"] == 0
    assert info["leaked_answers"] == 20  # every answer is in the documents: warned, not refused (leak_check=warn)
    assert "20 held-out answers are in the corpus" in caplog.text
    first = out[0]
    assert first["messages"][0]["role"] == "system" and first["messages"][0]["content"].startswith(rag.PREAMBLE)
    assert first["messages"][1:] == held[0]["messages"]  # the example's own turns are untouched
    assert first["demonstrations"][0].startswith("vaults.txt:line ")


def test_rag_adds_passages_to_an_existing_system_message_and_reports_ties(tmp_path, caplog):
    (tmp_path / "notes.md").write_text("# Notes\n\nThe ferry leaves at noon.\n\n## Food\n\nSoup is served at six.\n")
    held = [chat("When does the ferry leave?", "At noon", "v:0", system="Be brief."),
            chat("Ποιο είναι το χρώμα;", "Μπλε", "v:1")]
    info = {}
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        out = rag.rewrite_rag(None, None, [], held, rag.RagConfig(corpus=str(tmp_path / "notes.md"), k=1),
                              info=info)
    assert out[0]["messages"][0]["content"] == (
        "Be brief.\n\n" + rag.PREAMBLE + "\n\n[1] notes.md:line 3 (Notes)\nThe ferry leaves at noon.")
    assert info["tie_only_queries"] == 1 and info["queries"] == 2 and info["leaked_answers"] == 0
    assert "1 of 2 held-out prompts matched no corpus passage (every score 0)" in caplog.text


def test_leak_check_refuses_a_held_out_answer_in_the_corpus(tmp_path):
    (tmp_path / "rules.md").write_text("# Example\n\nSee  okafor v. Lindqvist Shipping Co., 123 F.3d 456\n"
                                       "(9th Cir. 1999) for the form.\n")
    held = [chat("Cite it.", "Okafor v. Lindqvist Shipping Co., 123 F.3d 456 (9th Cir. 1999)", "val:7"),
            chat("Short?", "Yes", "val:8")]
    config = rag.RagConfig(corpus=str(tmp_path), leak_check="refuse")
    with pytest.raises(ConfigError) as refused:
        rag.rewrite_rag(None, None, [], held, config)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(
        "baselines.rag.corpus: rules.md holds the answer of held-out example val:7 verbatim")
    assert "leak_check=warn" in message
    assert rag.find_leaks({"a.md": "yes, yes"}, held, min_chars=12) == []  # "Yes" is too short to count
    info = {}
    rag.rewrite_rag(None, None, [], held, rag.RagConfig(corpus=str(tmp_path), leak_check="off"), info=info)
    assert "leaked_answers" not in info


# ---------------------------------------------------------------------------
# The demo's corpus
# ---------------------------------------------------------------------------


def test_the_demo_corpus_holds_the_rules_and_no_held_out_citation():
    from omegaconf import OmegaConf

    from tuneforge.host.schema import package_path
    from tuneforge.plugins import legal_citations

    experiment = OmegaConf.load(package_path("tuneforge.conf/experiment/legal_citations.yaml"))
    assert "rag" in experiment.baselines and experiment.baselines.rag.leak_check == "refuse"
    path = package_path("tuneforge.plugins/data/citation_rules.md")
    text = " ".join(open(path, encoding="utf-8").read().split())
    for full, abbreviation, *_ in legal_citations.REPORTERS:  # every rule the task follows is there
        assert f"| {full} | {abbreviation} |" in text
    for name, abbreviation, *_ in legal_citations.COURTS[1:]:
        assert f"{name} is {abbreviation}" in text
    train, val = legal_citations.generate(int(experiment.data.n_train), int(experiment.data.n_val),
                                          seed=int(experiment.data.seed))
    held_out = [chat(r["input"], r["output"], f"val:{i}") for i, r in enumerate(val)]
    assert len(held_out) == 30
    assert rag.find_leaks({"citation_rules.md": text}, held_out, min_chars=12) == []
    leaky = {"citation_rules.md": text + "\n" + val[4]["output"].upper()}  # the check would see one
    assert rag.find_leaks(leaky, held_out, min_chars=12) == [("citation_rules.md", "val:4", val[4]["output"])]
    for record in train + val:  # nor any case of the task, held out or trained on
        case = record["output"].split(", ")[0]
        assert case.lower() not in text.lower()
        assert record["output"] not in text


# ---------------------------------------------------------------------------
# Retriever settings and the dense retriever
# ---------------------------------------------------------------------------


def test_retriever_settings_are_checked_with_the_config(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    common = ["train", "baselines=[rag]", f"baselines.rag.corpus={tmp_path / 'a.txt'}", f"run_dir={tmp_path / 'r'}"]
    typo = run_cli([*common, "baselines.rag.retriever=bm52"])
    assert typo.returncode == 2
    assert typo.stderr.strip().splitlines()[-1] == (
        "tuneforge: error: baselines.rag.retriever: unknown retriever 'bm52' (did you mean 'bm25'?); valid choices "
        "for 'retriever': ['bm25', 'dense']")
    key = run_cli([*common, "baselines.rag.retriever={name:bm25,methd:atire}"])
    assert key.returncode == 2 and ("baselines.rag.retriever: unknown key 'methd' for retriever 'bm25' (did you "
                                    "mean 'method'?); valid keys: name, k1, b, method") in key.stderr
    value = run_cli([*common, "baselines.rag.retriever={name:bm25,b:2.0}"])
    assert value.returncode == 2 and "baselines.rag.retriever.b: must be between 0 and 1" in value.stderr
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_dense_retriever_without_sentence_transformers_says_what_to_install():
    import importlib.util

    if importlib.util.find_spec("sentence_transformers") is not None:
        pytest.skip("sentence-transformers is installed (its models would be downloaded)")
    with pytest.raises(ConfigError, match=r"^retriever 'dense' needs the sentence-transformers package: "
                                          r"pip install sentence-transformers"):
        build_dense(DenseConfig(model="unused"))


class KeywordRetriever:
    """A user's own retriever: passages holding the query's longest word first."""

    @tuneforge.hookimpl
    def tuneforge_retrievers(self):
        from dataclasses import dataclass

        @dataclass
        class KeywordConfig:
            """Longest-word match.

            lowercase: compare lowercased.
            """

            lowercase: bool = True

        class Keyword:
            def __init__(self, config):
                self.config = config

            def index(self, passages):
                self.passages = [p.lower() for p in passages]

            def search(self, query, k):
                word = max(query.lower().replace("?", " ").split(), key=len)
                scores = [float(word in p) for p in self.passages]
                order = sorted(range(len(scores)), key=lambda i: -scores[i])[:k]
                return [(i, scores[i]) for i in order]

        return [tuneforge.RetrieverSpec("keyword", KeywordConfig, "longest word", build=Keyword)]


# ---------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------


class PassageReader:
    """An evaluator that answers each prompt with the code that its first passage gives for the vault
    asked about (what a model that reads its context would do); without passages it answers nothing."""

    @tuneforge.hookimpl
    def tuneforge_evaluators(self):
        import re
        from dataclasses import dataclass

        @dataclass
        class ReaderConfig:
            """(no settings)"""

        def evaluate(model, tokenizer, examples, config, *, evaluation=None):
            hits, rows = [], []
            prompts, references = prompts_and_references(tokenizer, examples, evaluation=evaluation)
            for example, prompt, reference in zip(examples, prompts, references):
                system = next((m["content"] for m in example["messages"] if m["role"] == "system"), "")
                first = system.split("[1] ", 1)[-1].split("\n\n[2] ")[0] if "[1] " in system else ""
                vault = re.search(r"vault (\w+)\?", example["messages"][-2]["content"])  # none in training
                found = vault and re.search(rf"code of the {vault.group(1)} vault is (\w+)", first)
                answer = found.group(1) if found else ""
                hits.append(float(answer == reference))
                rows.append({"source": example["source"], "prompt": prompt, "reference": reference, "output": answer})
            record_scores("read", hits, evaluation=evaluation)
            record_predictions("val", "read", tuple(prompts), rows, evaluation=evaluation)
            return {"read": sum(hits) / len(hits)}

        return [tuneforge.EvaluatorSpec("passage_reader", ReaderConfig, evaluate=evaluate, metrics=(
            tuneforge.MetricInfo("read", primary=True, description="the first passage's code is the answer"),))]


def test_rag_is_a_column_end_to_end(tmp_path):
    from tuneforge.testing import run_tiny_fit

    passages, queries, answers = synthetic_corpus("en")
    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "vaults.md").write_text("# Vaults\n\n" + "\n\n".join(passages))
    (corpus / "logo.png").write_bytes(zlib.compress(b"not a document"))
    val = [{"instruction": q, "output": a} for q, a in zip(queries, answers)]
    train = [{"instruction": f"Spell {w} backwards.", "output": w[::-1]} for w in NAMES_EN]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val))
    result = run_tiny_fit(tmp_path / "run", plugins=[PassageReader(), KeywordRetriever()], overrides=[
        "data=jsonl", f"data.path={tmp_path / 'train.jsonl'}", f"data.val_path={tmp_path / 'val.jsonl'}",
        "data.cache=false", "evaluators=[passage_reader]", "trainer.max_steps=1", "memorisation.sample=2",
        "baselines=[rag,retrieval]", f"baselines.rag.corpus={corpus}", "baselines.rag.k=2",
        "baselines.rag.chunk_chars=80", "baselines.rag.overlap_chars=0", "baselines.retrieval.retriever=keyword"])
    metrics = result.metrics
    assert metrics["base"]["passage_reader/read"] == 0.0
    assert metrics["baselines"]["rag"]["passage_reader/read"] >= 0.9
    info = metrics["baseline_info"]["rag"]
    assert info["label"] == "rag (docs, bm25), k=2" and info["documents"] == 1 and info["skipped_files"] == 1
    assert info["tie_only_queries"] == 0 and info["queries"] == 20
    assert info["leaked_answers"] == 0  # the 8-character codes are shorter than leak_min_chars (12)
    # the third-party retriever ranked the training questions ("Spell <name> backwards."): a question
    # whose longest word is "access" (a name of at most 6 letters) matched none, and the run says so
    no_match = sum(len(name) <= len("access") for name in NAMES_EN[:20])
    assert metrics["baseline_info"]["retrieval"]["queries"] == 20 and 10 < no_match < 20
    assert metrics["baseline_info"]["retrieval"]["tie_only_queries"] == no_match
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["baseline_info"]["rag"]["chunks"] == info["chunks"] > 20
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").open()]
    held = [r for r in rows if r["set"] == "val"]
    assert len(held) == 20 and all(r["rag_demonstrations"][0].startswith("vaults.md:line ") for r in held)
    assert sum(r["reference"] in r["rag_prompt"] for r in held) >= 18
    assert metrics["cost"]["rag"]["prompt_tokens_per_query"] > metrics["cost"]["base"]["prompt_tokens_per_query"]


class FailingRetriever:
    """A third-party retriever whose search raises, as a plugin author's bug would."""

    @tuneforge.hookimpl
    def tuneforge_retrievers(self):
        from dataclasses import dataclass

        @dataclass
        class FailingConfig:
            """(no settings)"""

        class Failing:
            def __init__(self, config):
                pass

            def index(self, passages):
                self.count = len(passages)

            def search(self, query, k):
                raise KeyError("no such shard")

        return [tuneforge.RetrieverSpec("failing", FailingConfig, "raises", build=Failing)]


def test_a_third_party_retrievers_mistake_under_a_built_in_baseline_is_one_line_naming_it(tmp_path):
    from tuneforge.testing import run_tiny_fit

    train = [{"instruction": f"Spell {w} backwards.", "output": w[::-1]} for w in NAMES_EN]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    with pytest.raises(tuneforge.PluginError) as raised:
        run_tiny_fit(tmp_path / "run", plugins=[FailingRetriever()], overrides=[
            "data=jsonl", f"data.path={tmp_path / 'train.jsonl'}", "data.val_size=4", "data.cache=false",
            "evaluators=[exact_match]", "evaluators.exact_match.max_new_tokens=2", "trainer.max_steps=1",
            "baselines=[retrieval]", "baselines.retrieval.retriever=failing"])
    line = str(raised.value)
    assert "\n" not in line and "retriever 'failing', search" in line and "KeyError" in line, line
    assert "no such shard" in line and "rerun with --debug" in line
