"""LLM judge client against a scripted local chat-completions server."""

import collections
import email.utils
import http.server
import importlib.util
import json
import logging
import pathlib
import re
import threading
import time

import pytest

from stepjax.rl import judge, process

SECRET = "sk-test-SECRET-d41d8cd98f00b204"
KEY_ENV = "STEPJAX_TEST_JUDGE_KEY"
# A scripted "timeout" holds its reply for up to STALL_S (until the server
# closes); clients of tests that script timeouts wait CLIENT_TIMEOUT_S, long
# enough that a real reply on a loaded 2-core machine is never cut off.
STALL_S = 30.0
CLIENT_TIMEOUT_S = 1.5


class ScriptedServer:
  """Chat-completions server; the question text picks the behaviour."""

  def __init__(self):
    self.calls = collections.Counter()
    self.replies = collections.Counter()  # by the behaviour used
    self.force = None  # a mode for every request, whatever the question
    self.auth = []
    self.bodies = []
    self.clients = []  # closed with the server
    self.active = 0
    self.max_active = 0
    self.lock = threading.Lock()
    # A scripted timeout holds its request until the server closes: no
    # client timeout, however slow a loaded machine, can outwait it.
    self.released = threading.Event()
    outer = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *args):
        pass

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with outer.lock:
          outer.bodies.append(body)
          outer.auth.append(self.headers.get("Authorization"))
        try:
          outer.respond(self, body)
        except (BrokenPipeError, ConnectionResetError):
          pass

    class Server(http.server.ThreadingHTTPServer):
      # The default listen backlog (5) drops connections beyond it when 8
      # clients connect at once, and their SYN retry outlasts the timeout.
      request_queue_size = 64

    self.httpd = Server(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
    self.thread = threading.Thread(
      target=self.httpd.serve_forever, args=(0.05,), daemon=True
    )
    self.thread.start()

  def respond(self, h, body):
    text = body["messages"][1]["content"][-1]["text"]
    mode = self.force or re.search(r"Question: (\S+)", text).group(1)
    k = int(re.search(r"has (\d+) steps", text).group(1))
    with self.lock:
      self.calls[mode] += 1
      n = self.calls[mode]
    good = json.dumps({"labels": [i % 2 for i in range(k)]})
    behaviour = mode.split("-")[0]
    if behaviour == "timeout":
      self.released.wait(STALL_S)
    if behaviour == "slow":
      # Requests in flight are counted while they are being answered and
      # uncounted before the reply is written: a client that reads its
      # reply and sends the next request can never overlap its own count.
      with self.lock:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
      time.sleep(0.15)
      with self.lock:
        self.active -= 1
    if behaviour == "flaky" and n <= 2:
      behaviour = "500"
    if behaviour == "mixed":  # calls 1, 5, 9 ...: 500; 2, 6, 10 ...: garbage
      behaviour = {1: "500", 2: "garbage"}.get(n % 4, "ok")
    with self.lock:
      self.replies[behaviour] += 1
    if behaviour == "drop":  # close the connection without a reply
      return
    status, content, raw = 200, good, None
    if behaviour == "fence":
      content = f"Here you go:\n```json\n{good}\n```"
    elif behaviour == "garbage":
      content = "Step 1 looks fine to me."
    elif behaviour == "wrongcount":
      content = json.dumps({"labels": [1] * (k + 1)})
    elif behaviour == "non01":
      content = json.dumps({"labels": [2] * k})
    elif behaviour == "bools":
      content = json.dumps({"labels": [True] * k})
    elif behaviour == "nokey":
      content = json.dumps({"steps": [1] * k})
    elif behaviour == "badbody":
      raw = b"<html>oops</html>"
    elif behaviour in ("500", "429", "401"):
      status = int(behaviour)
    if status != 200:
      h.send_response(status)
      if status == 429:
        h.send_header("Retry-After", "0.01")
      h.end_headers()
      # A careless server echoing the credentials in its error body.
      h.wfile.write(
        f"error; you sent {h.headers.get('Authorization')}".encode()
      )
      return
    if raw is None:
      raw = json.dumps(
        {"choices": [{"message": {"role": "assistant", "content": content}}]}
      ).encode()
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(raw)))
    h.end_headers()
    h.wfile.write(raw)

  def close(self):
    self.released.set()
    for client in self.clients:
      client.close()
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def server():
  s = ScriptedServer()
  yield s
  s.close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
  monkeypatch.setenv(KEY_ENV, SECRET)


def make_client(server, **kw):
  args = dict(
    api_key_env=KEY_ENV,
    timeout_s=CLIENT_TIMEOUT_S,
    max_retries=2,
    backoff_s=0.001,
    backoff_max_s=0.01,
    concurrency=8,
  )
  args.update(kw)
  client = judge.JudgeClient(server.url, "judge-model", **args)
  server.clients.append(client)
  return client


