"""Small datasets in the real on-disk layouts, and a fake gs:// bucket.

Every writer builds a handful of records with the true file names, field
names and structures (json lists, parquet with the `image` {bytes, path}
struct column, pipe files, csv), with tiny generated images. The constants
below say which records MRPO's selection keeps, so tests can list them.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import pathlib
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from etils import epath
from etils.epath import gpath
from etils.epath import testing as epath_testing
from PIL import Image

FAKE_BUCKET = "gs://fake-bucket"


def image_bytes(name: str, fmt: str = "JPEG", size: int = 8) -> bytes:
  """A tiny image whose colour depends on `name` (distinct per name)."""
  seed = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)
  pixels = np.random.default_rng(seed).integers(
    0, 255, (size, size, 3), dtype=np.uint8
  )
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format=fmt)
  return buffer.getvalue()


def _write_image(path: pathlib.Path, key: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fmt = "PNG" if path.suffix == ".png" else "JPEG"
  path.write_bytes(image_bytes(key, fmt))


def _write_json(path: pathlib.Path, obj) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(obj, ensure_ascii=False, indent=1))


def write_parquet(path: pathlib.Path, rows, row_group_size: int = 2) -> None:
  """rows: (image_name, image_bytes or None, question, answer)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
  table = pa.table(
    {
      "image": pa.array(
        [{"bytes": data, "path": name} for name, data, _, _ in rows],
        type=image_type,
      ),
      "question": [r[2] for r in rows],
      "answer": [r[3] for r in rows],
    }
  )
  pq.write_table(table, path, row_group_size=row_group_size)


# ---------------------------------------------------------------- VQA-RAD
# (qid, image_name, question, answer, phrase_type, answer_type)
VQA_RAD_ROWS = [
  (0, "synpic100.jpg", "What modality is used?", "CT", "freeform", "OPEN"),
  (1, "synpic100.jpg", "Is there a fracture?", "no", "freeform", "CLOSED"),
  (2, "synpic101.jpg", "How many lesions are seen?", 2, "para", "OPEN"),
  (3, "synpic101.jpg", "Where is the mass?", "Left lobe", "freeform", "OPEN"),
  (
    4,
    "synpic102.jpg",
    "What organ is shown?",
    "brain",
    "test_freeform",
    "OPEN",
  ),
  (5, "synpic102.jpg", "Is this normal?", "yes", "test_para", "CLOSED"),
  (6, "synpic100.jpg", "Which plane is this?", "axial", "test_para", "OPEN"),
]
VQA_RAD_TRAIN = ["vqa_rad/train/0", "vqa_rad/train/1", "vqa_rad/train/2",
                 "vqa_rad/train/3"]  # fmt: skip
VQA_RAD_TEST = ["vqa_rad/test/4", "vqa_rad/test/5", "vqa_rad/test/6"]


def write_vqa_rad(root: pathlib.Path, rows=None) -> pathlib.Path:
  """The original release: json list + `VQA_RAD Image Folder/`."""
  rows = VQA_RAD_ROWS if rows is None else rows
  items = [
    {
      "qid": qid,
      "image_name": image,
      "image_organ": "HEAD",
      "answer": answer,
      "answer_type": answer_type,
      "question_type": "MODALITY",
      "question": question,
      "phrase_type": phrase,
    }
    for qid, image, question, answer, phrase, answer_type in rows
  ]
  _write_json(root / "VQA_RAD Dataset Public.json", items)
  for image in sorted({r[1] for r in rows}):
    _write_image(root / "VQA_RAD Image Folder" / image, "rad/" + image)
  return root


def write_vqa_rad_parquet(root: pathlib.Path) -> pathlib.Path:
  """The Hugging Face copy: data/{train,test}-00000-of-00001-*.parquet."""
  for split in ("train", "test"):
    rows = [
      (image, image_bytes("rad/" + image), question, str(answer))
      for _, image, question, answer, phrase, _ in VQA_RAD_ROWS
      if phrase.startswith("test") == (split == "test")
    ]
    write_parquet(root / "data" / f"{split}-00000-of-00001-ab12.parquet", rows)
  return root


