"""What a training run leaves behind, in models/<run>/, every file written atomically:

    checkpoint.pt    the selected epoch's state_dict (+ epoch, test accuracy, config), for further training
    model.pt         TorchScript export of that epoch, checked against the eager model first
    model.onnx       ONNX export of the same weights (torch.export -> ONNX, dynamic batch size), checked
                     with ONNX Runtime against the eager model on 1,000 real test images first
    metadata.json    the exported epoch and how it was selected, test accuracy (overall and per class),
                     hyperparameters, data source and checksum, the validation split, git commit, date,
                     versions, history per epoch, the archive version
    curves.png       loss and accuracy per epoch
    confusion.png    confusion matrix on the test split

The test split is evaluated here, once: model.pt as written, on the CPU in float32 as TorchServe runs
it. Its figures are the metadata's test accuracy; the epoch was selected before, without it.

models/latest is then pointed at the run, last, so it never names a half-written run.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import warnings
from datetime import UTC, datetime
from pathlib import Path

import torch
import torchvision

from model import CLASSES, SimpleCNN
from train.atomic import atomic_path, atomic_symlink
from train.errors import ExportMismatch
from train.evaluate import evaluate
from train.plots import plot_confusion, plot_curves
from train.run import Run


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout
        return commit + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


ONNX_OPSET = 18
ONNX_CHECK_IMAGES = 1000
ONNX_LOGIT_TOLERANCE = 1e-4


def export_torchscript(model: SimpleCNN, sample: torch.Tensor, path: Path) -> None:
    """Scripts `model`, checks the script and its saved copy against eager outputs, then writes it."""
    model = model.eval().cpu()
    scripted = torch.jit.script(model)
    with atomic_path(path) as tmp:
        scripted.save(str(tmp))
        reloaded = torch.jit.load(str(tmp))
        with torch.inference_mode():
            expected = model(sample)
            for name, candidate in (("scripted", scripted), ("saved", reloaded)):
                got = candidate(sample)
                if not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
                    raise ExportMismatch(
                        f"{name} TorchScript differs from the eager model by {(got - expected).abs().max():.3g}"
                    )


def export_onnx(model: SimpleCNN, test_images: torch.Tensor, path: Path) -> dict:
    """Exports `model` to ONNX (input `pixels`: N x 3 x 32 x 32 uint8, output `logits`), then runs the
    written file with ONNX Runtime on up to 1,000 test images: the top-1 class must be the eager
    model's for every image and every logit within 1e-4. Returns what the check measured."""
    import onnxruntime

    model = model.eval().cpu()
    images = test_images[:ONNX_CHECK_IMAGES].contiguous()
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():  # the exporter's own progress lines and deprecation notes
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (images[:2],),
            input_names=["pixels"],
            output_names=["logits"],
            dynamic_shapes={"pixels": {0: batch}},
            opset_version=ONNX_OPSET,
            dynamo=True,
            verbose=False,
        )
    with atomic_path(path) as tmp:
        program.save(str(tmp))
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"pixels": images.numpy()})[0])
        with torch.inference_mode():
            expected = model(images)
        check = compare_with_eager("ONNX Runtime", got, expected)
    return {"opset": ONNX_OPSET, "onnxruntime_version": onnxruntime.__version__, **check}


def compare_with_eager(name: str, got: torch.Tensor, expected: torch.Tensor) -> dict:
    """Raises ExportMismatch unless every image's top-1 class is the eager model's and every logit
    within ONNX_LOGIT_TOLERANCE of it; returns what was measured."""
    difference = (got - expected).abs().max().item()
    same_top1 = int((got.argmax(1) == expected.argmax(1)).sum())
    if same_top1 != len(expected) or difference > ONNX_LOGIT_TOLERANCE:
        raise ExportMismatch(
            f"{name} differs from the eager model: top-1 equal on {same_top1}/{len(expected)} images, "
            f"largest logit difference {difference:.3g} (allowed {ONNX_LOGIT_TOLERANCE})"
        )
    return {"checked_images": len(expected), "top1_identical": same_top1, "max_logit_difference": difference}