def req(mode, k=3, image=None, rid=None):
  return process.StepRequest(
    record_id=rid or mode,
    question=mode,
    reference="left",
    rationale="CT. Left lung. Nodule.",
    step_texts=tuple(f"step {i}." for i in range(k)),
    image=image,
  )


GOOD = (0, 1, 0)


def test_parse_reply():
  assert judge.parse_reply('{"labels": [1, 0]}', 2) == (1, 0)
  assert judge.parse_reply('```json\n{"labels": [1]}\n```', 1) == (1,)
  for bad in (
    '{"labels": [1]}',  # wrong count
    '{"label": [1, 0]}',  # missing key
    '{"labels": [1, 2]}',
    '{"labels": [true, false]}',
    '{"labels": [1.0, 0]}',
    '{"labels": "10"}',
    "[1, 0]",
    "sure! 1 0",
  ):
    with pytest.raises(judge.InvalidReply):
      judge.parse_reply(bad, 2)


def test_prompt_has_criteria_and_image():
  r = req("x", image=b"\x89PNG\r\n\x1a\nfake")
  msgs = judge.build_messages(r, send_image=True)
  system = msgs[0]["content"]
  for word in ("gold rationale", "reference answer", "laterality", "meta"):
    assert word in system.lower()
  parts = msgs[1]["content"]
  assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
  assert "Step 3: step 2." in parts[1]["text"]
  assert "exactly 3" in parts[1]["text"]
  no_img = judge.build_messages(r, send_image=False)[1]["content"]
  assert [p["type"] for p in no_img] == ["text"]


def test_survives_every_failure(server, caplog):
  client = make_client(server)
  modes = [
      "ok", "fence", "flaky", "timeout", "500", "429", "garbage",
      "wrongcount", "non01", "bools", "nokey", "badbody", "401",
  ]  # fmt: skip
  with caplog.at_level(logging.DEBUG, logger="stepjax.rl.judge"):
    out = client.judge([req(m) for m in modes])
  by_mode = dict(zip(modes, out))
  for m in ("ok", "fence", "flaky"):
    assert by_mode[m].labels == GOOD and not by_mode[m].fallback_used, m
  failing = [m for m in modes if m not in ("ok", "fence", "flaky")]
  for m in failing:
    assert by_mode[m].fallback_used, m
    assert by_mode[m].labels == (0, 0, 0)
  st = client.stats
  assert st["fallbacks"] == len(failing) == st["failures"]
  assert st["successes"] == 3
  assert st["error_timeout"] == 3 and st["error_http_429"] == 3
  assert st["error_http_500"] == 3 + 2  # 500 x3, flaky x2
  assert st["error_invalid_reply"] == 3 * 6
  assert st["error_http_401"] == 1  # not retried
  assert server.calls["401"] == 1 and server.calls["garbage"] == 3
  # The key reached the server, and nowhere else.
  assert set(server.auth) == {"Bearer " + SECRET}
  assert SECRET not in caplog.text
  assert "***" in caplog.text  # the echoed key was redacted
  assert SECRET not in repr(client) and SECRET not in str(vars(client))


def test_errors_never_show_the_key(server):
  client = make_client(server)
  for mode in ("401", "500"):
    payload = {"model": "m", "messages": judge.build_messages(req(mode))}
    with pytest.raises(Exception) as info:
      client._post(payload)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)


def test_fallback_modes(server):
  valid = make_client(server, fallback="valid", max_retries=0)
  assert valid.judge([req("500")])[0].labels == (1, 1, 1)
  skip = make_client(server, fallback="skip", max_retries=0)
  lab = skip.judge([req("500-2")])[0]
  assert lab.skipped and lab.fallback_used
  with pytest.raises(ValueError, match="judge.fallback"):
    make_client(server, fallback="retry")
  with pytest.raises(ValueError, match="judge.base_url"):
    judge.JudgeClient("", "m")


def test_cache_persisted(server, tmp_path):
  path = str(tmp_path / "judge_cache.jsonl")
  client = make_client(server, cache_path=path)
  assert client.judge([req("ok", rid="rec1")])[0].labels == GOOD
  assert client.judge([req("ok", rid="rec1")])[0].labels == GOOD
  assert server.calls["ok"] == 1 and client.stats["cache_hits"] == 1
  again = make_client(server, cache_path=path)
  assert again.judge([req("ok", rid="rec1")])[0].labels == GOOD
  assert server.calls["ok"] == 1
  # Another record id or other steps: a new call.
  again.judge([req("ok", rid="rec2")])
  assert server.calls["ok"] == 2
  # Fallbacks are not cached; empty step lists need no call.
  again.judge([req("500", rid="rec3"), req("ok", k=0, rid="rec4")])
  assert len(open(path).read().splitlines()) == 2
  # Another judge model on the same file asks for itself.
  other = make_client(server, cache_path=path)
  other.model = "another-judge-model"
  assert other.judge([req("ok", rid="rec1")])[0].labels == GOOD
  assert server.calls["ok"] == 3 and other.stats["cache_hits"] == 0


