"""The Triton kernels' machine code without a GPU: for every kernel the public
API launches at one (K, C), its registers and stack, the instructions of its
main loop, the barriers in it and how soon the loop uses what each of its
loads brings.

    python benchmarks/kernel_sass.py --shape 64x8 --out DIR     # record, compile for sm_90, print the table
    python benchmarks/kernel_sass.py --compare DIR_A DIR_B      # the same machine code in two runs?
    python benchmarks/kernel_sass.py --package OLD --out DIR_B  # another tree's package (a kernels link inside it)

The launches are recorded under Triton's interpreter at a tiny length
(`every_query` of tests/test_kernels_compile.py: the machine code depends on
K, C, the dtypes and the constexprs, not on B or T), then compiled for
compute capability 9.0 by the Triton installed here (tests/kernel_compile.py)
and disassembled with the `cuobjdump` its wheel carries. Each kernel's SASS
lands in DIR as `<kernel>-<constexprs>-w<warps>.sass`.

Why: the sweeps are bound by one dependent chain a position, and what they
wait for is often a load (an L2 round trip) that the compiler placed just
before its use, or a barrier: with several warps a program, a reduction
across warps, or a value Triton moves to another layout (a store's
coalescing layout, say), goes through shared memory between `BAR.SYNC`s
that every warp waits at. Which code is faster is measured on the GPU; this
tells, before a device call, where the loads and barriers went and whether two versions
compile to the same machine code (`--compare`: instructions equal up to
register names and addresses). To read what the lent GPU runs, compile with
its Triton: `pip install --target /tmp/t36 triton==3.6.0`, then `--triton
/tmp/t36` (the launches are still recorded by the installed Triton's
interpreter).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: A load whose value the loop reads within this many instructions waits for it.
NEAR = 32


def record(shape: tuple[int, int], k: int, extras: bool, out: Path) -> None:
    """Run every query once, and `topk(k)`, under the interpreter (this
    process must have `TRITON_INTERPRET=1` before Triton is imported);
    write the launches."""
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from kernel_compile import recorded_launches  # type: ignore[import-not-found]
    from test_kernels import converted, random_problem  # type: ignore[import-not-found]
    from test_kernels_compile import every_query  # type: ignore[import-not-found]

    from semiring_semicrf.decoding import topk
    K, C = shape
    with recorded_launches() as launches:
        every_query(2, K + 3, K, C, extras=extras)
        topk(converted(random_problem(2, K + 3, K, C, extras=extras), "cpu", torch.float32), k, backend="triton")
    (out / "launches.json").write_text(json.dumps(launches))


def instructions(sass: str) -> list[tuple[int, str]]:
    """The instructions of a `cuobjdump -sass` listing, in order, as
    `(address, text)`."""
    found = (re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line) for line in sass.splitlines())
    return [(int(m.group(1), 16), m.group(2)) for m in found if m]


def main_loop(code: list[tuple[int, str]]) -> list[str]:
    """The body of the largest loop (a branch back to an earlier address)."""
    index = {address: i for i, (address, _) in enumerate(code)}
    best: list[str] = []
    for i, (_, text) in enumerate(code):
        target = re.search(r"\bBRA\S*\s+(?:\S+,\s*)?0x([0-9a-f]+)", text)
        start = index.get(int(target.group(1), 16)) if target else None
        if start is not None and start < i and i + 1 - start > len(best):
            best = [t for _, t in code[start:i + 1]]
    return best


def registers(text: str) -> tuple[list[int], list[int]]:
    """`(written, read)` general registers of one instruction."""
    body = re.sub(r"^@!?U?P\w+\s+", "", text)
    op, _, operands = body.partition(" ")
    parts = [p.strip() for p in operands.split(",")]
    regs = [[int(r) + k for r in re.findall(r"\bR(\d+)\b", p)
             for k in range(4 if ".128" in op else 2 if ".64" in op else 1)] for p in parts]
    if op.startswith(("ST", "BRA", "BAR", "RED", "ATOM")) or not regs:
        return [], [r for p in regs for r in p]
    return regs[0], [r for p in regs[1:] for r in p]


def load_distances(loop: list[str]) -> list[int]:
    """For each global load of `loop`, the instructions until its value is
    first read (following the loop around; a load whose register is written
    again first is left out)."""
    out = []
    for i, text in enumerate(loop):
        if not re.search(r"\bLDG\b|\bLDG\.", text):
            continue
        dest = set(registers(text)[0])
        for j in range(1, len(loop) + 1):
            written, read = registers(loop[(i + j) % len(loop)])
            if dest & set(read):
                out.append(j)
                break
            if dest & set(written):
                break
    return out


def barriers(loop: list[str]) -> int:
    """The `BAR` instructions (`BAR.SYNC` and kin, predicated or not) of `loop`."""
    return sum(bool(re.match(r"(@!?U?P\w+\s+)?BAR\.", text)) for text in loop)


def cuobjdump(cubin: bytes, *flags: str) -> str:
    import triton
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(tool), *flags, f.name], capture_output=True, text=True, check=True).stdout


def file_name(launch: dict) -> str:
    constexprs = "_".join(f"{k}{v}" for k, v in sorted(launch["constexprs"].items()))
    return f"{launch['name']}-{constexprs}-w{launch['options'].get('num_warps', 4)}.sass"


def compile_all(out: Path) -> list[dict]:
    """Compile every recorded launch, write its SASS, summarize it."""
    sys.path.insert(0, str(ROOT / "tests"))
    from kernel_compile import compile_launch
    rows = []
    for launch in json.loads((out / "launches.json").read_text()):
        cubin = compile_launch(launch).asm["cubin"]
        sass = cuobjdump(cubin, "-sass", "-res-usage")
        (out / file_name(launch)).write_text(sass)
        usage = re.search(r"REG:(\d+).*?STACK:(\d+)", sass)
        if usage is None:
            raise RuntimeError(f"cuobjdump gave no resource usage for {launch['name']}")
        loop = main_loop(instructions(sass))
        distances = load_distances(loop)
        rows.append({"file": file_name(launch), "kernel": launch["name"], "constexprs": launch["constexprs"],
                     "warps": launch["options"].get("num_warps", 4), "registers": int(usage.group(1)),
                     "stack": int(usage.group(2)), "loop": len(loop), "barriers": barriers(loop),
                     "loads": len(distances),
                     "near": sum(d <= NEAR for d in distances), "distances": distances})
    (out / "kernels.json").write_text(json.dumps(rows, indent=1))
    return rows


def normalized(path: Path) -> list[str]:
    """A listing's instructions with register numbers and constants masked."""
    return [re.sub(r"0x[0-9a-f]+", "X", re.sub(r"\bU?[RP]\d+\b", "R", text))
            for _, text in instructions(path.read_text())]


