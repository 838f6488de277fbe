r"""The eight benchmarks of MRPO's accuracy table (Jung et al., 2026).

  stepjax eval --config=configs/qwen25vl_7b_mrpo.py \
      --suite=configs/suites/paper.py:root=/data/medvqa \
      --compare=runs/grpo,runs/gdpo,runs/mrpo --workdir=runs/paper_table

In distribution: VQA-RAD, SLAKE (English), PathVQA; out of distribution:
PMC-VQA, VQA-Med 2019, Quilt-VQA, Rad-VQA, MIMIC-CXR-VQA. Every dataset is
read from `root/<folder>` in the layout it ships in (docs/datasets.md); put
a copy (or a symlink) there, or point one dataset elsewhere with
`--suite.datasets.NAME.path=...` (local or gs://). A dataset whose path
does not exist is skipped and marked "missing" in the table.

Rad-VQA: its released layout could not be established from public sources
(docs/datasets.md), so it is read as an MRPO json file
(`[{"image", "problem", "solution"}]`, images relative to the file) that
you write from your copy, at root/rad_vqa/test.json.

Splits: the test splits (PMC-VQA: test_clean, its manually checked test
set). `open_ended`: yes/no questions are dropped, as in MRPO's released
test set (test_open_ended.json) for the three in-distribution sets; the
same is applied to the five others (`:open_ended=false` keeps them).

Variants (comma-separated): root=DIR (default data/medvqa), limit=N (the
first N records of every dataset; 0 = all), open_ended=true|false.
"""

import ml_collections

from stepjax import config_utils

IN, OUT = "in", "out"
# name -> (label, data.dataset, folder under root, split, group)
DATASETS = (
  ("vqa_rad", "VQA-RAD", "vqa_rad", "VQA_RAD", "test", IN),
  ("slake", "SLAKE", "slake", "Slake1.0", "test", IN),
  ("pathvqa", "PathVQA", "pathvqa", "path-vqa", "test", IN),
  ("pmc_vqa", "PMC-VQA", "pmc_vqa", "PMC-VQA", "test_clean", OUT),
  ("vqa_med", "VQA-Med", "vqa_med_2019", "VQA-Med-2019-test", "test", OUT),
  ("quilt_vqa", "Quilt-VQA", "quilt_vqa", "quilt_vqa", "test", OUT),
  ("rad_vqa", "Rad-VQA", "mrpo_json", "rad_vqa/test.json", "test", OUT),
  ("mimic_vqa", "MIMIC-VQA", "mimic_cxr_vqa", "MIMIC-CXR-VQA", "test", OUT),
)


def get_config(arg=None):
  args = config_utils.parse_arg(
    arg, root="data/medvqa", limit=0, open_ended=True
  )
  root = args.root.rstrip("/")
  c = ml_collections.ConfigDict()
  c.name = "paper"
  c.title = (
    "MRPO's eight medical VQA benchmarks (3 in distribution, 5 out of "
    "distribution), open-ended questions."
  )
  c.order = tuple(name for name, *_ in DATASETS)
  c.datasets = ml_collections.ConfigDict()
  for name, label, dataset, folder, split, group in DATASETS:
    c.datasets[name] = ml_collections.ConfigDict(
      {
        "label": label,
        "dataset": dataset,
        "path": f"{root}/{folder}",
        "split": split,
        "limit": args.limit,
        "open_ended": args.open_ended,
        "group": group,
        "image_dir": "",
      }
    )
  c.lock()
  return c