def test_bounded_concurrency_and_image(server):
  client = make_client(server, concurrency=3)
  out = client.judge(
    [req(f"slow-{i}", image=b"\xff\xd8jpeg") for i in range(6)]
  )
  # Overlap is counted by the server, not timed: no wall-clock assertion.
  assert all(lab.labels == GOOD for lab in out)
  assert 2 <= server.max_active <= 3
  url = server.bodies[0]["messages"][1]["content"][0]["image_url"]["url"]
  assert url.startswith("data:image/jpeg;base64,")
  assert server.bodies[0]["model"] == "judge-model"


def test_backoff_seeded_and_retry_after(server):
  delays = [[], []]
  for i in range(2):
    client = make_client(
      server, seed=7, backoff_s=0.001, sleep=delays[i].append
    )
    client.judge([req(f"500-{i}")])
  assert delays[0] == delays[1] and len(delays[0]) == 2
  assert 0.0005 <= delays[0][0] < 0.0015 and 0.001 <= delays[0][1] < 0.003
  slept = []
  client = make_client(server, backoff_s=0.0001, sleep=slept.append)
  client.judge([req("429-x")])
  assert all(d >= 0.01 for d in slept)  # Retry-After: 0.01


def test_no_key_warns_once(server, monkeypatch, caplog):
  monkeypatch.delenv(KEY_ENV)
  client = make_client(server)
  with caplog.at_level(logging.WARNING, logger="stepjax.rl.judge"):
    client.judge([req("ok", rid="a"), req("ok", rid="b")])
  assert server.auth == [None, None]
  assert sum(KEY_ENV in m for m in caplog.messages) == 1


def test_judge_source_wraps_client(server):
  src = process.JudgeSource(make_client(server))
  assert src.label_steps([req("ok")])[0].labels == GOOD


def _zero_totals(**counts):
  out = dict.fromkeys(process.JUDGE_TOTALS, 0)
  out.update(counts)
  return out


def test_totals_count_calls_retries_cache_and_each_fallback_cause(server):
  client = make_client(server)
  modes = [
    "ok", "flaky", "timeout", "429", "500", "garbage", "401", "drop",
  ]  # fmt: skip
  client.judge([req(m) for m in modes] + [req("none", k=0)])
  client.judge([req("ok")])  # labelled above: from the cache
  # 3 attempts for each retried failure, 1 for 401, 3 for flaky (2 x 500).
  assert client.take_totals() == _zero_totals(
    requests=10,
    calls=1 + 3 + 3 * 5 + 1,
    cache_hits=1,
    retries=2 + 2 * 5,
    fallbacks=6,
    fallbacks_timeout=1,
    fallbacks_rate_limited=1,
    fallbacks_server_error=1,
    fallbacks_invalid_reply=1,
    fallbacks_http_error=1,
    fallbacks_connection=1,
  )
  assert server.replies["drop"] == 3
  # Totals are per window: nothing new since the last call.
  assert client.take_totals() == _zero_totals()
  client.judge([req("ok"), req("500-again")])
  assert client.take_totals() == _zero_totals(
    requests=2, calls=3, cache_hits=1, retries=2, fallbacks=1,
    fallbacks_server_error=1,
  )  # fmt: skip
  # The cumulative stats keep counting.
  assert client.stats["fallbacks"] == 7 and client.stats["cache_hits"] == 2


def test_fallbacks_warn_once_per_cause_per_window(server, caplog):
  client = make_client(server, max_retries=0)
  with caplog.at_level(logging.WARNING, logger="stepjax.rl.judge"):
    client.judge([req(f"500-{i}") for i in range(4)] + [req("garbage")])
    failed = [m for m in caplog.messages if "judge failed" in m]
    assert len(failed) == 2  # one server_error, one invalid_reply
    caplog.clear()
    client.take_totals()
    (total,) = caplog.messages
    assert "5 of 5 completions" in total
    assert "server_error=4" in total and "invalid_reply=1" in total
    caplog.clear()
    client.judge([req("500-4")])  # a new window warns again
    assert sum("judge failed" in m for m in caplog.messages) == 1