# ------------------------------------------------------------------ SLAKE
# split -> (qid, img_id, img_name, question, answer, q_lang)
SLAKE_ROWS = {
  "train": [
    (10, 1, "xmlab1/source.jpg", "Which organ is abnormal?", "Lung", "en"),
    (11, 1, "xmlab1/source.jpg", "Is the lung healthy?", "No", "en"),
    (12, 1, "xmlab1/source.jpg", "哪个器官不正常?", "肺", "zh"),
    (13, 2, "xmlab2/source.jpg", "What modality is used?", "MRI", "en"),
    (14, 2, "xmlab2/source.jpg", "What color is the liver?", "red", "en"),
  ],
  "validation": [
    (20, 2, "xmlab2/source.jpg", "Where is the liver?", "Left", "en"),
  ],
  "test": [
    (30, 3, "xmlab3/source.jpg", "What is the largest organ?", "Liver", "en"),
    (31, 3, "xmlab3/source.jpg", "Does it look normal?", "Yes", "en"),
    (32, 3, "xmlab3/source.jpg", "最大的器官是什么?", "肝脏", "zh"),
  ],
}


def write_slake(root: pathlib.Path) -> pathlib.Path:
  """train/validation/test.json and imgs/xmlabN/{source.jpg,mask.png,...}."""
  for split, rows in SLAKE_ROWS.items():
    items = [
      {
        "img_id": img_id,
        "img_name": img_name,
        "question": question,
        "answer": answer,
        "q_lang": lang,
        "location": "Chest",
        "modality": "CT",
        "answer_type": "OPEN",
        "base_type": "vqa",
        "content_type": "Organ",
        "triple": ["vhead", "_", "_"],
        "qid": qid,
      }
      for qid, img_id, img_name, question, answer, lang in rows
    ]
    _write_json(root / f"{split}.json", items)
  for n in (1, 2, 3):
    folder = root / "imgs" / f"xmlab{n}"
    _write_image(folder / "source.jpg", f"slake/xmlab{n}")
    _write_image(folder / "mask.png", f"slake/mask{n}")
    _write_json(folder / "detection.json", [])
    _write_json(folder / "question.json", [])
  return root


# --------------------------------------------------------------- PathVQA
# split -> shards -> (image path, image key, question, answer); the key
# makes train and test `img_1.jpg` different images.
PATHVQA_SHARDS = {
  "train": [
    [
      ("img_1.jpg", "tr1", "what is present?", "necrosis"),
      ("img_1.jpg", "tr1", "is this tissue?", "yes"),
    ],
    [
      ("img_2.jpg", "tr2", "what does this show?", "fibrosis"),
      ("img_3.jpg", "tr3", "where is this?", "liver"),
    ],
  ],
  "validation": [[("img_1.jpg", "va1", "what is shown?", "gland")]],
  "test": [
    [
      ("img_1.jpg", "te1", "what is seen?", "tumor"),
      ("img_2.jpg", "te2", "is it malignant?", "no"),
    ]
  ],
}


def write_pathvqa(root: pathlib.Path) -> pathlib.Path:
  """data/{split}-0000K-of-0000N-*.parquet with images as bytes."""
  for split, shards in PATHVQA_SHARDS.items():
    for k, shard in enumerate(shards):
      rows = [
        (path, image_bytes("path/" + key), q, a) for path, key, q, a in shard
      ]
      name = f"{split}-{k:05d}-of-{len(shards):05d}-cd34.parquet"
      write_parquet(root / "data" / name, rows, row_group_size=1)
  return root


# -------------------------------------------------------------- MedThink
# Questions differ from the raw ones in case, spacing and a space before
# "?", which alignment must normalise away.
MEDTHINK = {
    "R-RAD/open-end/trainset.json": {
        "r1": {"image": "synpic100.jpg", "question": "what  modality is used ?",
               "choices": ["CT"], "answer": "CT"},
        "r2": {"image": "synpic100.jpg", "question": "Is there a fracture?",
               "choices": ["No"], "answer": "No"},
        "r3": {"image": "synpic101.jpg",
               "question": "How many lesions are seen ?", "choices": ["2"],
               "answer": 0},
        "r4": {"image": "synpic999.jpg", "question": "What is this?",
               "choices": ["unknown"], "answer": "unknown"},
    },
    "R-RAD/open-end/testset.json": {
        "t1": {"image": "synpic102.jpg", "question": "What organ is shown?",
               "choices": ["Brain"], "answer": "Brain"},
    },
    "R-SLAKE/open-end/train.json": {
        "s1": {"img_name": "xmlab1/source.jpg", "img_id": 1,
               "question": "which organ is abnormal ?", "choices": ["lung"],
               "answer": "lung"},
        "s2": {"img_name": "xmlab1/source.jpg", "img_id": 1,
               "question": "Is the lung healthy?", "choices": ["no"],
               "answer": "no"},
        "s3": {"img_name": "xmlab2/source.jpg", "img_id": 2,
               "question": "What modality is used?", "choices": ["CT", "MRI"],
               "answer": 1},
    },
    "R-PathVQA/open-end/train.json": {
        "p1": {"image": "img_1.jpg", "question": "What is present ?",
               "choices": ["necrosis"], "answer": "necrosis"},
        "p2": {"image": "train/img_2.jpg", "question": "what does this show?",
               "choices": ["fibrosis"], "answer": 0},
        "p3": {"image": "img_9.jpg", "question": "what is this?",
               "choices": ["x"], "answer": "x"},
    },
    "R-PathVQA/open-end/test.json": {
        "pt1": {"image": "img_1.jpg", "question": "what is seen?",
                "choices": ["tumor"], "answer": "tumor"},
    },
}  # fmt: skip


