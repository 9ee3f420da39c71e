"""The ``data:`` params section: one sub-section per generator."""

from __future__ import annotations

from dataclasses import dataclass, field

from trustlab.core.config import ConfigError, Section
from trustlab.data.tasks import GENERATORS, is_plain


@dataclass(frozen=True)
class WorldConfig(Section):
    SECTION = "data.world"

    n_people: int = 1000
    """Real people (unique full names)."""
    n_nonexistent: int = 200
    """People who do not exist (names from the same pools, colliding with no real person)."""
    attributes: list[str] = field(
        default_factory=lambda: ["birth_city", "birth_year", "university", "employer", "field", "hobby"]
    )
    """Attributes of every person (subset of world.ATTRIBUTES; ``favorite_color`` is the 7th)."""
    year_range: tuple[int, int] = (1960, 1999)
    """Closed set of birth years, inclusive."""
    n_bios_min: int = 3
    n_bios_max: int = 4
    """Biographies per person: uniform in ``[n_bios_min, n_bios_max]``."""
    frac_qa_train: float = 0.5
    """Fraction of real people whose QA is trained on (biographies in pretraining)."""
    frac_new_facts: float = 0.1
    """Fraction of real people whose biographies are withheld from pretraining. The rest
    (``1 - frac_qa_train - frac_new_facts``) is ``qa_heldout``."""
    frac_nonexistent_train: float = 0.5
    """Fraction of non-existent people in ``nonexistent_train`` (teaches abstention)."""
    qa_per_fact: int = 1
    """Distinct question paraphrases per (person, attribute), <= the number of QA templates (3)."""
    n_choices: int = 4
    """Concrete options in ``choices`` (the true value + distractors from the closed set)."""
    choices_include_abstain: bool = True
    """Add the abstention string to ``choices`` (then every record's answer is among them)."""
    abstain_answer: str = "unknown"
    n_first_names: int = 60
    n_last_names: int = 60
    """Name pools: the first k of world.FIRST_NAMES / LAST_NAMES."""

    def validate(self) -> None:
        from trustlab.data.world import ATTRIBUTES, FIRST_NAMES, LAST_NAMES, QA_TEMPLATES, VALUES, closed_sets

        self.check_range("n_people", 1)
        self.check_range("n_nonexistent", 0)
        self.check_subset("attributes", ATTRIBUTES)
        if len(set(self.attributes)) != len(self.attributes):
            self.fail("attributes", "each attribute at most once")
        lo, hi = self.year_range
        self.check_range("year_range", 1000, 9999)
        if lo > hi:
            self.fail("year_range", "[first, last] with first <= last")
        self.check_range("n_bios_min", 1)
        self.check_range("n_bios_max", self.n_bios_min)
        self.check_range("frac_qa_train", 0, 1)
        self.check_range("frac_new_facts", 0, 1)
        if self.frac_qa_train + self.frac_new_facts > 1 + 1e-9:
            raise ConfigError(
                f"{self._path()}.frac_qa_train + frac_new_facts = {self.frac_qa_train} + {self.frac_new_facts} "
                f"> 1: the fractions of real people must sum to at most 1 (the rest is qa_heldout)"
            )
        self.check_range("frac_nonexistent_train", 0, 1)
        self.check_range("qa_per_fact", 1, min(len(QA_TEMPLATES[a]) for a in self.attributes))
        sets = closed_sets(self.attributes, self.year_range)
        self.check_range("n_choices", 2, min(len(s) for s in sets.values()))
        if not is_plain(self.abstain_answer):
            self.fail("abstain_answer", "plain text (letters, digits, single spaces, basic punctuation)")
        taken = {v.lower() for vals in VALUES.values() for v in vals}
        if self.abstain_answer.lower() in taken or self.abstain_answer.isdigit():
            self.fail("abstain_answer", "a string that is no attribute value")
        self.check_range("n_first_names", 1, len(FIRST_NAMES))
        self.check_range("n_last_names", 1, len(LAST_NAMES))
        capacity = self.n_first_names * self.n_last_names
        if self.n_people + self.n_nonexistent > capacity:
            raise ConfigError(
                f"{self._path()}.n_people + n_nonexistent = {self.n_people + self.n_nonexistent} is out of range: "
                f"at most n_first_names * n_last_names = {capacity} unique names"
            )


