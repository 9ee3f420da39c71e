"""Data generators: determinism, manifests, split disjointness, record format, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trustlab.core.config import ConfigError
from trustlab.data import DataConfig, generate_all, load_task, pretraining_texts
from trustlab.data.arithmetic import OPS
from trustlab.data.code_corpus import list_sources, stdlib_dir
from trustlab.data.config import ArithmeticConfig, ContextCopyConfig, WorldConfig
from trustlab.data.instructions import TOPICS
from trustlab.data.tasks import TASKS, is_plain, load_bios, load_code, load_people, verify
from trustlab.data.world import BIO_TEMPLATES, FIRST_NAMES, LAST_NAMES, QA_TEMPLATES, VALUES

SMALL = {
    "world": {"n_people": 40, "n_nonexistent": 10, "n_bios_min": 2, "n_bios_max": 3,
              "n_first_names": 20, "n_last_names": 20},
    "arithmetic": {"n_train": 200, "n_test": 40, "n_ood": 40},
    "instructions": {"n_train": 60, "n_test": 20},
    "context_copy": {"n_train": 60, "n_test": 20},
    "scratchpad": {"n_train": 60, "n_test": 20},
    "code_corpus": {"max_bytes": 60_000, "max_file_bytes": 20_000},
}  # fmt: skip


def small_cfg(seed: int = 0, **changes) -> DataConfig:
    return DataConfig.from_dict({"seed": seed, **SMALL, **changes})


@pytest.fixture(scope="module")
def gen_dirs(tmp_path_factory):
    """The same config twice, and once with another seed."""
    out = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        d = tmp_path_factory.mktemp(f"data_{name}")
        out[name] = (d, generate_all(small_cfg(seed), d))
    return out


def all_records(d: Path) -> dict[tuple[str, str], list[dict]]:
    return {(t, s): load_task(d, t, s) for t, (_, splits) in TASKS.items() for s in splits}


# -- determinism and manifests ----------------------------------------------------------


def test_same_seed_byte_identical(gen_dirs):
    (da, ma), (db, mb) = gen_dirs["a"], gen_dirs["b"]
    assert ma["files"] == mb["files"] and ma["fingerprint"] == mb["fingerprint"]
    for rel in ma["files"]:
        assert (da / rel).read_bytes() == (db / rel).read_bytes(), rel
    for sub in ("world", "arithmetic", "instructions", "context_copy", "code"):
        assert (da / sub / "manifest.json").read_bytes() == (db / sub / "manifest.json").read_bytes()


def test_different_seed_different_data(gen_dirs):
    ma, mc = gen_dirs["a"][1], gen_dirs["c"][1]
    assert ma["fingerprint"] != mc["fingerprint"]
    for name, fp in ma["fingerprints"].items():
        assert fp != mc["fingerprints"][name], name


def test_manifest_counts_match_files(gen_dirs):
    d, m = gen_dirs["a"]
    assert verify(d) == []
    on_disk = {
        p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file() and p.name != "manifest.json"
    }
    assert set(m["files"]) == on_disk
    for sub in ("world", "arithmetic", "instructions", "context_copy", "code"):
        assert verify(d, sub) == []
    files = set(m["files"])
    for (task, split), rows in all_records(d).items():
        sub = TASKS[task][0]
        assert f"{sub}/{split}.jsonl" in files
        n_lines = sum(1 for _ in open(d / sub / f"{split}.jsonl"))
        key = "world" if task == "world_qa" else task
        assert m["counts"][key][split] == n_lines == len(rows)
    n_bios = sum(1 for _ in open(d / "world" / "bios.jsonl"))
    assert m["counts"]["world"]["bios"] == n_bios
    assert m["counts"]["code_corpus"]["files"] == sum(1 for _ in open(d / "code" / "files.jsonl"))
    sub = json.loads((d / "world" / "manifest.json").read_text())
    assert sub["params"]["n_people"] == 40 and m["params"]["world"]["n_people"] == 40


def test_tampering_is_detected(gen_dirs, tmp_path):
    d, _ = gen_dirs["a"]
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(d, copy)
    p = copy / "arithmetic" / "test.jsonl"
    p.write_text(p.read_text().replace('"answer": "', '"answer": "9', 1))
    assert verify(copy) == ["arithmetic/test.jsonl"]


def test_generator_streams_are_independent(tmp_path):
    """Changing one generator's params leaves the others' files unchanged."""
    foreign = tmp_path / "x" / "models" / "weights.bin"  # another stage's output under data/
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"0")
    m1 = generate_all(small_cfg(generators=["world", "arithmetic"]), tmp_path / "x")
    assert foreign.exists() and not any(k.startswith("models/") for k in m1["files"])
    changed = {**SMALL, "world": {**SMALL["world"], "n_bios_max": 4}}
    m2 = generate_all(DataConfig.from_dict({**changed, "generators": ["world", "arithmetic"]}), tmp_path / "y")
    assert m1["fingerprints"]["arithmetic"] == m2["fingerprints"]["arithmetic"]
    assert m1["files"]["world/people.json"] == m2["files"]["world/people.json"]  # attributes unchanged
    assert m1["files"]["world/bios.jsonl"] != m2["files"]["world/bios.jsonl"]


# -- record format ----------------------------------------------------------------------


def test_records_have_schema_and_plain_text(gen_dirs):
    from trustlab.lm.tokenizer import WordTokenizer

    d, _ = gen_dirs["a"]
    recs = all_records(d)
    texts, ids = [], []
    for (task, split), rows in recs.items():
        assert rows, (task, split)
        for r in rows:
            assert {"id", "task", "split", "prompt", "answer"} <= set(r)
            assert r["task"] == task and r["split"] == split
            assert is_plain(r["prompt"]) and is_plain(r["answer"]), r
            texts += [r["prompt"], r["answer"]]
            ids.append(r["id"])
    bios = load_bios(d)
    assert all(is_plain(b["text"]) for b in bios)
    texts += [b["text"] for b in bios]
    assert len(ids) == len(set(ids))
    tok = WordTokenizer.fit(texts)
    assert all(tok.decode(tok.encode(t)) == t for t in texts)
    # the base model's own tokenizer: prompts and biographies round-trip as they are, answers in
    # the form the model reads and writes them (space-prefixed after <sep>, as the biographies
    # carry the same values)
    from trustlab.lm.base_model import BaseModelConfig, fit_tokenizer

    model_tok = fit_tokenizer(d, BaseModelConfig())
    answers = [r["answer"] for rows in recs.values() for r in rows]
    prompts = [r["prompt"] for rows in recs.values() for r in rows] + [b["text"] for b in bios]
    assert all(model_tok.decode(model_tok.encode(t)) == t for t in prompts)
    assert all(model_tok.decode(model_tok.encode_answer(a)) == " " + a for a in answers if a)
    assert model_tok.unk_id not in {i for a in answers for i in model_tok.encode_answer(a)}


# -- world ------------------------------------------------------------------------------


def test_world_pools_and_templates():
    values = [v.lower() for vals in VALUES.values() for v in vals]
    assert len(values) == len(set(values)), "a value in two closed sets"
    names = {n.lower() for n in FIRST_NAMES + LAST_NAMES}
    assert len(names) == len(FIRST_NAMES) + len(LAST_NAMES)
    assert not names & set(values)
    assert all(10 <= len(v) <= 20 for v in VALUES.values())
    assert all(len(BIO_TEMPLATES[a]) >= 3 and len(QA_TEMPLATES[a]) >= 2 for a in BIO_TEMPLATES)
    assert all(" " not in v and v.isalpha() for v in values)


def test_world_splits_disjoint_and_consistent(gen_dirs):
    d, m = gen_dirs["a"]
    world = load_people(d)
    people = {p["id"]: p for p in world["people"]}
    real_names = {p["name"] for p in world["people"]}
    assert len(real_names) == 40
    fake_names = {p["name"] for p in world["nonexistent"]}
    assert len(fake_names) == 10 and not fake_names & real_names
    owners = {}
    for split in TASKS["world_qa"][1]:
        for r in load_task(d, "world_qa", split):
            assert owners.setdefault(r["person_id"], split) == split  # a person is in one split only
            if r["exists"]:
                p = people[r["person_id"]]
                assert p["split"] == split and r["answer"] == p[r["attribute"]] == r["value"]
                assert r["name"] in r["prompt"]
            else:
                assert r["answer"] == "unknown" and r["value"] is None and r["name"] in fake_names
            closed = world["closed_sets"][r["attribute"]]
            assert r["answer"] in r["choices"] and len(r["choices"]) == 5
            assert all(c in closed for c in r["choices"] if c != "unknown")
    counts = m["counts"]["world"]["people_per_split"]
    assert counts == {"qa_train": 20, "qa_heldout": 16, "new_facts": 4, "nonexistent_train": 5, "nonexistent_test": 5}
    per_person = {}
    for b in load_bios(d):
        p = people[b["person_id"]]
        per_person[p["id"]] = per_person.get(p["id"], 0) + 1
        assert b["split"] == p["split"]
        for a in world["attributes"]:
            assert f" {p[a]}." in b["text"] or f" {p[a]} " in b["text"]
    assert set(per_person) == set(people) and all(2 <= n <= 3 for n in per_person.values())
    pre = pretraining_texts(d)
    new_names = {p["name"] for p in world["people"] if p["split"] == "new_facts"}
    assert pre and not any(n in t for t in pre for n in new_names)


# -- arithmetic, instructions, context copy -----------------------------------------------


def test_arithmetic_correct_and_disjoint(gen_dirs):
    d, _ = gen_dirs["a"]
    splits = {s: load_task(d, "arithmetic", s) for s in ("train", "test", "ood")}
    keys = {s: {(r["a"], r["b"], r["op"]) for r in rows} for s, rows in splits.items()}
    assert all(len(keys[s]) == len(splits[s]) for s in splits)
    assert not keys["train"] & keys["test"]
    for s, rows in splits.items():
        for r in rows:
            assert int(r["answer"]) == r["result"] == OPS[r["op"]](r["a"], r["b"])
            assert r["prompt"] == f"{r['a']}{r['op']}{r['b']}="
            lo, hi = ((4, 5) if r["op"] == "+" else (3, 3)) if s == "ood" else ((1, 3) if r["op"] == "+" else (1, 2))
            assert all(lo <= n <= hi for n in r["digits"])
    assert {r["op"] for r in splits["train"]} == {"+", "*"}


def test_arithmetic_reverse_and_question_style(tmp_path):
    from trustlab.data.arithmetic import make_arithmetic

    cfg = ArithmeticConfig.from_dict({"n_train": 30, "n_test": 5, "n_ood": 5, "reverse_answer": True,
                                      "prompt_style": "question"})  # fmt: skip
    rows = make_arithmetic(cfg, 3)["train"]
    assert all(r["answer"] == str(r["result"])[::-1] for r in rows)
    assert all(r["prompt"].startswith("what is ") and r["prompt"].endswith("?") for r in rows)
    assert all(is_plain(r["prompt"]) for r in rows)


def test_arithmetic_capacity_error():
    from trustlab.data.arithmetic import make_arithmetic

    cfg = ArithmeticConfig.from_dict({"n_train": 90, "n_test": 20, "add_digits": [1, 1], "add_ood_digits": [2, 2],
                                      "mul_fraction": 0.0})  # fmt: skip
    with pytest.raises(ValueError, match="allow only 100"):
        make_arithmetic(cfg, 0)


def test_instructions_records(gen_dirs):
    d, _ = gen_dirs["a"]
    vocab_all = [w for ws in TOPICS.values() for w in ws]
    assert len(vocab_all) == len(set(vocab_all)), "topic vocabularies overlap"
    assert all(15 <= len(ws) <= 30 for ws in TOPICS.values())
    for r in load_task(d, "instructions", "train"):
        words = r["answer"].split()
        assert len(words) == r["n_words"] and 3 <= r["n_words"] <= 8
        assert all(w in TOPICS[r["topic"]] for w in words)
        assert r["prompt"] == f"write {r['n_words']} words about {r['topic']}."


def test_context_copy_records(gen_dirs):
    d, _ = gen_dirs["a"]
    train, test = load_task(d, "context_copy", "train"), load_task(d, "context_copy", "test")
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    for r in train + test:
        assert r["answer"] == str(r["vars"][r["query"]])
        assert 2 <= r["n_vars"] <= 5 and len(set(r["names"])) == r["n_vars"]
        assert f"{r['query']}={r['answer']}" in r["prompt"] and r["prompt"].endswith(f". {r['query']}?")
    cfg = ContextCopyConfig.from_dict({"n_train": 5, "n_test": 5, "value_max": 250})
    from trustlab.data.context_copy import make_context_copy

    rows = make_context_copy(cfg, 0)["train"]
    assert all(0 <= int(r["answer"]) <= 250 for r in rows)


def test_scratchpad_records(gen_dirs):
    d, _ = gen_dirs["a"]
    train, test = load_task(d, "scratchpad", "train"), load_task(d, "scratchpad", "test")
    assert not {(r["a"], r["b"]) for r in train} & {(r["a"], r["b"]) for r in test}
    for r in train + test:
        assert r["prompt"] == f"add by columns: {r['a']}+{r['b']}=" and r["final"] == str(r["a"] + r["b"])
        assert r["answer"] == "; ".join([*r["steps"], "answer " + r["final"]])
        assert len(r["steps"]) == r["n_steps"] == max(len(str(r["a"])), len(str(r["b"])))
        assert all(2 <= len(str(v)) <= 4 for v in (r["a"], r["b"]))
        # each step x+y+c=s: column digits, the carry of the step before, their sum
        carry, digits = 0, []
        for i, step in enumerate(r["steps"]):
            x, y, c, s = (int(v) for v in step.replace("=", "+").split("+"))
            assert (x, c, s) == (int(str(r["a"]).zfill(len(r["steps"]))[::-1][i]), carry, x + y + c)
            digits.append(str(s % 10))
            carry = s // 10
        assert (str(carry) if carry else "") + "".join(reversed(digits)) == r["final"]


# -- code corpus --------------------------------------------------------------------------


def test_code_corpus(gen_dirs):
    d, m = gen_dirs["a"]
    import hashlib

    rows = load_code(d)
    assert rows and {r["split"] for r in rows} == {"train", "val"}
    assert sum(r["n_bytes"] for r in rows) <= 60_000
    assert len({r["sha256"] for r in rows}) == len(rows) == len({r["path"] for r in rows})
    for r in rows:
        parts = r["path"].split("/")
        assert r["path"].endswith(".py") and not {"test", "tests", "site-packages"} & set(parts)
        assert hashlib.sha256(r["text"].encode()).hexdigest() == r["sha256"] and r["n_bytes"] <= 20_000
    src = json.loads((d / "code" / "manifest.json").read_text())["source"]
    assert src["python_version"] and src["corpus_sha256"] and Path(src["stdlib"]) == stdlib_dir()
    assert load_code(d, "val") and len(load_code(d, "train")) + len(load_code(d, "val")) == len(rows)


def test_code_sources_sorted_and_filtered():
    paths = list_sources(stdlib_dir(), ["test", "tests", "site-packages", "__pycache__"])
    assert paths == sorted(paths) and "os.py" in paths
    assert not any(p.startswith("test/") or "/tests/" in p or p.startswith("site-packages/") for p in paths)


# -- config validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"world": {"n_people": 0}}, "data.world.n_people = 0 is out of range: allowed 1 <= n_people"),
        ({"world": {"frac_qa_train": 1.5}}, "data.world.frac_qa_train = 1.5 is out of range"),
        ({"world": {"frac_qa_train": 0.7, "frac_new_facts": 0.5}}, "data.world.frac_qa_train + frac_new_facts"),
        ({"world": {"n_bios_min": 4, "n_bios_max": 3}}, "data.world.n_bios_max = 3 is out of range"),
        (
            {"world": {"attributes": ["birth_city", "shoe_size"]}},
            "data.world.attributes = ['birth_city', 'shoe_size']: unknown 'shoe_size'",
        ),
        ({"world": {"qa_per_fact": 4}}, "data.world.qa_per_fact = 4 is out of range"),
        ({"world": {"n_people": 5000}}, "data.world.n_people + n_nonexistent = 5200 is out of range"),
        ({"world": {"abstain_answer": "Paris"}}, "data.world.abstain_answer = 'Paris' is not allowed"),
        ({"world": {"n_peple": 3}}, "data.world: unknown key 'n_peple'"),
        ({"arithmetic": {"add_ood_digits": [3, 5]}}, "data.arithmetic.add_ood_digits = (3, 5) is not allowed"),
        ({"arithmetic": {"mul_fraction": -0.1}}, "data.arithmetic.mul_fraction = -0.1 is out of range"),
        ({"arithmetic": {"add_digits": [3, 1]}}, "data.arithmetic.add_digits = (3, 1) is not allowed"),
        ({"arithmetic": {"prompt_style": "latex"}}, "data.arithmetic.prompt_style = 'latex' is not allowed"),
        (
            {"instructions": {"topics": ["ocean", "cars"]}},
            "data.instructions.topics = ['ocean', 'cars']: unknown 'cars'",
        ),
        ({"instructions": {"n_words": [3, 40]}}, "data.instructions.n_words = (3, 40) is out of range"),
        ({"context_copy": {"n_vars": [2, 27]}}, "data.context_copy.n_vars = (2, 27) is out of range"),
        ({"code_corpus": {"val_fraction": 1.0}}, "data.code_corpus.val_fraction = 1.0 is out of range"),
        ({"generators": ["world", "images"]}, "data.generators = ['world', 'images']: unknown 'images'"),
        ({"seed": -1}, "data.seed = -1 is out of range"),
    ],
)
def test_config_errors_name_the_key(bad, message):
    with pytest.raises(ConfigError) as info:
        DataConfig.from_dict(bad)
    assert str(info.value).startswith(message), str(info.value)


def test_config_defaults_valid_and_roundtrip():
    cfg = DataConfig()
    cfg.validate()
    assert DataConfig.from_dict(cfg.to_dict()) == cfg
    assert WorldConfig.from_dict({}).n_people == 1000
    with pytest.raises(ConfigError, match="data.world.n_people"):
        WorldConfig.from_dict({"n_people": 0})


# -- the CLI ------------------------------------------------------------------------------


def test_cli_generates_from_params(tmp_path, capsys):
    import importlib.util

    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {**SMALL, "generators": ["world", "context_copy"]}}))
    spec = importlib.util.spec_from_file_location(
        "generate_data", Path(__file__).resolve().parents[3] / "pipelines" / "generate_data.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--params", str(params), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "manifest.json").exists() and (tmp_path / "out" / "world" / "qa_train.jsonl").exists()
    assert not (tmp_path / "out" / "arithmetic").exists()
    params.write_text(yaml.safe_dump({"data": {"world": {"n_people": 0}}}))
    assert mod.main(["--params", str(params), "--out", str(tmp_path / "bad")]) == 2
    assert "data.world.n_people = 0" in capsys.readouterr().err
