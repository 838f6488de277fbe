"""Readers for medical VQA datasets in the layouts users have on disk.

Each reader is a Grain random-access source (`__len__`, `__getitem__` ->
`records.Record`) over one split of one dataset: VQA-RAD (`vqa_rad`), SLAKE
(`slake`), PathVQA (`pathvqa`), the out-of-distribution sets (`ood`) and
TFDS ArrayRecord copies of them (`tfds_builders`). `medthink` attaches the
MedThink gold rationales and `build_mrpo` writes MRPO's training and test
files. The layouts are described in docs/datasets.md.
"""
