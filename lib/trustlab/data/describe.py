"""What the ``00_data`` notebook reports about the generated data: tables and figures.

Every function reads a generated-data directory (``<data_dir>/generated``, the layout of
``trustlab.data.tasks``) and returns a pandas DataFrame, a dict or a matplotlib Figure;
nothing here generates data.

Token statistics take a tokenizer as an argument (the notebook passes the base model's, so
the lengths shown are the lengths the base model trains on): an example is
``<bos> prompt <sep> answer <eos>`` (``len = len(prompt) + len(answer) + 3``) and a
biography ``<bos> text <eos>``. This package generates and describes data only; it never
imports the language-model package.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trustlab.data import tasks as T
from trustlab.data.checkers import corrupt_answer, first_wrong_step, parse_steps

STAGE = "00_data"


def generated_dir(data_dir: str | os.PathLike) -> Path:
    """``<data_dir>/generated`` if present, else ``data_dir`` (already the generated directory)."""
    d = Path(data_dir)
    return d / "generated" if (d / "generated").is_dir() else d


def counts_frame(gen_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per task/split: records on disk, and for world QA the number of people."""
    gen_dir = Path(gen_dir)
    rows = []
    for task in T.CHECKED_TASKS:
        for split in T.task_splits(task):
            recs = T.load_task(gen_dir, task, split)
            row = {"task": task, "split": split, "records": len(recs)}
            if task == "world_qa":
                row["people"] = len({r["person_id"] for r in recs})
            rows.append(row)
    bios = T.load_bios(gen_dir)
    for split in T.REAL_SPLITS:
        sel = [b for b in bios if b["split"] == split]
        rows.append(
            {"task": "world_bio", "split": split, "records": len(sel), "people": len({b["person_id"] for b in sel})}
        )
    code = T.load_code(gen_dir)
    for split in ("train", "val"):
        sel = [c for c in code if c["split"] == split]
        rows.append({"task": "code", "split": split, "records": len(sel), "bytes": int(sum(c["n_bytes"] for c in sel))})
    df = pd.DataFrame(rows)
    for col in ("people", "bytes"):
        if col in df:
            df[col] = df[col].astype("Int64")
    return df


def role_frame(gen_dir: str | os.PathLike) -> pd.DataFrame:
    """What each person split is for: biographies in pretraining? QA in pretraining / fine-tuning?"""
    people = T.load_people(gen_dir)
    n = Counter(p["split"] for p in people["people"]) + Counter(p["split"] for p in people["nonexistent"])
    roles = {
        "qa_train": ("yes", "pretraining (base model) and fine-tuning", "the model should know the answer"),
        "qa_heldout": ("yes", "never", "held-out knowledge extraction"),
        "new_facts": ("no", "fine-tuning only (NoiseFiT stress test)", "unknown facts taught by fine-tuning"),
        "nonexistent_train": ("no (nobody)", "abstention in fine-tuning", f"answer {people['abstain']!r}"),
        "nonexistent_test": ("no (nobody)", "never", f"answer {people['abstain']!r}: hallucination test"),
    }
    return pd.DataFrame(
        [
            {"split": s, "people": int(n.get(s, 0)), "biographies in pretraining": b, "QA trained in": q, "purpose": p}
            for s, (b, q, p) in roles.items()
        ]
    )


def attribute_distribution(gen_dir: str | os.PathLike) -> pd.DataFrame:
    """Long table ``attribute, value, split, people``: how often each closed-set value occurs."""
    people = T.load_people(gen_dir)
    rows = Counter()
    for p in people["people"]:
        for a in people["attributes"]:
            rows[(a, str(p[a]), p["split"])] += 1
    return pd.DataFrame(
        [{"attribute": a, "value": v, "split": s, "people": c} for (a, v, s), c in sorted(rows.items())]
    )


def attribute_summary(gen_dir: str | os.PathLike) -> pd.DataFrame:
    """Per attribute: closed-set size, values in use, share of the most common value (the
    accuracy of always guessing it) and the normalised entropy of the value distribution
    ``H / log(k)`` (1 = uniform over the k values in use)."""
    people = T.load_people(gen_dir)
    rows = []
    for a in people["attributes"]:
        counts = np.array(list(Counter(str(p[a]) for p in people["people"]).values()), dtype=float)
        prob = counts / counts.sum()
        k = len(counts)
        h = float(-(prob * np.log(prob)).sum())
        rows.append(
            {
                "attribute": a,
                "closed_set": len(people["closed_sets"].get(a, [])) or None,
                "values_used": k,
                "majority_share": float(prob.max()),
                "entropy_norm": h / np.log(k) if k > 1 else 0.0,
            }
        )
    return pd.DataFrame(rows)


