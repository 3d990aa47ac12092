"""CheXprompt against any OpenAI-compatible chat endpoint: rate-limited, retried with backoff, cached on disk.

Plain HTTP (urllib), no SDK. OpenAI-style servers get ``POST {base_url}/chat/completions`` with a Bearer key;
Azure OpenAI (when a deployment is named) gets ``POST {base_url}/openai/deployments/{deployment}/chat/completions
?api-version=...`` with an ``api-key`` header. Each usable answer is appended to a JSONL cache keyed by the model,
the prompt and the (reference, candidate) pair, so a rerun after a failure only asks for what is missing.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from llavarad_cli.errors import UserError
from llavarad_cli.io_utils import JSONProblem, loads
from llavarad_cli.evaluate.chexprompt_prompt import Prompt, parse_rating

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
#: An answer is a few hundred bytes; a body beyond this is not a chat completion, and reading it whole could
#: exhaust memory on a hostile or broken endpoint.
MAX_ANSWER_BYTES = 4 * 1024 * 1024


class Clock:
    """The time source of the rate limiter and the backoff waits; tests swap in a fake one (``CLOCK``) so that
    waits are counted instead of slept."""

    monotonic = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)


CLOCK = Clock()


class GarbledAnswer(ValueError):
    """The server answered, but not with a chat completion we can use (asking again may help)."""


def answer_text(raw: bytes) -> str:
    """The ``content`` of the first choice of a chat-completion body; GarbledAnswer for anything else."""
    if len(raw) > MAX_ANSWER_BYTES:
        raise GarbledAnswer(f"answer over {MAX_ANSWER_BYTES} bytes")
    try:
        payload = json.loads(raw.decode("utf-8"))
        content = payload["choices"][0]["message"]["content"]
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, KeyError, IndexError, TypeError) as exc:
        raise GarbledAnswer(type(exc).__name__) from None
    if content is None:  # a refusal or an empty message: an answer with no text
        return ""
    if not isinstance(content, str):
        raise GarbledAnswer(f"content is a {type(content).__name__}, not text")
    return content


@dataclass
class ChexpromptConfig:
    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4-1106-preview"           # GPT-4 Turbo, as in the paper's Fig. 4c
    api_key_env: str = "OPENAI_API_KEY"
    azure_deployment: str | None = None
    api_version: str = "2024-02-01"
    requests_per_minute: float = 30.0           # CheXprompt's own default
    workers: int = 4
    max_retries: int = 5
    backoff_s: float = 2.0
    max_backoff_s: float = 60.0
    timeout_s: float = 120.0
    temperature: float = 0.0
    max_tokens: int = 128
    top_p: float = 0.9
    cache_dir: Path = Path.home() / ".cache" / "llavarad" / "chexprompt"


class RateLimiter:
    """Spaces request starts at least 60/rpm seconds apart, across threads."""

    def __init__(self, per_minute: float):
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self.next_at = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            now = CLOCK.monotonic()
            start = max(now, self.next_at)
            self.next_at = start + self.interval
        if start > now:
            CLOCK.sleep(start - now)


class RatingCache:
    """Append-only JSONL of {"key", "rating", "completion"}; a torn last line from a kill is ignored."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / "chexprompt-cache.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.entries: dict[str, dict] = {}
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = loads(line, line=False)
                        self.entries[rec["key"]] = rec
                    except (JSONProblem, KeyError, TypeError):
                        continue
            with open(self.path, "rb+") as fh:
                # end a line torn by a kill, or the next rating appended would join it and be lost as well
                size = fh.seek(0, os.SEEK_END)
                if size:
                    fh.seek(size - 1)
                    if fh.read(1) != b"\n":
                        fh.write(b"\n")

    @staticmethod
    def key(model: str, prompt: Prompt, reference: str, candidate: str) -> str:
        return hashlib.sha256(json.dumps([model, prompt.fingerprint(), reference, candidate]).encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, key: str, rating: dict, completion: str) -> None:
        rec = {"key": key, "rating": rating, "completion": completion}
        with self.lock:
            self.entries[key] = rec
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                fh.flush()


