"""A scripted chat-completions server for the answer judge and judge-check
tests (not a test module).

It is `ScriptedServer` of tests/rl/test_rl_judge.py (imported, not copied:
the same threaded local HTTP server, call counters and recorded
Authorization headers) with the reply chosen by a function of the request:
`reply(body) -> (behaviour, content)`, behaviour one of
  ok       HTTP 200 with `content` as the message (and `usage` when set);
  garbage  HTTP 200 with `content`, which is not the JSON asked for;
  timeout  no reply until the server closes (at most STALL_S);
  500      HTTP 500.
"""

import importlib.util
import json
import pathlib
import re

_spec = importlib.util.spec_from_file_location(
  "test_rl_judge_server",
  pathlib.Path(__file__).parents[1] / "rl" / "test_rl_judge.py",
)
_rl_judge = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_rl_judge)

SECRET = _rl_judge.SECRET
KEY_ENV = _rl_judge.KEY_ENV
CLIENT_TIMEOUT_S = _rl_judge.CLIENT_TIMEOUT_S
# For tests that script no timeout: only a hung server would reach it.
PATIENT_TIMEOUT_S = 60.0


class ChatServer(_rl_judge.ScriptedServer):
  def __init__(self, reply, usage=None):
    self.reply = reply
    self.usage = usage  # e.g. {"prompt_tokens": 10, "completion_tokens": 2}
    super().__init__()

  def respond(self, h, body):
    behaviour, content = self.reply(body)
    with self.lock:
      self.calls[behaviour] += 1
      self.replies[behaviour] += 1
    if behaviour == "timeout":
      self.released.wait(_rl_judge.STALL_S)
      return
    if behaviour == "500":
      h.send_response(500)
      h.end_headers()
      return
    reply = {
      "choices": [{"message": {"role": "assistant", "content": content}}]
    }
    if self.usage:
      reply["usage"] = self.usage
    raw = json.dumps(reply).encode()
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(raw)))
    h.end_headers()
    h.wfile.write(raw)


def user_text(body) -> str:
  """The text of the request's user message (content string or parts)."""
  content = body["messages"][1]["content"]
  if isinstance(content, str):
    return content
  return content[-1]["text"]


def field(text: str, name: str) -> str:
  """The value of a `Name: value` line of a prompt."""
  return re.search(rf"^{re.escape(name)}: (.*)$", text, re.M).group(1)


def step_texts(text: str) -> list[str]:
  """The `Step k: ...` lines of a step judge prompt, in order."""
  return re.findall(r"^Step \d+: (.*)$", text, re.M)
