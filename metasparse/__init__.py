"""metasparse: few-shot meta-learning with certified group-sparse SVM heads."""

__version__ = "0.1.0"
