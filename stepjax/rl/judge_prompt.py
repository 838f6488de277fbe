"""What the step judge is asked and how its reply is read.

`build_messages` turns one completion's `process.StepRequest` into chat
messages (our system prompt with the spec's validity criteria, the image
as a data URL when sent, the question, reference, gold rationale and the
numbered steps); `parse_reply` reads the `{"labels": [...]}` object back,
raising `InvalidReply` for anything else. `judge.JudgeClient` does the
HTTP, retries, cache and fallbacks around them.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from stepjax.data import images, records
from stepjax.rl import process

SYSTEM_PROMPT = """\
You grade the reasoning of a medical visual question answering model, one \
step at a time, against a reference answer and a gold rationale written by \
an expert. Use the image when one is given.

A step is VALID (1) when at least one of these holds:
(a) it is aligned with the gold rationale for its position in the chain of \
reasoning: it names the right imaging modality, anatomy, finding, location \
and laterality (left/right), and moves in the right diagnostic direction \
for that stage;
(b) it contributes directly to deriving the reference answer.

A step is INVALID (0) when none of these holds, in particular when it:
- contradicts the image, the gold rationale or the reference answer (wrong \
modality, finding, location, side or direction, or a conclusion built on \
such an error earlier in the chain);
- is meta-commentary about the task, the format or the model itself \
("Let me think step by step.", "I will now look at the image.");
- is empty or only a number or punctuation;
- repeats an earlier step without adding anything.

Judge every step on its own merits; a correct step after a wrong one is \
still valid. Reply with one JSON object and nothing else:
{"labels": [l1, l2, ...]} with exactly one integer 0 or 1 per step, in \
step order."""


class InvalidReply(ValueError):
  """The judge's reply is not the JSON object asked for."""


def _image_mime(data: bytes) -> str:
  if data.startswith(b"\xff\xd8"):
    return "image/jpeg"
  if data.startswith(b"GIF8"):
    return "image/gif"
  if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
    return "image/webp"
  return "image/png"


def user_prompt(req: process.StepRequest) -> str:
  """The text of the user message for one completion."""
  steps = "\n".join(
    f"Step {k}: {t}" for k, t in enumerate(req.step_texts, start=1)
  )
  k = len(req.step_texts)
  return (
    f"Question: {req.question}\n"
    f"Reference answer: {req.reference}\n"
    f"Gold rationale: {req.rationale or '(none given)'}\n\n"
    f"The model's reasoning has {k} steps:\n{steps}\n\n"
    f'Reply with {{"labels": [...]}} holding exactly {k} integers (0 or 1).'
  )


def build_messages(
  req: process.StepRequest, send_image: bool = True
) -> list[dict[str, Any]]:
  """Chat messages for one completion; the image as a base64 data URL."""
  content: list[dict[str, Any]] = []
  if send_image and req.image is not None:
    data = req.image
    if isinstance(data, records.ImageRef):
      data = images.encoded_for_judge(data)
    if isinstance(data, str):
      with open(data, "rb") as f:
        data = f.read()
    url = f"data:{_image_mime(data)};base64,{base64.b64encode(data).decode()}"
    content.append({"type": "image_url", "image_url": {"url": url}})
  content.append({"type": "text", "text": user_prompt(req)})
  return [
    {"role": "system", "content": SYSTEM_PROMPT},
    {"role": "user", "content": content},
  ]


_FENCE = re.compile(r"```[a-zA-Z]*\s*(.*?)\s*```", re.DOTALL)


def parse_reply(text: str, num_steps: int) -> tuple[int, ...]:
  """The labels in a reply `{"labels": [0/1 x num_steps]}`.

  The object may be inside a ``` code fence. Anything else (other keys
  missing, wrong count, values other than the integers 0 and 1) raises
  `InvalidReply`.
  """
  m = _FENCE.search(text)
  body = (m.group(1) if m else text).strip()
  try:
    obj = json.loads(body)
  except json.JSONDecodeError as e:
    raise InvalidReply(f"not JSON ({e.msg}): {body[:80]!r}") from None
  if not isinstance(obj, dict) or "labels" not in obj:
    raise InvalidReply(f'no "labels" key in {body[:80]!r}')
  labels = obj["labels"]
  if not isinstance(labels, list):
    raise InvalidReply(f'"labels" is not a list: {labels!r:.80}')
  if len(labels) != num_steps:
    raise InvalidReply(f"{len(labels)} labels for {num_steps} steps")
  for v in labels:
    if isinstance(v, bool) or not isinstance(v, int) or v not in (0, 1):
      raise InvalidReply(f"label {v!r:.20} is not 0 or 1")
  return tuple(labels)


def reply_text(body: dict[str, Any]) -> str:
  try:
    content = body["choices"][0]["message"]["content"]
  except (KeyError, IndexError, TypeError):
    raise InvalidReply("no choices[0].message.content in the reply") from None
  if isinstance(content, list):  # content parts
    content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
  if not isinstance(content, str):
    raise InvalidReply("message content is not text")
  return content
