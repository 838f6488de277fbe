"""The readers on fixtures in each real layout, local and through gs://."""

import pickle

import pytest

from stepjax.data import records
from stepjax.data.readers import ood, pathvqa, slake, vqa_rad

from . import fixtures


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("raw")
  fixtures.write_vqa_rad(root / "vqa_rad")
  fixtures.write_vqa_rad_parquet(root / "vqa_rad_hf")
  fixtures.write_slake(root / "slake")
  fixtures.write_pathvqa(root / "pathvqa")
  fixtures.write_pmc_vqa(root / "pmc_vqa")
  fixtures.write_vqa_med(root / "vqa_med")
  fixtures.write_quilt_vqa(root / "quilt")
  fixtures.write_quilt_vqa(root / "quilt_json", jsonl=False)
  return root


def _all(source):
  return [source[i] for i in range(len(source))]


def test_vqa_rad_json_splits_and_fields(data):
  train = vqa_rad.open_source(data / "vqa_rad", split="train")
  test = vqa_rad.open_source(data / "vqa_rad", split="test", check_images=True)
  assert isinstance(train, vqa_rad.VqaRadJsonSource)
  assert [r.id for r in _all(train)] == fixtures.VQA_RAD_TRAIN
  assert [r.id for r in _all(test)] == fixtures.VQA_RAD_TEST
  record = train[2]
  assert isinstance(record, records.Record)
  assert record.answer == "2"  # a number in the json
  assert record.dataset == "vqa_rad"
  assert record.image.path.endswith("VQA_RAD Image Folder/synpic101.jpg")
  assert record.meta["phrase_type"] == "para"
  assert record.meta["image_key"] == "synpic101.jpg"
  assert test[0].meta["split"] == "test"
  assert not train.skipped


def test_vqa_rad_parquet_copy(data):
  train = vqa_rad.open_source(data / "vqa_rad_hf", split="train")
  assert isinstance(train, vqa_rad.VqaRadParquetSource)
  assert [r.id for r in _all(train)] == [f"vqa_rad/train/{i}" for i in range(4)]
  assert [r.answer for r in _all(train)] == ["CT", "no", "2", "Left lobe"]
  assert train[0].image.data == fixtures.image_bytes("rad/synpic100.jpg")
  assert train[0].meta["image_key"] == "synpic100.jpg"
  assert len(vqa_rad.open_source(data / "vqa_rad_hf", split="test")) == 3


def test_slake_language_filter_and_images(data):
  train = slake.SlakeSource(data / "slake", split="train", check_images=True)
  assert [r.id for r in _all(train)] == [
    "slake/train/10",
    "slake/train/11",
    "slake/train/13",
    "slake/train/14",
  ]
  assert train[0].image.path.endswith("imgs/xmlab1/source.jpg")
  assert train[0].meta["image_key"] == "xmlab1_source.jpg"
  assert train[0].meta["triple"] == ["vhead", "_", "_"]
  both = slake.SlakeSource(data / "slake", split="test", q_lang=None)
  assert len(both) == 3
  zh = slake.SlakeSource(data / "slake", split="validation", q_lang="zh")
  assert len(zh) == 0
  with pytest.raises(ValueError, match="split"):
    slake.SlakeSource(data / "slake", split="val")


def test_pathvqa_bytes_and_ids_per_split(data):
  sources = {
    s: pathvqa.PathVqaSource(data / "pathvqa", split=s, check_images=True)
    for s in pathvqa.SPLITS
  }
  assert [len(sources[s]) for s in pathvqa.SPLITS] == [4, 1, 2]
  train, test = sources["train"], sources["test"]
  # Rows count across the two train shards.
  assert [r.id for r in _all(train)] == [f"pathvqa/train/{i}" for i in range(4)]
  assert train[3].question == "where is this?"
  # Same stored path, different images, different ids.
  assert train[0].meta["image_path"] == test[0].meta["image_path"]
  assert train[0].id != test[0].id
  assert train[0].image.data == fixtures.image_bytes("path/tr1")
  assert test[0].image.data == fixtures.image_bytes("path/te1")
  # Random access in any order, then after pickling (Grain workers).
  assert train[2].image.data == fixtures.image_bytes("path/tr2")
  clone = pickle.loads(pickle.dumps(train))
  assert clone[1].image.data == train[1].image.data