def test_key_redacted_everywhere(server, tmp_path, caplog):
  """No log record of any logger (httpx and httpcore at DEBUG included),
  error, repr or cache file holds the key, whatever the server echoes."""
  cache = tmp_path / "cache.jsonl"
  client = make_client(server, cache_path=str(cache), max_retries=1)
  caplog.set_level(logging.DEBUG)
  for name in ("httpx", "httpcore", "stepjax.rl.judge"):
    caplog.set_level(logging.DEBUG, logger=name)
  modes = ["ok", "401", "500", "429", "garbage", "drop", "timeout"]
  client.judge([req(m) for m in modes])
  client.take_totals()
  assert set(server.auth) == {"Bearer " + SECRET}
  assert "***" in caplog.text and SECRET not in caplog.text
  assert any(r.name.startswith("httpcore") for r in caplog.records)
  assert SECRET not in cache.read_text()
  assert SECRET not in repr(client) and SECRET not in str(vars(client))
  assert SECRET not in str(vars(client._http))


def test_retry_after_header_forms():
  assert judge.retry_after_s("2.5") == 2.5
  assert judge.retry_after_s(None) is None
  assert judge.retry_after_s("soon") is None
  assert judge.retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
  later = email.utils.formatdate(time.time() + 30, usegmt=True)
  assert 25 < judge.retry_after_s(later) <= 30


def test_connection_refused_is_a_connection_fallback(server):
  """Nothing listens on the port: a connection error, retried."""
  client = make_client(server)
  client.url = "http://127.0.0.1:9/v1/chat/completions"  # discard port
  out = client.judge([req("ok")])
  assert out[0].fallback_used
  totals = client.take_totals()
  assert totals["fallbacks_connection"] == 1 and totals["retries"] == 2


class _AllValid:
  def label_steps(self, requests):
    return [
      process.StepLabels((1,) * len(r.step_texts), source="verifier")
      for r in requests
    ]


def test_judge_totals_walk_the_source_chain(server):
  client = make_client(server)
  src = process.NoisySource(process.JudgeSource(client), 0.1)
  src.label_steps([req("ok"), req("500")])
  m = process.judge_totals(src)
  assert m["judge_requests"] == 2 and m["judge_fallbacks_server_error"] == 1
  assert set(m) == {f"judge_{k}" for k in process.JUDGE_TOTALS}
  assert process.judge_totals(src)["judge_calls"] == 0
  # A simulated judge: one call per completion with steps.
  counting = process.CountingSource(_AllValid())
  hybrid = process.HybridSource(counting, process.ValueHeadSource(), 1.0)
  hybrid.label_steps([req("a"), req("b", k=0)])
  m = process.judge_totals(hybrid)
  assert m["judge_requests"] == 2 and m["judge_calls"] == 1
  assert m["judge_fallbacks"] == m["judge_retries"] == 0
  assert process.judge_totals(process.ValueHeadSource()) == {}


def _trainer_utils():
  path = pathlib.Path(__file__).parents[1] / "train" / "trainer_utils.py"
  spec = importlib.util.spec_from_file_location("trainer_utils", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_run_writes_judge_totals_per_step(server, tmp_path, capsys):
  """Two RL steps judged over HTTP: each step's metrics.jsonl record and
  progress line hold its totals, and they add up to what the server saw."""
  from stepjax import jobs
  from stepjax.train import metrics

  server.force = "mixed"
  config = _trainer_utils().test_config(
    **{
      "mesh.data": 1,
      "data.num_eval": 4,
      "sft.steps": 0,
      "train.steps": 2,
      "train.eval_before_rl": False,
      "rl.process_source": "judge",
      "judge.base_url": server.url,
      "judge.model": "judge-model",
      "judge.api_key_env": KEY_ENV,
      "judge.max_retries": 0,
    }
  )
  jobs.train(config, str(tmp_path))
  records = metrics.read_metrics(str(tmp_path))
  assert [r["phase"] for r in records] == ["rl", "rl"]
  for r in records:
    for k in process.JUDGE_TOTALS:
      assert f"judge_{k}" in r, k
    assert r["judge_requests"] == 4  # 2 prompts x 2 samples
    assert r["judge_retries"] == 0
  calls = sum(r["judge_calls"] for r in records)
  assert calls == sum(server.replies.values()) > 0
  assert (
    sum(r["judge_fallbacks_server_error"] for r in records)
    == (server.replies["500"])
  )
  assert (
    sum(r["judge_fallbacks_invalid_reply"] for r in records)
    == (server.replies["garbage"])
  )
  assert sum(r["judge_fallbacks"] for r in records) == (
    server.replies["500"] + server.replies["garbage"]
  )
  assert server.replies["500"] >= 1
  out = capsys.readouterr().out
  assert out.count(" judge calls=") == 2
  # Training's requests carry the record's image (SynthMed: PNG bytes).
  images = [
    part["image_url"]["url"]
    for body in server.bodies
    for part in body["messages"][1]["content"]
    if part["type"] == "image_url"
  ]
  assert len(images) == len(server.bodies) > 0
  assert all(u.startswith("data:image/png;base64,") for u in images)
