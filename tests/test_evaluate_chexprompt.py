"""CheXprompt: parsing, and the client against a small local OpenAI-compatible server started by the test."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llavarad_cli.errors import UserError
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
    assert len(server.requests) - before <= 2  # the queued requests were dropped, not each sent
    server.default = (200, GOOD, {})
    _, stats = rate_pairs(["a", "r0"], ["b", "c0"], _cfg(server, tmp_path))
    assert stats["cached"] == 1 and stats["requested"] == 1


def test_rate_limit_spaces_requests(server, tmp_path):
    import time

    start = time.monotonic()
    rate_pairs(["a", "b", "c"], ["x", "y", "z"], _cfg(server, tmp_path, requests_per_minute=600, workers=3))
    assert time.monotonic() - start >= 0.2  # 3 starts, 0.1 s apart


def test_unreachable_endpoint_stops_with_one_line_instead_of_retrying_every_pair(tmp_path):
    import socket
    import time

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here now: connection refused
    cfg = ChexpromptConfig(base_url=f"http://127.0.0.1:{port}/v1", model="judge", requests_per_minute=0, workers=1,
                           max_retries=2, backoff_s=0.01, max_backoff_s=0.02, timeout_s=5, cache_dir=tmp_path / "c")
    start = time.monotonic()
    with pytest.raises(UserError, match="cannot be reached") as err:
        rate_pairs([f"r{i}" for i in range(50)], [f"c{i}" for i in range(50)], cfg)
    assert "3 tries" in err.value.message and "rerunning asks only for the rest" in err.value.hint
    assert time.monotonic() - start < 5  # the first pair's tries, not fifty pairs' worth


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
