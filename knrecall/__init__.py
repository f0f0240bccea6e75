"""knrecall: do language models recall the facts behind a two-hop question while they answer it?"""

__version__ = "0.1.0"
