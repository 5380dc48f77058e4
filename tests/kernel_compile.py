"""Compile the Triton kernels for a CUDA GPU without one.

Triton's interpreter (which runs the kernels on CPU tensors in CI) executes
them line by line with numpy and skips the compiler's checks: a kernel can
pass every interpreted test and still fail to compile (a name whose type
changes through a loop, say). This module records the launches the public
API makes under the interpreter (:func:`recorded_launches`) and, run as a
script without the interpreter, compiles each one for an sm_90 target
through Triton's own compiler (frontend to cubin, with the `ptxas` that
Triton's wheel carries):

    python tests/kernel_compile.py launches.json   # prints one line per launch, exits 1 on a failure
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import sys

#: Triton's name of each tensor dtype a kernel receives.
POINTER_TYPES = {"float32": "fp32", "float64": "fp64", "float16": "fp16", "bfloat16": "bf16", "int64": "i64",
                 "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "i1"}
#: The GPU the kernels are compiled for: an H100/H200 (compute capability 9.0, 32-thread warps).
TARGET = ("cuda", 90, 32)


def launch_record(fn, args: tuple, kwargs: dict) -> dict:
    """`{module, name, signature, constexprs, aligned, options}` of one
    launch of the jit function `fn` (the Python function) with
    `args`/`kwargs`; `aligned` names the arguments Triton's launcher would
    specialize as divisible by 16 (pointers to 16-byte aligned data,
    integers that are multiples of 16)."""
    import torch
    parameters = inspect.signature(fn).parameters
    names = list(parameters)
    values = {**dict(zip(names, args)), **{k: v for k, v in kwargs.items() if k in parameters}}
    signature, constexprs, aligned = {}, {}, []
    for name in names:
        value = values[name]
        if "constexpr" in str(parameters[name].annotation):
            constexprs[name] = getattr(value, "value", value)
        elif isinstance(value, torch.Tensor):
            signature[name] = "*" + POINTER_TYPES[str(value.dtype).removeprefix("torch.")]
            if value.data_ptr() % 16 == 0:
                aligned.append(name)
        elif isinstance(value, bool):
            signature[name] = "i1"
        elif isinstance(value, int):
            signature[name] = "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
            if value % 16 == 0:
                aligned.append(name)
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: cannot type argument {name} = {value!r}")
    options = {k: v for k, v in kwargs.items() if k in ("num_warps", "num_stages")}
    return {"module": fn.__module__, "name": fn.__name__, "signature": signature, "constexprs": constexprs,
            "aligned": aligned, "options": options}


@contextlib.contextmanager
def recorded_launches():
    """Within the block, every kernel launch (under ``TRITON_INTERPRET=1``)
    is recorded, then run as usual; yields the list of distinct records."""
    from triton.runtime.interpreter import InterpretedFunction
    records: list = []
    run = InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        record = launch_record(self.fn, args, kwargs)
        if record not in records:
            records.append(record)
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = recording_run
    try:
        yield records
    finally:
        InterpretedFunction.run = run


def compile_launch(record: dict):
    """One record's kernel compiled for :data:`TARGET` (Triton's compiled
    kernel: `.asm["cubin"]` holds the machine code); raises what Triton
    raises."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    fn = getattr(importlib.import_module(record["module"]), record["name"])
    signature = {**record["signature"], **dict.fromkeys(record["constexprs"], "constexpr")}
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in record.get("aligned", ())}
    source = ASTSource(fn, {name: signature[name] for name in fn.arg_names}, record["constexprs"], attrs)
    return triton.compile(source, target=GPUTarget(*TARGET), options=record["options"])


def main(path: str) -> int:
    failures = 0
    with open(path) as f:
        records = json.load(f)
    for record in records:
        label = f"{record['name']} {record['constexprs']} {record['options']}"
        try:
            compile_launch(record)
            print("compiled", label)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, then the exit status says it
            failures += 1
            print("FAILED", label, "\n", exc)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
