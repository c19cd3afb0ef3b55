"""Data: few-shot datasets, readers for the benchmark formats, and the episode sampler."""

from metasparse.data.base import ArrayDataset, FewShotDataset
from metasparse.data.registry import available_datasets, build_dataset

__all__ = ["ArrayDataset", "FewShotDataset", "available_datasets", "build_dataset"]