class ChatClient:
    def __init__(self, cfg: ChexpromptConfig):
        self.cfg = cfg
        self.key = os.environ.get(cfg.api_key_env, "")
        hosted = cfg.azure_deployment or "api.openai.com" in cfg.base_url
        if hosted and not self.key:
            # a hosted endpoint always wants a key: say so now rather than after the first refused request
            raise UserError(f"CheXprompt needs an API key for {cfg.base_url}, and ${cfg.api_key_env} is not set",
                            hint="export the key in that variable, or name another one with --chexprompt-api-key-env")
        self.limiter = RateLimiter(cfg.requests_per_minute)
        base = cfg.base_url.rstrip("/")
        if cfg.azure_deployment:
            self.url = f"{base}/openai/deployments/{cfg.azure_deployment}/chat/completions?api-version={cfg.api_version}"
            self.headers = {"api-key": self.key}
        else:
            self.url = f"{base}/chat/completions"
            self.headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        self.headers["Content-Type"] = "application/json"

    def complete(self, messages: list[dict]) -> str | None:
        """The answer text; None when the server refuses this request (e.g. a content filter).
        Raises UserError for a wrong key or URL, since no rerun would fix those."""
        body = {"messages": messages, "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens,
                "top_p": self.cfg.top_p}
        if not self.cfg.azure_deployment:
            body["model"] = self.cfg.model
        data = json.dumps(body).encode()
        unreachable = None  # what went wrong when this try failed below HTTP (no server, or a broken response)
        for attempt in range(self.cfg.max_retries + 1):
            self.limiter.wait()
            delay = min(self.cfg.max_backoff_s, self.cfg.backoff_s * (2 ** attempt))
            try:
                req = urllib.request.Request(self.url, data=data, headers=self.headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                    raw = resp.read(MAX_ANSWER_BYTES + 1)
                    if resp.length and len(raw) <= MAX_ANSWER_BYTES:
                        # read(n) returns what came before the connection closed, short of Content-Length
                        raise http.client.IncompleteRead(raw, resp.length)
                return answer_text(raw)
            except urllib.error.HTTPError as exc:
                unreachable = None
                if exc.code in (401, 403, 404):
                    raise UserError(f"CheXprompt endpoint {self.url} answered HTTP {exc.code}",
                                    hint=f"check --chexprompt-base-url, the model/deployment name and the key in ${self.cfg.api_key_env}") from None
                if exc.code not in RETRY_STATUS:
                    return None  # 400 and friends: this prompt will not succeed by asking again
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after:
                    try:
                        delay = min(self.cfg.max_backoff_s, max(delay, float(retry_after)))
                    except ValueError:
                        pass
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                # transient network trouble: back off and retry
                unreachable = f"cannot be reached ({getattr(exc, 'reason', None) or exc})"
            except http.client.HTTPException as exc:
                # a bad status line, a body cut short, a header line too long: the endpoint does not speak HTTP
                # properly, which asking a thousand more pairs would not change
                unreachable = f"sent a broken HTTP response ({type(exc).__name__}: {str(exc)[:120]})"
            except GarbledAnswer:
                unreachable = None  # a garbled answer: back off and retry; in the end an unusable rating
            if attempt < self.cfg.max_retries:
                CLOCK.sleep(delay)
        if unreachable is not None:
            # every try of this request failed below HTTP: asking the next thousand pairs the same way would only
            # retry for hours; stop, and a rerun resumes from the cache
            raise UserError(f"CheXprompt endpoint {self.url} {unreachable} after {self.cfg.max_retries + 1} tries",
                            hint="check --chexprompt-base-url and the network; ratings already received are cached, "
                                 "so rerunning asks only for the rest")
        return None


def rate_pairs(references: Sequence[str], candidates: Sequence[str], cfg: ChexpromptConfig,
               prompt: Prompt | None = None, progress=None) -> tuple[list[dict | None], dict]:
    """One rating (or None) per pair, using the cache first. Returns (ratings, stats)."""
    prompt = prompt or Prompt()
    cache = RatingCache(cfg.cache_dir)
    cache_model = f"azure:{cfg.azure_deployment}" if cfg.azure_deployment else cfg.model
    keys = [RatingCache.key(cache_model, prompt, r, c) for r, c in zip(references, candidates)]
    ratings: list[dict | None] = [None] * len(keys)
    todo: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        hit = cache.get(key)
        if hit is not None:
            ratings[i] = hit["rating"]
        else:
            todo.setdefault(key, []).append(i)
    stats = {"cached": len(keys) - sum(len(v) for v in todo.values()), "requested": 0, "failed": 0}

    stop = threading.Event()  # set by the first request that ends the run, so queued ones are not sent

    def ask(key: str) -> tuple[str, dict | None]:
        if stop.is_set():
            return key, None  # never reported: the error that set it is raised first
        i = todo[key][0]
        rating = None
        try:
            for _ in range(2):  # one more try when the answer does not parse
                completion = client.complete(prompt.messages(references[i], candidates[i]))
                rating = parse_rating(completion)
                if rating is not None:
                    cache.put(key, rating, completion)
                    break
        except BaseException:
            stop.set()
            raise
        return key, rating

    if todo:
        client = ChatClient(cfg)  # only now: a fully cached rerun needs no key and no network
        pool = ThreadPoolExecutor(max_workers=max(1, cfg.workers))
        try:
            for key, rating in pool.map(ask, list(todo)):
                stats["requested"] += 1
                if rating is None:
                    stats["failed"] += 1
                for i in todo[key]:
                    ratings[i] = rating
                if progress is not None:
                    progress(len(todo[key]))
        except BaseException:
            # a wrong key or Ctrl-C: drop the queued requests instead of sending each one; the cache keeps the rest
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
    return ratings, stats


def error_counts(rating: dict | None) -> tuple[float, float]:
    """(clinically significant errors, all errors) of one rating; NaN for an unusable rating."""
    if rating is None:
        return float("nan"), float("nan")
    sig = sum(rating["clinically_significant"].values())
    return float(sig), float(sig + sum(rating["clinically_insignificant"].values()))
