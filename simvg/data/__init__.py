"""Referring-expression data: readers for the layouts users have, transforms, torch dataset."""

from simvg.data.readers import available_datasets, load_records
from simvg.data.records import DataFormatError, GroundingRecord

__all__ = ["DataFormatError", "GroundingRecord", "available_datasets", "load_records"]