def examples(gen_dir: str | os.PathLike, per_split: int = 2) -> pd.DataFrame:
    """The first ``per_split`` records of every task/split (prompt and answer)."""
    rows = []
    for task in T.CHECKED_TASKS:
        for split in T.task_splits(task):
            for r in T.load_task(gen_dir, task, split)[:per_split]:
                rows.append({"task": task, "split": split, "prompt": r["prompt"], "answer": r["answer"]})
    return pd.DataFrame(rows)


def bio_examples(gen_dir: str | os.PathLike, n_people: int = 1) -> pd.DataFrame:
    """Every biography of the first ``n_people`` people: paraphrased templates in shuffled orders."""
    bios = T.load_bios(gen_dir)
    first = list(dict.fromkeys(b["person_id"] for b in bios))[:n_people]
    return pd.DataFrame(
        [{"person": b["name"], "split": b["split"], "text": b["text"]} for b in bios if b["person_id"] in first]
    )


def fingerprints(gen_dir: str | os.PathLike) -> dict[str, Any]:
    """The data fingerprint (sha256 over every file), per-generator fingerprints, the code
    corpus's source and sha256, and the files whose sha256 no longer matches the manifest."""
    gen_dir = Path(gen_dir)
    top = T.load_manifest(gen_dir)
    out: dict[str, Any] = {
        "fingerprint": top.get("fingerprint"),
        "python_version": top.get("python_version"),
        "generators": dict(top.get("fingerprints", {})),
        "files": len(top.get("files", {})),
        "modified_files": T.verify(gen_dir),
    }
    code_manifest = gen_dir / "code" / "manifest.json"
    if code_manifest.exists():
        code = T.load_manifest(gen_dir, "code")
        src = code.get("source", {})
        out["code_corpus"] = {
            "corpus_sha256": src.get("corpus_sha256"),
            "python": f"{src.get('python_implementation', '')} {src.get('python_version', '')}".strip(),
            "stdlib": src.get("stdlib"),
            "files": code.get("counts", {}).get("files"),
            "bytes": code.get("counts", {}).get("bytes"),
            "skipped": src.get("skipped"),
        }
    return out


def fingerprint_frame(info: dict[str, Any]) -> pd.DataFrame:
    rows = [{"what": "data fingerprint (all files)", "sha256": info["fingerprint"]}]
    rows += [{"what": f"generator {k}", "sha256": v} for k, v in info["generators"].items()]
    if "code_corpus" in info:
        c = info["code_corpus"]
        rows.append(
            {
                "what": f"code corpus text ({c['files']} files, {c['bytes']} bytes, {c['python']})",
                "sha256": c["corpus_sha256"],
            }
        )
    return pd.DataFrame(rows)


def token_stats(gen_dir: str | os.PathLike, tokenizer) -> pd.DataFrame:
    """Per task/split (and biographies): examples, mean / 95th percentile / max tokens of the
    whole example and of the answer, and the share of unknown tokens (0 when the tokenizer
    was fit on this data). ``tokenizer``: any with ``encode_example``, ``encode_text`` and
    ``unk_id``."""
    tok = tokenizer
    rows = []

    def add(task, split, lengths, answer_lengths, unk, total):
        lengths = np.asarray(lengths)
        row = {
            "task": task,
            "split": split,
            "n": len(lengths),
            "mean_tokens": float(lengths.mean()),
            "p95_tokens": float(np.percentile(lengths, 95)),
            "max_tokens": int(lengths.max()),
            "unk_share": unk / max(total, 1),
        }
        if answer_lengths is not None:
            row["mean_answer_tokens"] = float(np.mean(answer_lengths))
            row["max_answer_tokens"] = int(np.max(answer_lengths))
        rows.append(row)

    for task in T.CHECKED_TASKS:
        for split in T.task_splits(task):
            recs = T.load_task(gen_dir, task, split)
            if not recs:
                continue
            lens, alens, unk, total = [], [], 0, 0
            for r in recs:
                ids, mask = tok.encode_example(r["prompt"], r["answer"])
                lens.append(len(ids))
                alens.append(sum(mask) - 1)  # without <eos>
                unk += ids.count(tok.unk_id)
                total += len(ids)
            add(task, split, lens, alens, unk, total)
    bios = T.load_bios(gen_dir)
    if bios:
        enc = [tok.encode_text(b["text"])[0] for b in bios]
        add("world_bio", "all", [len(e) for e in enc], None, sum(e.count(tok.unk_id) for e in enc), sum(map(len, enc)))
    return pd.DataFrame(rows)