def solution(problem_id: str) -> str:
  """The fixture rationale of MedThink item `problem_id`."""
  return f"Step 1. Look at the image ({problem_id}). Step 2. Answer."


def write_medthink(root: pathlib.Path) -> pathlib.Path:
  """R-RAD, R-SLAKE (no test file) and R-PathVQA open-ended files."""
  for name, items in MEDTHINK.items():
    _write_json(
      root / name,
      {k: {**v, "solution": solution(k)} for k, v in items.items()},
    )
  return root


# What build-mrpo keeps from the fixtures above: the MedThink train rows
# found in the raw train split minus yes/no, and the raw test rows minus
# yes/no (SLAKE English only), with the rationale that matched (if any).
MRPO_TRAIN = {
  "vqa_rad/train/0": "r1",
  "vqa_rad/train/2": "r3",
  "slake/train/10": "s1",
  "slake/train/13": "s3",
  "pathvqa/train/0": "p1",
  "pathvqa/train/2": "p2",
}
MRPO_TEST = {
  "vqa_rad/test/4": "t1",
  "vqa_rad/test/6": None,
  "slake/test/30": None,
  "pathvqa/test/0": "pt1",
}
MRPO_UNMATCHED = {"vqa_rad": ["r4"], "slake": [], "pathvqa": ["p3"]}


# ------------------------------------------------------------------- OOD
PMC_VQA_ROWS = [
    ("PMC1_fig1.jpg", "What is shown?", "A CT scan", "A:A CT scan",
     "B:An MRI", "C:An X-ray", "D:A PET scan", "A"),
    ("PMC2_fig3.jpg", "Which side?", "Left", "A:Right", "B:Left",
     "C:Both", "D:None", "B"),
]  # fmt: skip


def write_pmc_vqa(root: pathlib.Path) -> pathlib.Path:
  """train.csv, test.csv, test_clean.csv and images/."""
  header = ["Figure_path", "Question", "Answer", "Choice A", "Choice B",
            "Choice C", "Choice D", "Answer_label"]  # fmt: skip
  for name in ("train.csv", "test.csv", "test_clean.csv"):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / name, "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(header)
      writer.writerows(PMC_VQA_ROWS)
  for row in PMC_VQA_ROWS:
    _write_image(root / "images" / row[0], "pmc/" + row[0])
  return root


VQA_MED_LINES = [
  "synpic1001|modality|what modality is shown?|ct w/contrast (iv)",
  "synpic1002|plane|which plane is this image taken?|axial#transverse",
  "synpic1003|abnormality|is this image abnormal?|yes",
]


def write_vqa_med(root: pathlib.Path) -> pathlib.Path:
  """VQA-Med 2019 test: pipe file with `#` alternatives and images."""
  root.mkdir(parents=True, exist_ok=True)
  (root / "VQAMed2019_Test_Questions_w_Ref_Answers.txt").write_text(
    "\n".join(VQA_MED_LINES) + "\n"
  )
  for line in VQA_MED_LINES:
    image_id = line.split("|")[0]
    _write_image(
      root / "VQAMed2019_Test_Images" / f"{image_id}.jpg", "med/" + image_id
    )
  return root


QUILT_ROWS = [
    {"image": "quilt_1.jpg", "question": "What tissue is this?",
     "answer": "lymph node", "answer_type": "open", "context": "H&E stain"},
    {"image": "quilt_2.jpg", "question": "Is this malignant?", "answer": "no",
     "answer_type": "closed", "context": ""},
]  # fmt: skip


def write_quilt_vqa(root: pathlib.Path, jsonl: bool = True) -> pathlib.Path:
  """One split: quilt_vqa.jsonl (or .json) plus images/."""
  root.mkdir(parents=True, exist_ok=True)
  if jsonl:
    (root / "quilt_vqa.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in QUILT_ROWS)
    )
  else:
    _write_json(root / "quilt_vqa.json", QUILT_ROWS)
  for row in QUILT_ROWS:
    _write_image(root / "images" / row["image"], "quilt/" + row["image"])
  return root