@dataclass(frozen=True)
class ArithmeticConfig(Section):
    SECTION = "data.arithmetic"

    n_train: int = 6000
    n_test: int = 500
    n_ood: int = 500
    add_digits: tuple[int, int] = (1, 3)
    """Operand length range (digits, inclusive) of in-distribution additions; each operand's
    length is uniform in the range, then its value uniform among numbers of that length."""
    add_ood_digits: tuple[int, int] = (4, 5)
    mul_digits: tuple[int, int] = (1, 2)
    mul_ood_digits: tuple[int, int] = (3, 3)
    mul_fraction: float = 0.2
    """Fraction of multiplications (0 = addition only, 1 = multiplication only)."""
    reverse_answer: bool = False
    """Write answer digits reversed (least significant first)."""
    prompt_style: str = "compact"
    """``compact``: ``12+345=``; ``question``: ``what is 12 + 345?``."""

    def validate(self) -> None:
        self.check_range("n_train", 1)
        self.check_range("n_test", 0)
        self.check_range("n_ood", 0)
        for key in ("add_digits", "add_ood_digits", "mul_digits", "mul_ood_digits"):
            self.check_range(key, 1, 18)
            lo, hi = getattr(self, key)
            if lo > hi:
                self.fail(key, "[min, max] with min <= max")
        for key, ood in (("add_ood_digits", "add_digits"), ("mul_ood_digits", "mul_digits")):
            if getattr(self, key)[0] <= getattr(self, ood)[1]:
                self.fail(key, f"longer operands than {ood} (min > {getattr(self, ood)[1]})")
        self.check_range("mul_fraction", 0, 1)
        self.check_choice("prompt_style", ["compact", "question"])


@dataclass(frozen=True)
class InstructionsConfig(Section):
    SECTION = "data.instructions"

    n_train: int = 2000
    n_test: int = 300
    n_words: tuple[int, int] = (3, 8)
    """Range of N in "write N words about T" (inclusive)."""
    topics: list[str] = field(
        default_factory=lambda: ["ocean", "forest", "music", "food", "space", "sports", "weather", "school"]
    )
    """Subset of instructions.TOPICS."""

    def validate(self) -> None:
        from trustlab.data.instructions import TOPICS

        self.check_range("n_train", 1)
        self.check_range("n_test", 0)
        self.check_subset("topics", sorted(TOPICS))
        if len(set(self.topics)) != len(self.topics):
            self.fail("topics", "each topic at most once")
        self.check_range("n_words", 1, min(len(TOPICS[t]) for t in self.topics))
        if self.n_words[0] > self.n_words[1]:
            self.fail("n_words", "[min, max] with min <= max")


@dataclass(frozen=True)
class ContextCopyConfig(Section):
    SECTION = "data.context_copy"

    n_train: int = 2000
    n_test: int = 300
    n_vars: tuple[int, int] = (2, 5)
    """Number of variables per prompt (inclusive range; at most 26)."""
    value_max: int = 9
    """Values are integers 0..value_max."""

    def validate(self) -> None:
        self.check_range("n_train", 1)
        self.check_range("n_test", 0)
        self.check_range("n_vars", 1, 26)
        if self.n_vars[0] > self.n_vars[1]:
            self.fail("n_vars", "[min, max] with min <= max")
        self.check_range("value_max", 1, 10**9)


@dataclass(frozen=True)
class ScratchpadConfig(Section):
    SECTION = "data.scratchpad"

    n_train: int = 1500
    n_test: int = 300
    digits: tuple[int, int] = (2, 3)
    """Operand length range (digits, inclusive); one step per column of the longer operand."""

    def validate(self) -> None:
        self.check_range("n_train", 1)
        self.check_range("n_test", 0)
        self.check_range("digits", 1, 18)
        if self.digits[0] > self.digits[1]:
            self.fail("digits", "[min, max] with min <= max")


@dataclass(frozen=True)
class CodeCorpusConfig(Section):
    SECTION = "data.code_corpus"

    max_bytes: int = 6_000_000
    """Cap on the total size of the selected files."""
    max_file_bytes: int = 100_000
    """Skip single files larger than this (e.g. generated tables)."""
    val_fraction: float = 0.1
    """Fraction of files in the ``val`` split (split by file)."""
    order: str = "shuffled"
    """``sorted``: take files in path order up to the cap; ``shuffled``: a seeded permutation
    of the sorted list (more diverse under a small cap)."""
    ascii_only: bool = True
    """Skip files with non-ASCII characters."""
    exclude_dirs: list[str] = field(
        default_factory=lambda: [
            "test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "encodings"
        ]
    )
    """Directory names skipped anywhere in the tree (also skipped: files named test_*.py)."""

    def validate(self) -> None:
        self.check_range("max_bytes", 1)
        self.check_range("max_file_bytes", 1)
        self.check_range("val_fraction", 0, 1, hi_open=True)
        self.check_choice("order", ["sorted", "shuffled"])


@dataclass(frozen=True)
class DataConfig(Section):
    SECTION = "data"

    seed: int = 0
    """Master seed; every generator derives its own sub-seed from it by name."""
    generators: list[str] = field(default_factory=lambda: list(GENERATORS))
    """Which generators ``generate_all`` runs."""
    world: WorldConfig = field(default_factory=WorldConfig)
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    instructions: InstructionsConfig = field(default_factory=InstructionsConfig)
    context_copy: ContextCopyConfig = field(default_factory=ContextCopyConfig)
    scratchpad: ScratchpadConfig = field(default_factory=ScratchpadConfig)
    code_corpus: CodeCorpusConfig = field(default_factory=CodeCorpusConfig)

    def validate(self) -> None:
        self.check_range("seed", 0)
        self.check_subset("generators", GENERATORS)
        for name in ("world", "arithmetic", "instructions", "context_copy", "scratchpad", "code_corpus"):
            getattr(self, name).validate()
