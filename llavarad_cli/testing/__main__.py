"""``python -m llavarad_cli.testing``: write tiny offline models for smoke tests."""

from __future__ import annotations

from pathlib import Path

from llavarad_cli.testing.tiny import SEED, write_tiny_checkpoint, write_tiny_lm, write_tiny_vision_tower


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m llavarad_cli.testing",
                                     description="Write tiny offline models for smoke tests.")
    sub = parser.add_subparsers(dest="command", required=True)
    lm = sub.add_parser("tiny-lm", help="a tiny LLaMA LM + tokenizer folder")
    lm.add_argument("out", type=Path)
    vt = sub.add_parser("tiny-vision-tower", help="a tiny BiomedCLIP-shaped open_clip JSON + checkpoint")
    vt.add_argument("out", type=Path)
    ck = sub.add_parser("tiny-checkpoint", help="a tiny random LLaVA-Rad in the released or native layout "
                        "(base LM in OUT/base)")
    ck.add_argument("out", type=Path)
    ck.add_argument("--layout", choices=["released", "native"], default="native")
    ck.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    if args.command == "tiny-lm":
        print(write_tiny_lm(args.out))
    elif args.command == "tiny-vision-tower":
        for path in write_tiny_vision_tower(args.out):
            print(path)
    elif args.command == "tiny-checkpoint":
        write_tiny_checkpoint(args.out, args.layout, args.seed)
        base = f" --model-base {args.out / 'base'}" if args.layout == "released" else ""
        print(f"{args.out}  (use: llavarad infer --model {args.out}{base} --device cpu ...)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
