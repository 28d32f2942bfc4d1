"""mwp: distil math-word-problem skill from a large teacher into a tiny Flan-T5 student."""

__version__ = "0.1.0"
