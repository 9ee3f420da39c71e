"""A synthetic world of fictional people (in the style of "Physics of Language Models 3.1").

Each real person has a unique full name and one value per attribute from a closed set.
Biographies state every attribute once, in shuffled order, each sentence from a randomly
chosen paraphrase template. QA records ask for one attribute; the answer is the bare value
(for people who do not exist: the abstention string).

Splits are by person:

- ``qa_train``:   biographies in pretraining, QA used for fine-tuning;
- ``qa_heldout``: biographies in pretraining, QA never trained (knowledge extraction test);
- ``new_facts``:  biographies withheld from pretraining, QA only in fine-tuning (the
  Gekhman et al. 2024 stress test: unknown facts in fine-tuning data);
- ``nonexistent_train`` / ``nonexistent_test``: names from the same pools that belong to
  nobody; the right answer is the abstention string (the train part teaches abstention).

Independent random streams (names, attributes, splits, biographies, QA, choices) are derived
from the seed by name, so e.g. changing ``n_bios_max`` does not change anyone's attributes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trustlab.data.tasks import NONEXISTENT_SPLITS, REAL_SPLITS, WORLD_QA_SPLITS, assert_plain, sub_seed
from trustlab.core.io import write_json, write_jsonl, write_manifest
from trustlab.core.seeding import rng

if TYPE_CHECKING:
    from trustlab.data.config import WorldConfig

FIRST_NAMES = (
    "Alice", "Bruno", "Clara", "Dmitri", "Elena", "Felix", "Greta", "Hugo", "Ingrid", "Jonas",
    "Karin", "Leo", "Marta", "Nils", "Olga", "Pablo", "Quinn", "Rosa", "Stefan", "Tara",
    "Ulrich", "Vera", "Walter", "Xenia", "Yusuf", "Zora", "Amir", "Bianca", "Carlos", "Daria",
    "Emil", "Fiona", "Gideon", "Hanna", "Ivan", "Julia", "Kenji", "Lena", "Mateo", "Nadia",
    "Oscar", "Petra", "Rafael", "Sonia", "Tobias", "Ursula", "Victor", "Wanda", "Yara", "Zane",
    "Anton", "Beatrix", "Cyrus", "Delia", "Edgar", "Flora", "Gustav", "Helga", "Igor", "Jasmine",
    "Kurt", "Lydia", "Magnus", "Nora", "Otto", "Priya", "Ronan", "Selma", "Theo", "Uma",
    "Willa", "Xavier", "Yvonne", "Zelda", "Arlo", "Brenda", "Cedric", "Dora", "Elias", "Freya",
)  # fmt: skip

LAST_NAMES = (
    "Smith", "Novak", "Lindqvist", "Moreau", "Okafor", "Tanaka", "Petrov", "Garcia", "Keller", "Rossi",
    "Jansen", "Kowalski", "Dubois", "Nakamura", "Fischer", "Silva", "Andersen", "Horvat", "Ibarra", "Costa",
    "Brandt", "Castillo", "Duval", "Eriksen", "Ferraro", "Gruber", "Haddad", "Jovanovic", "Kaplan", "Laurent",
    "Meyer", "Nilsen", "Ortega", "Papadakis", "Quintero", "Romano", "Schmidt", "Torres", "Ueda", "Vargas",
    "Weber", "Yilmaz", "Zimmer", "Abbott", "Becker", "Chandra", "Delgado", "Engel", "Fontaine", "Grant",
    "Holm", "Ito", "Jensen", "Kraus", "Lund", "Mendez", "Navarro", "Olsen", "Pereira", "Reyes",
    "Sato", "Thorne", "Valdez", "Wolff", "Alvarez", "Bauer", "Carver", "Dalton", "Esposito", "Fujita",
    "Hartmann", "Iversen", "Jaeger", "Kimura", "Lowell", "Marino", "Nyberg", "Orlov", "Pryce", "Ramos",
)  # fmt: skip

# Closed sets (birth_year is a range, set by the config). No value appears in two attributes
# or as a name, so a value identifies its attribute.
VALUES: dict[str, tuple[str, ...]] = {
    "birth_city": (
        "Paris", "London", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Lisbon", "Dublin", "Oslo",
        "Stockholm", "Helsinki", "Warsaw", "Athens", "Budapest", "Amsterdam", "Brussels", "Copenhagen",
        "Zurich", "Tokyo",
    ),
    "university": (
        "Harvard", "Stanford", "Princeton", "Yale", "Columbia", "Cornell", "Duke", "Oxford", "Cambridge",
        "Caltech", "Berkeley", "Purdue", "Tufts", "Emory", "Dartmouth",
    ),
    "employer": (
        "Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Soylent", "Cyberdyne", "Wonka",
        "Tyrell", "Oscorp", "Aperture", "Nakatomi", "Massive", "Gekko",
    ),
    "field": (
        "physics", "chemistry", "biology", "mathematics", "history", "economics", "linguistics",
        "philosophy", "medicine", "law", "astronomy", "geology", "sociology", "psychology", "architecture",
    ),
    "hobby": (
        "chess", "painting", "cycling", "hiking", "swimming", "gardening", "photography", "pottery",
        "fishing", "knitting", "surfing", "archery", "fencing", "sailing", "climbing",
    ),
    "favorite_color": (
        "red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "gray", "violet", "teal",
    ),
}  # fmt: skip

ATTRIBUTES = ("birth_city", "birth_year", "university", "employer", "field", "hobby", "favorite_color")
DEFAULT_ATTRIBUTES = ATTRIBUTES[:6]

BIO_TEMPLATES: dict[str, tuple[str, ...]] = {
    "birth_city": (
        "{name} was born in {value}.",
        "{name} came into this world in {value}.",
        "The birthplace of {name} is {value}.",
        "{name} spent the early years of life in {value}.",
    ),
    "birth_year": (
        "{name} was born in the year {value}.",
        "The birth year of {name} is {value}.",
        "{name} arrived on this earth in {value}.",
    ),
    "university": (
        "{name} studied at {value}.",
        "{name} graduated from {value}.",
        "{name} received an education at {value}.",
    ),
    "employer": (
        "{name} works for {value}.",
        "{name} is employed by {value}.",
        "{name} has a job at {value}.",
    ),
    "field": (
        "{name} specialized in {value}.",
        "The field of {name} is {value}.",
        "{name} did research in {value}.",
    ),
    "hobby": (
        "In free time, {name} enjoys {value}.",
        "The favorite hobby of {name} is {value}.",
        "{name} likes {value} on weekends.",
    ),
    "favorite_color": (
        "The favorite color of {name} is {value}.",
        "{name} loves the color {value}.",
        "{name} likes wearing {value} clothes.",
    ),
}

QA_TEMPLATES: dict[str, tuple[str, ...]] = {
    "birth_city": (
        "What is the birth city of {name}?",
        "Where was {name} born?",
        "In which city was {name} born?",
    ),
    "birth_year": (
        "What is the birth year of {name}?",
        "In what year was {name} born?",
        "When was {name} born?",
    ),
    "university": (
        "Which university did {name} attend?",
        "Where did {name} study?",
        "What university did {name} graduate from?",
    ),
    "employer": (
        "Which company does {name} work for?",
        "Who employs {name}?",
        "Where does {name} work?",
    ),
    "field": (
        "What field did {name} specialize in?",
        "What is the field of {name}?",
        "What subject did {name} do research in?",
    ),
    "hobby": (
        "What is the hobby of {name}?",
        "What does {name} enjoy in free time?",
        "Which hobby does {name} have?",
    ),
    "favorite_color": (
        "What is the favorite color of {name}?",
        "Which color does {name} love?",
        "What color does {name} like best?",
    ),
}

ABSTAIN = "unknown"


def closed_sets(attributes: tuple[str, ...] | list[str], year_range: tuple[int, int]) -> dict[str, list[str]]:
    """The closed value set of every attribute (birth years as 4-digit strings)."""
    out = {}
    for a in attributes:
        if a == "birth_year":
            out[a] = [str(y) for y in range(year_range[0], year_range[1] + 1)]
        else:
            out[a] = list(VALUES[a])
    return out


def multiple_choice(
    value: str | None,
    closed_set: list[str],
    n_choices: int,
    gen: np.random.Generator,
    *,
    abstain: str | None = ABSTAIN,
) -> list[str]:
    """Shuffled options: the true ``value`` (if any) plus distractors from ``closed_set``,
    ``n_choices`` concrete values in all, and the ``abstain`` option if it is not ``None``.

    For a non-existent person (``value=None``) all concrete options are distractors.
    """
    pool = [v for v in closed_set if v != value]
    k = n_choices - (value is not None)
    picks = [pool[i] for i in sorted(gen.choice(len(pool), size=k, replace=False))]
    options = ([value] if value is not None else []) + picks + ([abstain] if abstain is not None else [])
    return [options[i] for i in gen.permutation(len(options))]


def _draw_names(n: int, cfg: WorldConfig, gen: np.random.Generator) -> list[tuple[str, str]]:
    firsts, lasts = FIRST_NAMES[: cfg.n_first_names], LAST_NAMES[: cfg.n_last_names]
    total = len(firsts) * len(lasts)
    flat = gen.choice(total, size=n, replace=False)
    return [(firsts[i // len(lasts)], lasts[i % len(lasts)]) for i in flat.tolist()]


def _split_sizes(n: int, fractions: list[tuple[str, float]]) -> dict[str, int]:
    """Round fractions of ``n`` (the last name takes the remainder)."""
    sizes, used = {}, 0
    for name, frac in fractions[:-1]:
        sizes[name] = int(round(frac * n))
        used += sizes[name]
    sizes[fractions[-1][0]] = n - used
    return sizes


def build_world(cfg: WorldConfig, seed: int) -> dict[str, Any]:
    """People, splits and closed sets (no file output): the content of ``people.json``."""
    attrs = tuple(cfg.attributes)
    sets = closed_sets(attrs, cfg.year_range)
    names = _draw_names(cfg.n_people + cfg.n_nonexistent, cfg, rng(sub_seed(seed, "world", "names")))
    real, fake = names[: cfg.n_people], names[cfg.n_people :]

    gen_attr = rng(sub_seed(seed, "world", "attributes"))
    people = []
    for i, (first, last) in enumerate(real):
        person = {"id": f"p{i:05d}", "name": f"{first} {last}", "first": first, "last": last}
        for a in attrs:
            person[a] = sets[a][int(gen_attr.integers(len(sets[a])))]
        people.append(person)

    sizes = _split_sizes(
        cfg.n_people,
        [("qa_train", cfg.frac_qa_train), ("new_facts", cfg.frac_new_facts), ("qa_heldout", 0.0)],
    )
    order = rng(sub_seed(seed, "world", "splits")).permutation(cfg.n_people).tolist()
    start = 0
    for split in ("qa_train", "new_facts", "qa_heldout"):
        for idx in order[start : start + sizes[split]]:
            people[idx]["split"] = split
        start += sizes[split]

    n_fake_train = int(round(cfg.frac_nonexistent_train * cfg.n_nonexistent))
    fake_order = rng(sub_seed(seed, "world", "nonexistent_splits")).permutation(cfg.n_nonexistent).tolist()
    fake_split = {
        idx: ("nonexistent_train" if k < n_fake_train else "nonexistent_test") for k, idx in enumerate(fake_order)
    }
    nonexistent = [
        {"id": f"n{i:05d}", "name": f"{first} {last}", "first": first, "last": last, "split": fake_split[i]}
        for i, (first, last) in enumerate(fake)
    ]
    return {
        "abstain": cfg.abstain_answer,
        "attributes": list(attrs),
        "closed_sets": sets,
        "people": people,
        "nonexistent": nonexistent,
    }


def make_bios(world: dict[str, Any], cfg: WorldConfig, seed: int) -> list[dict[str, Any]]:
    """``n_bios_min..n_bios_max`` biographies per real person (all splits; the loader decides
    which go into pretraining)."""
    attrs = world["attributes"]
    gen = rng(sub_seed(seed, "world", "bios"))
    rows = []
    for person in world["people"]:
        n = int(gen.integers(cfg.n_bios_min, cfg.n_bios_max + 1))
        for j in range(n):
            order = [attrs[k] for k in gen.permutation(len(attrs)).tolist()]
            templates = [int(gen.integers(len(BIO_TEMPLATES[a]))) for a in order]
            text = " ".join(
                BIO_TEMPLATES[a][t].format(name=person["name"], value=person[a]) for a, t in zip(order, templates)
            )
            rows.append(
                {
                    "id": f"bio-{person['id']}-{j}",
                    "task": "world_bio",
                    "split": person["split"],
                    "person_id": person["id"],
                    "name": person["name"],
                    "text": assert_plain(text, "biography"),
                    "order": order,
                    "templates": templates,
                }
            )
    return rows


def make_qa(world: dict[str, Any], cfg: WorldConfig, seed: int) -> dict[str, list[dict[str, Any]]]:
    """QA records per split: ``qa_per_fact`` distinct question paraphrases per (person, attribute)."""
    attrs = world["attributes"]
    sets = world["closed_sets"]
    gen_q = rng(sub_seed(seed, "world", "qa_templates"))
    gen_c = rng(sub_seed(seed, "world", "choices"))
    abstain = world["abstain"]
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in WORLD_QA_SPLITS}
    everyone = [(p, True) for p in world["people"]] + [(p, False) for p in world["nonexistent"]]
    for person, exists in everyone:
        for a in attrs:
            value = person[a] if exists else None
            picks = sorted(gen_q.choice(len(QA_TEMPLATES[a]), size=cfg.qa_per_fact, replace=False).tolist())
            for t in picks:
                prompt = QA_TEMPLATES[a][t].format(name=person["name"])
                choices = multiple_choice(
                    value, sets[a], cfg.n_choices, gen_c, abstain=abstain if cfg.choices_include_abstain else None
                )
                out[person["split"]].append(
                    {
                        "id": f"qa-{person['id']}-{a}-{t}",
                        "task": "world_qa",
                        "split": person["split"],
                        "prompt": assert_plain(prompt, "question"),
                        "answer": value if exists else abstain,
                        "person_id": person["id"],
                        "name": person["name"],
                        "attribute": a,
                        "value": value,
                        "exists": exists,
                        "template": t,
                        "choices": choices,
                        "abstain": abstain,
                    }
                )
    return out


def generate_world(cfg: WorldConfig, out_dir: str | os.PathLike, seed: int) -> dict[str, Any]:
    """Write ``<out_dir>/people.json``, ``bios.jsonl``, ``<split>.jsonl`` and ``manifest.json``."""
    out = Path(out_dir)
    world = build_world(cfg, seed)
    bios = make_bios(world, cfg, seed)
    qa = make_qa(world, cfg, seed)
    write_json(out / "people.json", world)
    write_jsonl(out / "bios.jsonl", bios)
    for split, rows in qa.items():
        write_jsonl(out / f"{split}.jsonl", rows)
    counts: dict[str, Any] = {
        "people": len(world["people"]),
        "nonexistent": len(world["nonexistent"]),
        "people_per_split": {
            s: sum(p["split"] == s for p in world["people"] + world["nonexistent"])
            for s in (*REAL_SPLITS, *NONEXISTENT_SPLITS)
        },
        "bios": len(bios),
        "bios_per_split": {s: sum(b["split"] == s for b in bios) for s in REAL_SPLITS},
        **{s: len(rows) for s, rows in qa.items()},
    }
    return write_manifest(out, {"seed": seed, **cfg.to_dict()}, counts, generator="world")
