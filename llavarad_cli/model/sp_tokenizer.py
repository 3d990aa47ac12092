"""The slow LLaMA tokenizer's behaviour, driven by the ``sentencepiece`` library itself.

Why not the tokenizer transformers builds: for a base that ships only ``tokenizer.model`` (Vicuna-7B v1.5, the
LLaVA-Rad base) transformers 5 converts the SentencePiece model into a Hugging Face BPE tokenizer. That BPE runs
over the whole text and merges ``▁▁`` first, whereas SentencePiece splits on whitespace before merging and so never
forms a piece across a space boundary: ``"clear.  Heart"`` is ``▁``, ``▁Heart`` in SentencePiece but ``▁▁``,
``He``, ``art`` after conversion. Every text with a run of two or more spaces (a blank line or "space + newline" in
an indication, since newlines become spaces) then gets other ids than the ones LLaVA-Rad was trained and evaluated
with. Configuring the converted tokenizer to agree would need a proof for every input; calling SentencePiece is
the reference by construction, so this wrapper does that and only re-implements the thin layer the reference's
transformers 4.31 ``LlamaTokenizer`` (``use_fast=False``) put around it:

- special tokens (``<s>``, ``</s>``, ``<unk>`` and any added tokens) written literally in the text are matched
  as their ids, without stripping the text around them;
- ``legacy: false`` (Vicuna's setting): the text is encoded with one dummy-prefix space at its start, and text
  that follows a special token gets none (its first piece loses the leading ``▁`` unless the text starts with a
  space, even when the shortened piece is not in the vocabulary: exactly what 4.31 did);
- BOS in front (``add_bos_token``), no EOS (``add_eos_token``);
- decoding: special tokens skipped on request, everything else through ``SentencePieceProcessor.decode``
  (byte-fallback pieces become their bytes again), with 4.31's "clean up tokenization spaces" when the folder
  asks for it (LLaMA's default: off).

Only what llavarad calls is offered: ``tok(text).input_ids``, ``decode``, ``batch_decode``, the special tokens
and their ids, ``convert_ids_to_tokens`` / ``convert_tokens_to_ids``, ``save_pretrained``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Sequence

SPIECE_UNDERLINE = "▁"
MODEL_FILE = "tokenizer.model"
CONFIG_FILE = "tokenizer_config.json"
#: tokenizer_config classes whose slow tokenizer is the SentencePiece LLaMA one (the fast name points at it too).
LLAMA_CLASSES = {"LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer", "CodeLlamaTokenizerFast"}


class Encoding:
    """What ``tokenizer(text)`` returns; llavarad only reads ``input_ids``."""

    def __init__(self, input_ids):
        self.input_ids = input_ids

    def __getitem__(self, key: str):
        if key != "input_ids":
            raise KeyError(key)
        return self.input_ids


def is_sentencepiece_folder(folder: Path) -> bool:
    """A tokenizer folder the reference read with the slow SentencePiece LLaMA tokenizer.

    ``tokenizer.model`` plus a LLaMA tokenizer class (or no ``tokenizer_config.json`` class at all): the reference
    loaded every such base with ``use_fast=False``, whatever ``tokenizer.json`` sits next to it.
    """
    folder = Path(folder)
    if not (folder / MODEL_FILE).is_file():
        return False
    config = _read_config(folder)
    return config.get("tokenizer_class") in LLAMA_CLASSES | {None}


def _read_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return {}
    from llavarad_cli.io_utils import read_json_object

    return read_json_object(path, "tokenizer config")


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict with ``content``."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class SentencePieceTokenizer:
    def __init__(self, model_file: str | Path, *, bos_token: str | None = "<s>", eos_token: str | None = "</s>",
                 unk_token: str | None = "<unk>", pad_token: str | None = None, add_bos_token: bool = True,
                 add_eos_token: bool = False, legacy: bool = True, clean_up_tokenization_spaces: bool = False,
                 added_tokens: dict[str, tuple[int, bool]] | None = None, model_max_length: int | None = None,
                 padding_side: str = "right", name_or_path: str = ""):
        import sentencepiece

        self.model_file = str(model_file)
        self.sp = sentencepiece.SentencePieceProcessor(model_file=self.model_file)
        self.add_bos_token, self.add_eos_token = add_bos_token, add_eos_token
        self.legacy = legacy
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.model_max_length = model_max_length
        self.padding_side = padding_side
        self.name_or_path = name_or_path
        #: content -> (id, special); tokens beyond the SentencePiece vocabulary come from the folder's config.
        self._added = dict(added_tokens or {})
        self.bos_token, self.eos_token, self.unk_token = bos_token, eos_token, unk_token
        self.pad_token = pad_token
        self._split_pattern: re.Pattern | None = None

    # -- loading and saving -------------------------------------------------------------------------------------

    @classmethod
    def from_folder(cls, folder: str | Path) -> "SentencePieceTokenizer":
        folder = Path(folder)
        config = _read_config(folder)
        added: dict[str, tuple[int, bool]] = {}
        for key, entry in (config.get("added_tokens_decoder") or {}).items():
            if isinstance(entry, dict) and entry.get("content"):
                added[entry["content"]] = (int(key), bool(entry.get("special", True)))
        kwargs: dict[str, Any] = {}
        for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
            if name in config:
                kwargs[name] = _token_text(config[name])
        for name in ("add_bos_token", "add_eos_token", "clean_up_tokenization_spaces", "padding_side"):
            if config.get(name) is not None:
                kwargs[name] = config[name]
        # transformers 4.31 read an absent `legacy` as True (with a warning); Vicuna v1.5 says false.
        kwargs["legacy"] = config.get("legacy") is not False
        max_length = config.get("model_max_length")
        if isinstance(max_length, int) and max_length < 10**9:
            kwargs["model_max_length"] = max_length
        return cls(folder / MODEL_FILE, added_tokens=added, name_or_path=str(folder), **kwargs)

    def save_pretrained(self, out_dir: str | Path) -> tuple[str, ...]:
        """``tokenizer.model`` (unchanged bytes) and a ``tokenizer_config.json`` that loads back into this wrapper
        (and into transformers' own LlamaTokenizer)."""
        from llavarad_cli.io_utils import atomic_write_bytes, atomic_write_json

        out = Path(out_dir)
        atomic_write_bytes(out / MODEL_FILE, Path(self.model_file).read_bytes())
        config = {
            "tokenizer_class": "LlamaTokenizer", "bos_token": self.bos_token, "eos_token": self.eos_token,
            "unk_token": self.unk_token, "pad_token": self.pad_token, "add_bos_token": self.add_bos_token,
            "add_eos_token": self.add_eos_token, "legacy": self.legacy,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces, "padding_side": self.padding_side,
            "added_tokens_decoder": {str(i): {"content": c, "special": s} for c, (i, s) in self._added.items()},
        }
        if self.model_max_length is not None:
            config["model_max_length"] = self.model_max_length
        atomic_write_json(out / CONFIG_FILE, config)
        return str(out / MODEL_FILE), str(out / CONFIG_FILE)

    # -- vocabulary -----------------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def __len__(self) -> int:
        return max([self.vocab_size - 1, *(i for i, _ in self._added.values())]) + 1

    def _piece_id(self, piece: str) -> int:
        if piece in self._added:
            return self._added[piece][0]
        return self.sp.piece_to_id(piece)  # unknown pieces give the unk id, as SentencePiece does

    def _id_piece(self, index: int) -> str:
        for content, (i, _) in self._added.items():
            if i == index:
                return content
        if not 0 <= index < self.vocab_size:
            raise IndexError(f"token id {index} is outside the vocabulary (0..{len(self) - 1})")
        return self.sp.id_to_piece(index)

    def convert_tokens_to_ids(self, tokens: str | Iterable[str]):
        if isinstance(tokens, str):
            return self._piece_id(tokens)
        return [self._piece_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Iterable[int], skip_special_tokens: bool = False):
        if isinstance(ids, int):
            return self._id_piece(ids)
        special = set(self.all_special_ids)
        return [self._id_piece(int(i)) for i in ids if not (skip_special_tokens and int(i) in special)]

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self._piece_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id_of(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id_of(self.eos_token)

    @property
    def unk_token_id(self) -> int | None:
        return self._id_of(self.unk_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id_of(self.pad_token)

    @property
    def all_special_tokens(self) -> list[str]:
        named = [t for t in (self.bos_token, self.eos_token, self.unk_token, self.pad_token) if t is not None]
        extra = [c for c, (_, special) in self._added.items() if special]
        return list(dict.fromkeys(named + extra))

    @property
    def all_special_ids(self) -> list[int]:
        return [self._piece_id(t) for t in self.all_special_tokens]

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in {"bos_token", "eos_token", "unk_token", "pad_token"}:
            super().__setattr__("_split_pattern", None)  # the literal-token split depends on these

    # -- encoding -------------------------------------------------------------------------------------------------

    def _literal_tokens(self) -> list[str]:
        # 4.31 never split inside any special or added token written in the text.
        return sorted(set(self.all_special_tokens) | set(self._added), key=len, reverse=True)

    def _split(self, text: str) -> list[str]:
        if self._split_pattern is None:
            self._split_pattern = re.compile("(" + "|".join(map(re.escape, self._literal_tokens())) + ")")
        return [part for part in self._split_pattern.split(text) if part]

    def _encode_text(self, text: str) -> list[int]:
        """Ids of ``text`` without BOS/EOS, as the reference's slow tokenizer produced them."""
        if not self.legacy:
            # One dummy prefix for the whole text; a literal ▁ counts as a space (SentencePiece sees both as ▁).
            text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        literal = set(self._literal_tokens())
        ids: list[int] = []
        for position, part in enumerate(self._split(text)):
            if part in literal:
                ids.append(self._piece_id(part))
                continue
            if self.legacy:
                ids.extend(self.sp.encode(part))
                continue
            first = position == 0 and part.startswith(SPIECE_UNDERLINE)
            if first:
                part = part[1:]  # SentencePiece adds its own dummy prefix back
            pieces = self.sp.encode(part, out_type=str)
            if not first and not part.startswith(" ") and pieces and pieces[0].startswith(SPIECE_UNDERLINE):
                # No invented space after a special token (legacy=False).
                pieces = ([pieces[0][1:]] if len(pieces[0]) > 1 else []) + pieces[1:]
            ids.extend(self._piece_id(p) for p in pieces)
        return ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self._encode_text(text)
        if add_special_tokens:
            if self.add_bos_token and self.bos_token_id is not None:
                ids = [self.bos_token_id] + ids
            if self.add_eos_token and self.eos_token_id is not None:
                ids = ids + [self.eos_token_id]
        return ids

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True, **kwargs) -> Encoding:
        if kwargs:
            raise TypeError(f"SentencePieceTokenizer does not take {sorted(kwargs)} (only text, add_special_tokens)")
        if isinstance(text, str):
            return Encoding(self.encode(text, add_special_tokens))
        return Encoding([self.encode(t, add_special_tokens) for t in text])

    def tokenize(self, text: str) -> list[str]:
        return self.convert_ids_to_tokens(self._encode_text(text))

    # -- decoding -------------------------------------------------------------------------------------------------

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """4.31's LlamaTokenizer: runs of ordinary pieces through SentencePiece, special tokens as written, with a
        space in front of a special token that follows text."""
        special = set(self.all_special_tokens)
        out, run, prev_special = "", [], False
        for i, token in enumerate(tokens):
            if token in special:
                if not prev_special and i:
                    out += " "
                out += self.sp.decode_pieces(run) + token
                run, prev_special = [], True
            else:
                run.append(token)
                prev_special = False
        return out + self.sp.decode_pieces(run)

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool | None = None) -> str:
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        tokens = self.convert_ids_to_tokens([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        # Non-special added tokens are their own sub-texts, as in 4.31's _decode.
        parts, run = [], []
        for token in tokens:
            if token in self._added and not self._added[token][1]:
                if run:
                    parts.append(self.convert_tokens_to_string(run))
                parts.append(token)
                run = []
            else:
                run.append(token)
        if run:
            parts.append(self.convert_tokens_to_string(run))
        text = "".join(parts)
        clean = self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        return _clean_up_tokenization(text) if clean else text

    def batch_decode(self, sequences, skip_special_tokens: bool = False, **kwargs) -> list[str]:
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(s, skip_special_tokens=skip_special_tokens, **kwargs) for s in sequences]

    def __repr__(self) -> str:
        return (f"SentencePieceTokenizer({self.name_or_path or self.model_file!r}, vocab={len(self)}, "
                f"bos={self.bos_token!r}, eos={self.eos_token!r}, pad={self.pad_token!r}, legacy={self.legacy})")


def _clean_up_tokenization(text: str) -> str:
    """transformers 4.31's ``clean_up_tokenization`` (only used when a tokenizer folder turns it on)."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text