def compare(a: Path, b: Path) -> int:
    names = sorted({p.name for p in a.glob("*.sass")} | {p.name for p in b.glob("*.sass")})
    for name in names:
        if not (a / name).exists() or not (b / name).exists():
            print(f"{name}: only in {a if (a / name).exists() else b}")
            continue
        x, y = normalized(a / name), normalized(b / name)
        same = sum(p == q for p, q in zip(x, y))
        verdict = "same" if x == y else f"differs: {len(x)} / {len(y)} instructions, {same} in place"
        print(f"{name}: {verdict}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="64x8", help="KxC of the recorded launches")
    parser.add_argument("--extras", action="store_true", help="with start and end scores")
    parser.add_argument("--k", type=int, default=5, help="the k of a topk launch (beside every_query's)")
    parser.add_argument("--package", type=Path, default=ROOT,
                        help="the tree whose semiring_semicrf (with kernels/ inside it) is compiled")
    parser.add_argument("--out", type=Path, help="directory for the launches, the SASS and kernels.json")
    parser.add_argument("--compare", type=Path, nargs=2, metavar="DIR")
    parser.add_argument("--triton", help="a directory holding the Triton to compile with (pip install --target)")
    parser.add_argument("--step", choices=["record", "compile"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if args.out is None:
        parser.error("--out is required (or --compare DIR_A DIR_B)")
    K, C = (int(x) for x in args.shape.split("x"))
    if args.step == "record":
        record((K, C), args.k, args.extras, args.out)
        return 0
    if args.step == "compile":
        rows = compile_all(args.out)
        print(f"{'kernel':28s} {'constexprs':44s} {'warps':>5s} {'regs':>4s} {'stack':>5s} {'loop':>5s} "
              f"{'BAR':>4s} {'loads':>5s} {'used within ' + str(NEAR):>16s}")
        for r in rows:
            constexprs = " ".join(f"{k}={v}" for k, v in r["constexprs"].items())
            print(f"{r['kernel']:28s} {constexprs[:44]:44s} {r['warps']:5d} {r['registers']:4d} {r['stack']:5d} "
                  f"{r['loop']:5d} {r['barriers']:4d} {r['loads']:5d} {r['near']:16d}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    this = [sys.executable, __file__, "--shape", args.shape, "--k", str(args.k), "--out", str(args.out),
            *(["--extras"] * args.extras)]
    paths = [str(args.package), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    subprocess.run([*this, "--step", "record"], env={**env, "TRITON_INTERPRET": "1"}, check=True)
    compiler = {"PYTHONPATH": os.pathsep.join([args.triton, env["PYTHONPATH"]])} if args.triton else {}
    return subprocess.run([*this, "--step", "compile"], env={**env, "TRITON_INTERPRET": "0", **compiler}).returncode


if __name__ == "__main__":
    sys.exit(main())
