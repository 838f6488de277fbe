"""`stepjax synthmed`: writes a SynthMed sample set and a contact sheet.

  stepjax synthmed --out=runs/synthmed_samples --num=16 \
      --config.data.difficulty=0.5

Writes <out>/synthmed.json + <out>/images/*.png (export_mrpo_json) and
<out>/contact_sheet.png showing each image with its question, gold steps
and answer; prints where it wrote and the generation speed (examples/s,
scene sampling plus rendering). Size, difficulty, cascade rate and seed come
from config.data.image_size / difficulty / cascade_rate and config.seed.
"""

from __future__ import annotations

import os
import textwrap
import time
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from stepjax.data import records as records_lib
from stepjax.data import synthmed
from stepjax.errors import InputError

DEFAULT_OUT = "runs/synthmed_samples"
_TILE = 224  # displayed image size in the contact sheet
_TEXT_W = 420
_LINE_H = 14
_WRAP = 62


def contact_sheet(
  records: list[records_lib.Record], path: str, *, columns: int = 2
) -> str:
  """Draws records (image, question, gold steps, answer) into one PNG."""
  if not records:
    raise InputError("contact_sheet needs at least one record (--num >= 1)")
  font = ImageFont.load_default()
  cell_w, cell_h = _TILE + _TEXT_W, _TILE + 8
  rows = -(-len(records) // columns)
  sheet = Image.new("L", (columns * cell_w, rows * cell_h), color=255)
  draw = ImageDraw.Draw(sheet)
  for k, rec in enumerate(records):
    x, y = (k % columns) * cell_w, (k // columns) * cell_h
    tile = Image.fromarray(np.asarray(rec.image.array, np.uint8))
    sheet.paste(tile.resize((_TILE, _TILE), Image.NEAREST), (x + 4, y + 4))
    lines = [f"{rec.id}", f"Q: {rec.question}"]
    for n, step in enumerate(synthmed.gold_steps(synthmed.scene_of(rec))):
      lines += textwrap.wrap(f"{n + 1}. {step}", _WRAP)
    lines.append(f"A: {rec.answer}")
    cascade = rec.meta.get("cascade")
    if cascade:
      lines.append(
        f"SFT cascade ({cascade['kind']}, wrong from step "
        f"{cascade['first_wrong_step'] + 1}): {rec.meta['sft_answer']}"
      )
    for j, line in enumerate(lines[: cell_h // _LINE_H - 1]):
      draw.text((x + _TILE + 12, y + 6 + j * _LINE_H), line, fill=0, font=font)
  sheet.save(path)
  return path


def main(argv: list[str], config: Any, flag_values: Any) -> None:
  """Entry point called by stepjax.main with the parsed config and flags."""
  out = flag_values.out or DEFAULT_OUT
  num = int(flag_values.num)
  if num < 1:
    raise InputError(f"--num must be >= 1 for stepjax synthmed; got {num}")
  start = time.perf_counter()
  records = synthmed.generate(
    num,
    int(config.seed),
    image_size=int(config.data.image_size),
    difficulty=float(config.data.difficulty),
    cascade_rate=float(config.data.cascade_rate),
  )
  elapsed = time.perf_counter() - start
  os.makedirs(out, exist_ok=True)  # after the values proved good
  json_path = synthmed.export_mrpo_json(records, out)
  sheet = contact_sheet(records[:32], os.path.join(out, "contact_sheet.png"))
  print(f"wrote {len(records)} SynthMed records to {json_path}")
  print(f"wrote contact sheet {sheet}")
  print(
    f"generation + render: {num / max(elapsed, 1e-9):.0f} examples/s "
    f"({config.data.image_size} px, {num} records, {elapsed:.2f} s)"
  )
