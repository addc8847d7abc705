"""The data layer: readers, preprocessing, long-tail groups, dataset artifacts, named datasets.

Typical use::

    from llmesr.data import prepare, load_dataset
    prepare("beauty-s3rec", "data/beauty")
    ds = load_dataset("data/beauty")
    ds.sequence(1), ds.users, ds.item_table, ds.manifest["groups"]
"""

from llmesr.data.artifact import SequenceDataset, load_dataset
from llmesr.data.pipeline import prepare
from llmesr.data.readers import get_reader, reader_names
from llmesr.data.registry import ENTRIES as DATASETS
from llmesr.data.types import RawData

__all__ = ["DATASETS", "RawData", "SequenceDataset", "get_reader", "load_dataset", "prepare",
           "reader_names"]