def corpus_token_totals(gen_dir: str | os.PathLike, tokenizer) -> dict[str, Any]:
    """Vocabulary size and the token totals of what the base model pretrains on (one copy)."""
    tok = tokenizer
    bio_tokens = sum(len(tok.encode_text(t)[0]) for t in T.pretraining_texts(gen_dir))
    out = {"vocab_size": tok.vocab_size, "pretraining_bio_tokens": bio_tokens}
    for task, split in (
        ("world_qa", "qa_train"),
        ("arithmetic", "train"),
        ("instructions", "train"),
        ("context_copy", "train"),
    ):
        out[f"{task}_{split}_tokens"] = sum(
            len(tok.encode_example(r["prompt"], r["answer"])[0]) for r in T.load_task(gen_dir, task, split)
        )
    return out


# -- figures -----------------------------------------------------------------------------------


def plot_counts(counts: pd.DataFrame):
    import matplotlib.pyplot as plt

    df = counts[counts.task != "code"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    labels = [f"{t}/{s}" for t, s in zip(df.task, df.split)]
    ax.barh(labels, df.records, color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlabel("records")
    ax.set_title("Records per task and split")
    fig.tight_layout()
    return fig


def plot_attributes(dist: pd.DataFrame, top: int = 25):
    """Value counts per attribute (people of every split), the ``top`` most common values."""
    import matplotlib.pyplot as plt

    attrs = list(dict.fromkeys(dist.attribute))
    ncols = 3
    nrows = int(np.ceil(len(attrs) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(12, 3.0 * nrows), squeeze=False)
    for ax, a in zip(axes.flat, attrs):
        s = dist[dist.attribute == a].groupby("value")["people"].sum().sort_values(ascending=False)
        if a == "birth_year":
            s = s.sort_index()
        else:
            s = s.head(top)
        ax.bar(range(len(s)), s.values, color="tab:green")
        ax.set_xticks(range(len(s)))
        ax.set_xticklabels(s.index, rotation=90, fontsize=7)
        ax.set_title(a)
    for ax in list(axes.flat)[len(attrs) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_token_lengths(stats: pd.DataFrame, block_size: int | None = None):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    labels = [f"{t}/{s}" for t, s in zip(stats.task, stats.split)]
    ax.barh(labels, stats.max_tokens, color="tab:gray", label="max")
    ax.barh(labels, stats.mean_tokens, color="tab:orange", label="mean")
    if block_size:
        ax.axvline(block_size, color="k", ls="--", lw=1, label=f"base model context ({block_size})")
    ax.invert_yaxis()
    ax.set_xlabel("tokens per example (<bos> prompt <sep> answer <eos>)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def headline(counts: pd.DataFrame, info: dict[str, Any], totals: dict[str, Any], stats: pd.DataFrame) -> dict[str, Any]:
    """Flat numbers for ``metrics.json``."""
    out: dict[str, Any] = {}
    for r in counts.itertuples():
        key = r.split if r.task == "world_qa" else f"{r.task}_{r.split}"
        out[f"n_{key}"] = int(r.records)
    out["vocab_size"] = int(totals["vocab_size"])
    out["pretraining_bio_tokens"] = int(totals["pretraining_bio_tokens"])
    out["max_example_tokens"] = int(stats[stats.task != "world_bio"].max_tokens.max())
    out["modified_files"] = len(info["modified_files"])
    out["fingerprint"] = (info["fingerprint"] or "")[:16]
    if "code_corpus" in info:
        out["code_corpus_sha256"] = (info["code_corpus"]["corpus_sha256"] or "")[:16]
        out["code_corpus_bytes"] = int(info["code_corpus"]["bytes"] or 0)
    return out


def scratchpad_steps(gen_dir: str | os.PathLike, n: int = 3, split: str = "test") -> pd.DataFrame:
    """The first ``n`` scratchpad records step by step: each step, and where a corrupted
    trajectory (``corrupt_answer``: one column sum off by one, carried on) first goes wrong
    according to ``first_wrong_step``."""
    rows = []
    for r in T.load_task(gen_dir, "scratchpad", split)[:n]:
        bad = corrupt_answer(r, seed=0)
        for i, step in enumerate(r["steps"]):
            rows.append({"prompt": r["prompt"], "step": i, "reference": step, "corrupted": parse_steps(bad)[i],
                         "first_wrong_step": first_wrong_step(bad, r), "final": r["final"]})  # fmt: skip
    return pd.DataFrame(rows)
