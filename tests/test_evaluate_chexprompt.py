"""CheXprompt: parsing, and the client against a small local OpenAI-compatible server started by the test."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llavarad_cli.errors import UserError
from llavarad_cli.evaluate import chexprompt
from llavarad_cli.evaluate.chexprompt import ChexpromptConfig, error_counts, rate_pairs
from llavarad_cli.evaluate.chexprompt_prompt import ERROR_TYPES, Prompt, parse_rating

GOOD = ("Number of clinically significant errors by type: [(A, 1), (B, 0), (C, 0), (D, 0), (E, 0), (F, 0)]\n"
        "Number of clinically insignificant errors by type: [(A, 0), (B, 2), (C, 0), (D, 0), (E, 0), (F, 1)]")


def test_parse_list_and_tuple_forms_and_drop_explanations():
    rating = parse_rating(GOOD + "\nExplanation: the candidate adds cardiomegaly.")
    assert rating["clinically_significant"] == {**dict.fromkeys(ERROR_TYPES.values(), 0), "false_positive_finding": 1}
    assert rating["clinically_insignificant"]["omission_finding"] == 2
    assert error_counts(rating) == (1.0, 4.0)
    tuple_form = GOOD.replace("[", "(").replace("]", ")")
    assert parse_rating(tuple_form) == parse_rating(GOOD)


@pytest.mark.parametrize("bad", ["", None, "I cannot rate this.", GOOD.split("\n")[0],
                                 GOOD.replace("(A, 1)", "(A, one)"), GOOD.replace(", (F, 1)", "")])
def test_unusable_answers_parse_to_none(bad):
    assert parse_rating(bad) is None
    assert error_counts(None)[0] != error_counts(None)[0]  # NaN


def test_prompt_fills_texts_verbatim_even_with_braces(tmp_path):
    msgs = Prompt().messages("ref {x}", "cand")
    assert msgs[0]["role"] == "system" and 'Reference Findings: """ref {x}"""' in msgs[1]["content"]
    (tmp_path / "p.json").write_text(json.dumps({"system": "S", "user": "R={reference} C={candidate}"}))
    assert Prompt.from_file(tmp_path / "p.json").messages("a", "b")[1]["content"] == "R=a C=b"
    (tmp_path / "bad.json").write_text(json.dumps({"user": "no placeholders"}))
    with pytest.raises(UserError):
        Prompt.from_file(tmp_path / "bad.json")


class FakeServer:
    """Answers chat completions from a script: each entry is (status, body or None, headers)."""

    def __init__(self):
        self.requests, self.script, self.default = [], [], (200, GOOD, {})
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})
                status, text, headers = outer.script.pop(0) if outer.script else outer.default
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def _cfg(server, tmp_path, **kw):
    base = dict(base_url=server.url + "/v1", model="judge", api_key_env="LLAVARAD_TEST_KEY", requests_per_minute=0,
                workers=2, max_retries=3, backoff_s=0.01, max_backoff_s=0.05, timeout_s=10, cache_dir=tmp_path / "cache")
    base.update(kw)
    return ChexpromptConfig(**base)


def test_openai_style_requests_cache_and_resume(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVARAD_TEST_KEY", "sk-test")
    refs, cands = ["Normal heart.", "Small effusion.", "Normal heart."], ["Cardiomegaly.", "Small effusion.", "Cardiomegaly."]
    ratings, stats = rate_pairs(refs, cands, _cfg(server, tmp_path))
    assert stats == {"cached": 0, "requested": 2, "failed": 0}  # the repeated pair is asked once
    assert all(r is not None for r in ratings) and len(server.requests) == 2
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["headers"]["authorization"] == "Bearer sk-test"
    assert req["body"]["model"] == "judge" and req["body"]["temperature"] == 0.0
    # a rerun asks nothing; a new pair asks only for itself
    ratings2, stats2 = rate_pairs(refs + ["Clear lungs."], cands + ["Clear lungs."], _cfg(server, tmp_path))
    assert stats2 == {"cached": 3, "requested": 1, "failed": 0} and len(server.requests) == 3
    assert ratings2[:3] == ratings
    # another model is another cache key
    rate_pairs(refs[:1], cands[:1], _cfg(server, tmp_path, model="other"))
    assert len(server.requests) == 4


def test_retries_on_rate_limit_and_server_errors(server, tmp_path):
    server.script = [(429, None, {"Retry-After": "0"}), (503, None, {}), (200, GOOD, {})]
    ratings, stats = rate_pairs(["a"], ["b"], _cfg(server, tmp_path, workers=1))
    assert ratings[0] is not None and len(server.requests) == 3 and stats["failed"] == 0


def test_unusable_answers_are_counted_not_cached(server, tmp_path):
    server.default = (200, "no idea", {})
    ratings, stats = rate_pairs(["a"], ["b"], _cfg(server, tmp_path))
    assert ratings == [None] and stats["failed"] == 1
    assert len(server.requests) == 2  # asked once more when the answer did not parse
    server.default = (200, GOOD, {})
    ratings, stats = rate_pairs(["a"], ["b"], _cfg(server, tmp_path))
    assert ratings[0] is not None and stats["cached"] == 0


def test_azure_url_and_header(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVARAD_TEST_KEY", "az-key")
    rate_pairs(["a"], ["b"], _cfg(server, tmp_path, base_url=server.url, azure_deployment="gpt4t", api_version="2024-02-01"))
    req = server.requests[0]
    assert req["path"] == "/openai/deployments/gpt4t/chat/completions?api-version=2024-02-01"
    assert req["headers"]["api-key"] == "az-key" and "model" not in req["body"]


def test_wrong_key_is_a_user_error_and_keeps_earlier_ratings(server, tmp_path):
    rate_pairs(["a"], ["b"], _cfg(server, tmp_path))
    server.default = (401, None, {})
    before = len(server.requests)
    with pytest.raises(UserError, match="HTTP 401"):
        rate_pairs(["a"] + [f"r{i}" for i in range(20)], ["b"] + [f"c{i}" for i in range(20)],
                   _cfg(server, tmp_path, workers=1))
    assert len(server.requests) - before == 1  # the queued requests were dropped, not each sent
    server.default = (200, GOOD, {})
    _, stats = rate_pairs(["a", "r0"], ["b", "c0"], _cfg(server, tmp_path))
    assert stats["cached"] == 1 and stats["requested"] == 1


class FakeClock:
    """Virtual time that moves only when someone sleeps; every wait is recorded as the time it ends at."""

    def __init__(self):
        self.now, self.wakes, self.lock = 0.0, [], threading.Lock()

    def monotonic(self):
        with self.lock:
            return self.now

    def sleep(self, seconds):
        with self.lock:
            wake = self.now + seconds
            self.wakes.append(wake)
            self.now = max(self.now, wake)


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(chexprompt, "CLOCK", fake)
    return fake


def test_rate_limit_spaces_request_starts_across_threads(server, tmp_path, clock):
    rate_pairs(["a", "b", "c"], ["x", "y", "z"], _cfg(server, tmp_path, requests_per_minute=600, workers=3))
    assert len(server.requests) == 3
    # the first start is free, the next two wait for their 0.1 s slots, whichever thread gets which
    assert sorted(clock.wakes) == pytest.approx([0.1, 0.2])


def test_backoff_waits_grow_and_are_capped(server, tmp_path, clock):
    server.script = [(503, None, {}), (503, None, {}), (503, None, {}), (200, GOOD, {})]
    ratings, _ = rate_pairs(["a"], ["b"], _cfg(server, tmp_path, workers=1, backoff_s=0.01, max_backoff_s=0.03))
    assert ratings[0] is not None
    assert clock.wakes == pytest.approx([0.01, 0.03, 0.06])  # waits 0.01, 0.02, then 0.04 capped at 0.03


def test_unreachable_endpoint_stops_with_one_line_instead_of_retrying_every_pair(tmp_path, clock):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here now: connection refused
    cfg = ChexpromptConfig(base_url=f"http://127.0.0.1:{port}/v1", model="judge", requests_per_minute=0, workers=1,
                           max_retries=2, backoff_s=0.01, max_backoff_s=0.02, timeout_s=5, cache_dir=tmp_path / "c")
    with pytest.raises(UserError, match="cannot be reached") as err:
        rate_pairs([f"r{i}" for i in range(50)], [f"c{i}" for i in range(50)], cfg)
    assert "3 tries" in err.value.message and "rerunning asks only for the rest" in err.value.hint
    assert clock.wakes == pytest.approx([0.01, 0.03])  # the first pair's two backoffs, not fifty pairs' worth


def test_hosted_endpoint_without_key_fails_before_asking_but_a_cached_rerun_needs_none(server, tmp_path, monkeypatch):
    monkeypatch.delenv("LLAVARAD_TEST_KEY", raising=False)
    hosted = dict(base_url="https://api.openai.com/v1", model="judge")
    with pytest.raises(UserError, match=r"\$LLAVARAD_TEST_KEY is not set"):
        rate_pairs(["a"], ["b"], _cfg(server, tmp_path, **hosted))
    # the same pair, rated once through the local server under the same model name, is then served from the cache
    rate_pairs(["a"], ["b"], _cfg(server, tmp_path))
    ratings, stats = rate_pairs(["a"], ["b"], _cfg(server, tmp_path, **hosted))
    assert ratings[0] is not None and stats == {"cached": 1, "requested": 0, "failed": 0}


def test_a_line_torn_by_a_kill_does_not_swallow_the_next_cached_rating(tmp_path):
    from llavarad_cli.evaluate.chexprompt import RatingCache

    rating = parse_rating(GOOD)
    cache = RatingCache(tmp_path)
    cache.put("k1", rating, GOOD)
    with open(cache.path, "a", encoding="utf-8") as fh:
        fh.write('{"key": "k2", "rati')  # the process was killed mid-write
    RatingCache(tmp_path).put("k3", rating, GOOD)
    assert set(RatingCache(tmp_path).entries) == {"k1", "k3"}


class RawServer:
    """A TCP server on 127.0.0.1 that reads one request and answers with scripted raw bytes, then closes: for
    answers no HTTP library would send (bad status line, a body shorter than its Content-Length)."""

    def __init__(self, answer: bytes):
        import socket

        self.answer, self.count = answer, 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)  # accept polls, so that close() ends the thread at once
        self.closed = False
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        import socket

        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if b"\r\n\r\n" not in data:
                    continue
                head, body = data.split(b"\r\n\r\n", 1)
                length = int([h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0].split(b":")[1])
                while len(body) < length:
                    body += conn.recv(65536)
                self.count += 1
                conn.sendall(self.answer)

    def close(self):
        self.closed = True
        self.thread.join(timeout=10)
        self.sock.close()


def _http(body: bytes, status: bytes = b"HTTP/1.1 200 OK", length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return status + b"\r\nContent-Type: application/json\r\nContent-Length: " + str(n).encode() + b"\r\n\r\n" + body


def _completion(content) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()


@pytest.mark.parametrize("answer", [
    _http(b"\xff\xfe not utf-8 \x80"),                     # a body that is not UTF-8
    _http(_completion(GOOD).replace(b"Number", b"N\xe9mber")),  # Latin-1 inside otherwise good JSON
    _http(_completion(["a", "list"])),                      # content not a string
    _http(_completion({"text": GOOD})),
    _http(_completion(3)),
    _http(b'{"choices": "none"}'),
    _http(b"[" * 100_000 + b"]" * 100_000),                 # nested past the JSON parser's recursion limit
], ids=["not-utf8", "latin1", "list-content", "dict-content", "int-content", "choices-string", "deep-json"])
def test_garbled_answers_are_counted_unusable_ratings_after_retries(answer, tmp_path, clock):
    srv = RawServer(answer)
    try:
        cfg = ChexpromptConfig(base_url=srv.url, model="judge", requests_per_minute=0, workers=1, max_retries=1,
                               backoff_s=0.01, timeout_s=10, cache_dir=tmp_path / "c")
        ratings, stats = rate_pairs(["a", "b"], ["x", "y"], cfg)
    finally:
        srv.close()
    assert ratings == [None, None] and stats["failed"] == 2 and stats["requested"] == 2
    assert srv.count == 2 * 2 * 2  # per pair: two tries each (max_retries=1), once more as the answer did not parse


@pytest.mark.parametrize("answer, problem", [
    (b"HTTP/1.1 two hundred OK\r\n\r\n", "BadStatusLine"),
    (b"\x1b[2J garbage\r\n\r\n", "BadStatusLine"),
    # the connection closes before the body reaches its Content-Length: cut inside the JSON, or after it
    (_http(_completion(GOOD)[:60], length=len(_completion(GOOD))), "IncompleteRead"),
    (_http(_completion(GOOD), length=5000), "IncompleteRead"),
], ids=["bad-status", "escape-status", "truncated", "short-of-length"])
def test_a_broken_http_endpoint_stops_with_one_line(answer, problem, tmp_path, clock):
    srv = RawServer(answer)
    try:
        cfg = ChexpromptConfig(base_url=srv.url, model="judge", requests_per_minute=0, workers=1, max_retries=2,
                               backoff_s=0.01, timeout_s=10, cache_dir=tmp_path / "c")
        with pytest.raises(UserError, match="broken HTTP response") as err:
            rate_pairs([f"r{i}" for i in range(20)], [f"c{i}" for i in range(20)], cfg)
    finally:
        srv.close()
    assert problem in err.value.message and "3 tries" in err.value.message
    assert srv.count == 3  # the first pair's tries, not twenty pairs' worth
    assert "\x1b" not in err.value.one_line()  # what the server sent is shown escaped


def test_an_oversized_answer_is_not_read_whole(monkeypatch, tmp_path, clock):
    monkeypatch.setattr(chexprompt, "MAX_ANSWER_BYTES", 1000)
    srv = RawServer(_http(_completion(GOOD + " " * 2000)))
    try:
        cfg = ChexpromptConfig(base_url=srv.url, model="judge", requests_per_minute=0, workers=1, max_retries=0,
                               timeout_s=10, cache_dir=tmp_path / "c")
        ratings, stats = rate_pairs(["a"], ["x"], cfg)
    finally:
        srv.close()
    assert ratings == [None] and stats["failed"] == 1