# split -> (idx, subject, study, dicom, question, answer list, semantic_type)
MIMIC_CXR_VQA_ROWS = {
  "train": [
    (0, 10000032, 50414267, "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014",
     "Is there any abnormality in the left lung?", ["yes"], "verify"),
  ],
  "valid": [
    (0, 10000764, 57375967, "096052b7-d256dc40-453a102b-fa7d01c6-1b22c6b4",
     "Which view is this image?", ["ap"], "query"),
  ],
  "test": [
    (13280, 10001217, 58913004, "5e54fc9c-37c49834-9ac3b915-55811712-9d959d26",
     "List all anatomical findings in the right lung.",
     ["pleural effusion", "atelectasis"], "query"),
    (13281, 10001217, 58913004, "5e54fc9c-37c49834-9ac3b915-55811712-9d959d26",
     "Which abnormalities are seen in the cardiac silhouette?", [], "choose"),
    (13282, 10002428, 51533654, "1bf9c2ff-8ae7d6a2-7e1b5c4c-8f7fd1e6-0d51c3a5",
     "Is the mediastinum abnormal?", ["no"], "verify"),
  ],
}  # fmt: skip


def mimic_image_path(subject: int, study: int, dicom: str) -> str:
  """MIMIC-CXR-JPG's path of an image, relative to its `files/` folder."""
  return f"p{str(subject)[:2]}/p{subject}/s{study}/{dicom}.jpg"


def write_mimic_cxr_vqa(root: pathlib.Path) -> pathlib.Path:
  """dataset/{train,valid,test}.json as the release's build script writes
  them (answers as lists, ids as strings) and MIMIC-CXR-JPG's files/."""
  for split, rows in MIMIC_CXR_VQA_ROWS.items():
    items = [
      {
        "subject_id": str(subject),
        "study_id": str(study),
        "image_path": mimic_image_path(subject, study, dicom),
        "answer": answer,
        "split": split,
        "idx": idx,
        "image_id": dicom,
        "question": question,
        "content_type": "anatomy",
        "semantic_type": semantic,
        "template": question,
        "template_program": "program_1",
        "template_arguments": {"object": {"0": "left lung"}, "attribute": {},
                               "category": {}, "viewpos": {}, "gender": {}},
      }
      for idx, subject, study, dicom, question, answer, semantic in rows
    ]  # fmt: skip
    _write_json(root / "dataset" / f"{split}.json", items)
    for _, subject, study, dicom, *_ in rows:
      path = root / "files" / mimic_image_path(subject, study, dicom)
      _write_image(path, "mimic/" + dicom)
  return root


# ---------------------------------------------------------- fake bucket
@contextlib.contextmanager
def fake_gcs(local_root: pathlib.Path):
  """Serves `local_root` as gs://fake-bucket through epath's backends.

  Yields a list that collects every gs:// path the readers touched, so a
  test can check they really went through the gs:// code path.
  """
  local = str(local_root)
  touched: list[str] = []

  def to_local(path) -> str:
    path = str(path)
    if path.startswith(FAKE_BUCKET):
      touched.append(path)
      return local + path[len(FAKE_BUCKET) :]
    return path

  def to_remote(path) -> str:
    path = str(path)
    return FAKE_BUCKET + path[len(local) :] if path.startswith(local) else path

  def one(original, path, *args, **kwargs):
    return original(to_local(path), *args, **kwargs)

  def two(original, src, dst, *args, **kwargs):
    return original(to_local(src), to_local(dst), *args, **kwargs)

  def glob(original, pattern):
    return [to_remote(p) for p in original(to_local(pattern))]

  def walk(original, top, **kwargs):
    for root, dirs, files in original(to_local(top), **kwargs):
      yield to_remote(root), dirs, files

  with (
    mock.patch.object(gpath, "_is_tf_installed", lambda: False),
    epath_testing.mock_epath(
      open=one,
      exists=one,
      isdir=one,
      listdir=one,
      makedirs=one,
      mkdir=one,
      remove=one,
      rmtree=one,
      stat=one,
      copy=two,
      rename=two,
      replace=two,
      glob=glob,
      walk=walk,
    ),
  ):
    yield touched


def gs(path: str) -> epath.Path:
  """A path inside the fake bucket."""
  return epath.Path(f"{FAKE_BUCKET}/{path}")
