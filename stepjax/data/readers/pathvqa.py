"""PathVQA, Hugging Face parquet copy: `data/{train,validation,test}-*.parquet`.

Columns `image` {bytes, path}, `question`, `answer` (lower-cased). Images
come back as encoded bytes. The stored image paths (`img_123.jpg`) repeat
across splits, so ids are `pathvqa/{split}/{row}`, never the path.
"""

from __future__ import annotations

from stepjax.data.readers import parquet

SPLITS = ("train", "validation", "test")


class PathVqaSource(parquet.ParquetVqaSource):
  """One split of PathVQA; see `parquet.ParquetVqaSource` for the arguments."""

  dataset = "pathvqa"
  splits = SPLITS
