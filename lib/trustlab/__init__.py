"""trustlab: reproducible research on making language models trustworthy.

Shared mechanics (configuration, seeding, tracking, data, the tiny GPT, generation,
metrics) live here once and are used by every method family's notebook.
"""

__version__ = "0.1.0"