def export_aot_inductor(model: SimpleCNN, test_images: torch.Tensor, path: Path) -> dict:
    """torch.export + AOTInductor, in the form TorchServe 0.12's BaseHandler loads: a shared library
    from torch._export.aot_compile (deprecated in torch 2.14 for .pt2 packages, which TorchServe
    0.12 cannot load). Compiles C++ with the machine's compiler; the library runs only with this
    torch version on this CPU architecture. Checked like the ONNX export; returns the check."""
    model = model.eval().cpu()
    images = test_images[:ONNX_CHECK_IMAGES].contiguous()
    batch = torch.export.Dim("batch", min=1, max=4096)
    with (
        atomic_path(path) as tmp,
        tempfile.TemporaryDirectory(dir=path.parent) as scratch,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        built = torch._export.aot_compile(  # wants a .so name of its own to write to
            model,
            (images[:2],),
            dynamic_shapes={"pixels": {0: batch}},
            options={"aot_inductor.output_path": str(Path(scratch) / "model.so")},
        )
        os.replace(built, tmp)
        runner = torch._export.aot_load(str(tmp), "cpu")
        with torch.inference_mode():
            got, expected = runner(images), model(images)
        check = compare_with_eager("AOTInductor", got[0] if isinstance(got, (list, tuple)) else got, expected)
    return {"torch_version": torch.__version__, **check}


def write_run(
    cfg,
    selected: dict,
    history: list[dict],
    data: dict,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    run_info: dict,
) -> Run:
    now = datetime.now(UTC)
    run_name = cfg.run_name or f"{cfg.recipe}-{now:%Y%m%d-%H%M%S}"
    out = Path(cfg.out_dir) / run_name
    out.mkdir(parents=True, exist_ok=True)

    model = SimpleCNN()
    model.load_state_dict(selected["state_dict"])
    export_torchscript(model, test_images[:256], out / "model.pt")
    exported = torch.jit.load(str(out / "model.pt"), map_location="cpu")
    test = evaluate(exported, test_images, test_labels, cfg.eval_batch_size, torch.device("cpu"))
    with atomic_path(out / "checkpoint.pt") as tmp:
        torch.save(
            {
                "state_dict": selected["state_dict"],
                "epoch": selected["epoch"],
                "test_accuracy": test["accuracy"],
                "config": run_info["config"],
            },
            tmp,
        )
    onnx_check = export_onnx(model, test_images, out / "model.onnx")

    validation_accuracy = selected["validation_accuracy"]  # None without a validation split
    record = Run(
        run=run_name,
        version=f"{now:%Y%m%d.%H%M%S}",
        created=now.isoformat(timespec="seconds"),
        recipe=cfg.recipe,
        epoch=selected["epoch"],
        selection={
            "selected_on": selected["selected_on"],
            "validation_accuracy": None if validation_accuracy is None else round(validation_accuracy, 4),
            "test_split": "evaluated once, on the exported model after training; no part in selecting it",
        },
        test_accuracy=round(test["accuracy"], 4),
        per_class_accuracy={name: round(acc, 4) for name, acc in zip(CLASSES, test["per_class_accuracy"])},
        confusion_matrix=test["confusion"],
        low_confidence_share=round(test["low_confidence_share"], 4),
        classes=list(CLASSES),
        parameters=sum(p.numel() for p in model.parameters()),
        hyperparameters=run_info.pop("config"),
        data=data,
        git_commit=git_commit(),
        torch_version=torch.__version__,
        torchvision_version=torchvision.__version__,
        onnx_check=onnx_check,
        **run_info,
        history=history,
        files={
            "checkpoint": "checkpoint.pt",
            "torchscript": "model.pt",
            "onnx": "model.onnx",
            "curves": "curves.png",
            "confusion": "confusion.png",
        },
    )
    plot_curves(history, out / "curves.png", title=run_name)
    plot_confusion(test["confusion"], CLASSES, out / "confusion.png", title=f"{run_name}, epoch {selected['epoch']}")
    record.save(out)
    atomic_symlink(run_name, Path(cfg.out_dir) / "latest")
    print(
        f"wrote {out}: epoch {selected['epoch']} (selected on {selected['selected_on']}), "
        f"test accuracy {test['accuracy']:.2%}"
    )
    return record