def test_pmc_vqa(data):
  source = ood.PmcVqaSource(data / "pmc_vqa", split="test", check_images=True)
  assert len(source) == 2
  record = source[1]
  assert record.id == "pmc_vqa/test/1"
  assert (record.question, record.answer) == ("Which side?", "Left")
  assert record.meta["choices"][1] == "B:Left"
  assert record.meta["answer_label"] == "B"
  assert record.image.path.endswith("images/PMC2_fig3.jpg")


def test_vqa_med_alternatives(data):
  source = ood.VqaMed2019Source(data / "vqa_med", check_images=True)
  assert [r.answer for r in _all(source)] == [
    "ct w/contrast (iv)",
    "axial",
    "yes",
  ]
  assert source[1].meta["answers"] == ["axial", "transverse"]
  assert source[1].meta["category"] == "plane"
  assert source[1].image.path.endswith("VQAMed2019_Test_Images/synpic1002.jpg")


@pytest.mark.parametrize("folder", ["quilt", "quilt_json"])
def test_quilt_vqa(data, folder):
  source = ood.QuiltVqaSource(data / folder, check_images=True)
  assert [r.id for r in _all(source)] == ["quilt_vqa/0", "quilt_vqa/1"]
  assert source[0].answer == "lymph node"
  assert source[0].meta["context"] == "H&E stain"
  assert source[0].image.path.endswith("images/quilt_1.jpg")


def test_gs_paths_through_epath(data):
  """Every reader accepts gs:// paths (a fake bucket backed by data/)."""
  with fixtures.fake_gcs(data) as touched:
    rad = vqa_rad.open_source(fixtures.gs("vqa_rad"), check_images=True)
    assert rad[0].image.path == (
      "gs://fake-bucket/vqa_rad/VQA_RAD Image Folder/synpic100.jpg"
    )
    hf = vqa_rad.open_source(fixtures.gs("vqa_rad_hf"), split="test")
    assert hf[0].image.data == fixtures.image_bytes("rad/synpic102.jpg")
    sl = slake.SlakeSource(fixtures.gs("slake"), check_images=True)
    assert sl[0].image.path.startswith("gs://fake-bucket/slake/imgs/")
    pv = pathvqa.PathVqaSource(fixtures.gs("pathvqa"), check_images=True)
    assert pv[3].image.data == fixtures.image_bytes("path/tr3")
    assert len(ood.PmcVqaSource(fixtures.gs("pmc_vqa"), check_images=True))
    assert len(ood.VqaMed2019Source(fixtures.gs("vqa_med"), check_images=True))
    assert len(ood.QuiltVqaSource(fixtures.gs("quilt"), check_images=True))
  assert any(p.endswith(".parquet") for p in touched)
  assert any(p.endswith("/imgs/xmlab1/source.jpg") for p in touched)


@pytest.mark.parametrize("dataset", ["slake", "pathvqa"])
def test_through_pipeline_into_batches(data, dataset):
  """Path images (SLAKE) and parquet bytes (PathVQA) decode and batch."""
  pipeline = pytest.importorskip(
    "stepjax.data.pipeline",
    reason="stepjax/data/pipeline.py (another engineer's) is not in yet",
  )
  tokenizer = pytest.importorskip("stepjax.data.tokenizer")
  if not hasattr(pipeline, "make_dataset"):
    pytest.skip("stepjax.data.pipeline has no make_dataset yet")
  if dataset == "slake":
    source = slake.SlakeSource(data / "slake", split="train")
  else:
    source = pathvqa.PathVqaSource(data / "pathvqa", split="train")
  opts = pipeline.PipelineOptions(
    batch_size=2,
    token_buckets=(256, 512),
    patch_buckets=(16, 64),
    shuffle=False,
    read_threads=0,
  )
  batches = list(
    pipeline.make_dataset(
      source,
      tokenizer.load_tokenizer(""),
      opts,
      shard_index=0,
      shard_count=1,
    )
  )
  assert len(batches) == 2
  ids = [str(i) for batch in batches for i in batch["ids"]]
  assert ids == [source[i].id for i in range(4)]
  assert batches[0]["pixels_IxNxP"].shape[0] == 2
