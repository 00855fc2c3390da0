"""The trained model in each portable form: what it takes to make, what it weighs, whether it gives
the eager model's answers, and how fast it runs a batch of 1 and of 64 on one CPU thread.

    python -m benchmarks.portability --data ../shared/data/cifar10-jpeg.tar.gz [--run models/latest]

Run it with OMP_NUM_THREADS=1 (as `make bench-portability` does): an AOTInductor library runs
its own OpenMP threads and does not follow torch.set_num_threads.

Forms: TorchScript (model.pt, frozen as the handler serves it), ONNX (model.onnx, run by ONNX
Runtime), and torch.export + AOTInductor, twice: the shared library that TorchServe 0.12's
BaseHandler loads (torch._export.aot_compile -> .so, loaded with torch._export.aot_load), and the
package format torch has moved to (torch._inductor.aoti_compile_and_package -> .pt2). Both
AOTInductor forms compile C++ with the machine's compiler (g++). Writes reports/portability.{md,csv}.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from pathlib import Path

import torch

from benchmarks import command_line, command_parser
from benchmarks.alternatives import OnnxModel, load_model
from harness.other_work import OtherWork, exits_when_busy
from harness.report import Report, write_csv
from model import SimpleCNN
from train.data import load_cifar10

CHECK_IMAGES = 1000
DYNAMIC_BATCH = {"pixels": {0: torch.export.Dim("batch", min=1, max=1024)}}


def per_call_ms(model, batch: torch.Tensor, rounds: int = 7, seconds: float = 0.5) -> float:
    """Milliseconds per call: the best of `rounds` rounds (on a shared machine the best round is
    the one least disturbed by other work)."""
    best = float("inf")
    with torch.inference_mode():
        for _ in range(5):
            model(batch)
        for _ in range(rounds):
            calls, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                model(batch)
                calls += 1
            best = min(best, (time.perf_counter() - started) / calls)
    return 1e3 * best


def aot_so(eager: SimpleCNN, sample: torch.Tensor, folder: Path):
    """TorchServe 0.12's form: a shared library, loaded by torch._export.aot_load."""
    options = {"aot_inductor.output_path": str(folder / "model.so")}
    path = torch._export.aot_compile(eager, (sample,), dynamic_shapes=DYNAMIC_BATCH, options=options)
    return Path(path), torch._export.aot_load(path, "cpu")


def aot_package(eager: SimpleCNN, sample: torch.Tensor, folder: Path):
    """torch's current form: torch.export, then an AOTInductor package (.pt2)."""
    program = torch.export.export(eager, (sample,), dynamic_shapes=DYNAMIC_BATCH)
    path = torch._inductor.aoti_compile_and_package(program, package_path=str(folder / "model.pt2"))
    return Path(path), torch._inductor.aoti_load_package(path)


@exits_when_busy
def main(argv: list[str] | None = None) -> None:
    parser = command_parser("benchmarks.portability", __doc__, run=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    run = args.run.resolve()
    eager = SimpleCNN().eval()
    eager.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=True)["state_dict"])
    images = load_cifar10(args.data).test_images[:CHECK_IMAGES].contiguous()
    with torch.inference_mode():
        expected = eager(images)

    rows = []

    def measure(name: str, runner, file: Path, build_seconds: float | None, loader: str):
        with torch.inference_mode():
            got = runner(images)
        got = got[0] if isinstance(got, (list, tuple)) else got
        row = {"form": name, "file": file.name, "megabytes": round(file.stat().st_size / 2**20, 2)}
        row["build_seconds"] = None if build_seconds is None else round(build_seconds, 1)
        row["top1_identical"] = int((got.argmax(1) == expected.argmax(1)).sum())
        row["max_logit_difference"] = float((got - expected).abs().max())
        row["batch1_ms"] = round(per_call_ms(runner, images[:1]), 3)
        row["batch64_ms"] = round(per_call_ms(runner, images[:64]), 3)
        rows.append({**row, "loaded_by": loader})
        print(rows[-1], flush=True)

    with OtherWork(noisy=args.noisy) as other_work:
        measure("TorchScript, frozen", load_model(str(run / "model.pt")), run / "model.pt", None, "BaseHandler (.pt)")
        measure(
            "ONNX, ONNX Runtime", OnnxModel(str(run / "model.onnx")), run / "model.onnx", None, "our handler (.onnx)"
        )
        with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, build, loader in (
                ("torch.export + AOTInductor, .so", aot_so, "BaseHandler (.so, pt2.export.aot_compile)"),
                ("torch.export + AOTInductor, .pt2 package", aot_package, "neither: TorchServe 0.12 predates .pt2"),
            ):
                started = time.monotonic()
                try:
                    file, runner = build(eager, images[:2], Path(scratch))
                except Exception as error:  # report what fails, whatever it is, and go on with the others
                    rows.append({"form": name, "loaded_by": f"FAILED: {type(error).__name__}: {str(error)[:200]}"})
                    print(rows[-1], flush=True)
                    continue
                measure(name, runner, file, time.monotonic() - started, loader)

    columns = list(rows[0])
    report = Report("Portable forms of the model", command_line("benchmarks.portability", argv), other_work).text(
        f"torch {torch.__version__} (best of 7 rounds), 1 thread "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); checked on the first {CHECK_IMAGES} test "
        "images against the eager model. build_seconds: with TorchInductor's compile cache as found (a first build "
        "on a fresh machine takes longer)."
    )
    report.table(rows, columns).write(args.out / "portability.md")
    write_csv(args.out / "portability.csv", rows, columns)


if __name__ == "__main__":
    main()
